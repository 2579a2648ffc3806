"""Quiet hours and cooldowns in the caller's time zone (time-machine), DST and SMS segment counting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from core import templates
from core.hours import Window, next_send_time, parse_range
from tests.conftest import business
from tests.stack import Stack

DAY = (2026, 6, 10)  # a Wednesday far from any DST change
NEW_YORK = ZoneInfo("America/New_York")


def at(
    zone: str | ZoneInfo, hour: int, minute: int = 0, second: int = 0, day: tuple[int, int, int] = DAY
) -> datetime:
    tz = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
    return datetime(*day, hour, minute, second, tzinfo=tz)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def quiet_stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """The test business with the default sending window (08:00-21:00 in the caller's zone)."""
    biz = business(policy={"min_ring_seconds": 4, "cooldown_hours": 12})
    s = Stack(tmp_path, db_url, businesses=[biz])
    try:
        yield s
    finally:
        s.close()


def outbound(stack: Stack, phone: str) -> list[dict[str, Any]]:
    lead = stack.lead(phone)
    assert lead is not None
    return [e for e in lead["timeline"] if e["type"] == "message" and e["to"] == phone]


def decisions(stack: Stack, phone: str) -> list[tuple[str, str]]:
    lead = stack.lead(phone)
    assert lead is not None
    return [(e["outcome"], e["reason"]) for e in lead["timeline"] if e["type"] == "decision"]


@pytest.mark.parametrize(
    ("caller", "zone"),
    [
        ("+12125550142", "America/New_York"),
        ("+13125550142", "America/Chicago"),
        ("+14155550142", "America/Los_Angeles"),
        ("+18085550142", "Pacific/Honolulu"),
        ("+15555550142", "America/Chicago"),  # no known zone: the business's own (Chicago)
    ],
)
def test_a_night_call_waits_for_the_window_in_the_callers_zone(
    quiet_stack: Stack, caller: str, zone: str
) -> None:
    stack = quiet_stack
    with time_machine.travel(at(zone, 2, 0), tick=True) as traveller:
        stack.call(caller)
        [message] = outbound(stack, caller)
        assert message["status"] == "scheduled"
        assert message["send_after"] == iso(at(zone, 8, 0))
        assert stack.lead(caller)["status"] == "scheduled"  # type: ignore[index]
        assert decisions(stack, caller) == [("text", "missed_no_answer")]
        stack.drain()
        assert stack.sent(caller) == []
        traveller.move_to(at(zone, 7, 59, 50))
        stack.drain()
        assert stack.sent(caller) == []
        traveller.move_to(at(zone, 8, 0, 30))
        stack.drain()
        sent = stack.sent(caller)
        assert len(sent) == 1
        [message] = outbound(stack, caller)
        assert message["sid"] == sent[0]["sid"]
        assert stack.lead(caller)["status"] == "texted"  # type: ignore[index]


def test_window_edges_in_the_callers_zone(quiet_stack: Stack) -> None:
    stack = quiet_stack
    early, late = "+12125550142", "+12125550143"  # both New York; the business is in Chicago
    with time_machine.travel(at(NEW_YORK, 20, 59), tick=True):
        stack.call(early)
        stack.drain()
        assert len(stack.sent(early)) == 1
        assert outbound(stack, early)[0]["status"] != "scheduled"
    with time_machine.travel(at(NEW_YORK, 21, 0, 1), tick=True):  # 20:00 in Chicago: too late in NY
        stack.call(late)
        stack.drain()
        assert len(stack.sent(early)) == 1 and stack.sent(late) == []
        [message] = outbound(stack, late)
        next_day = (DAY[0], DAY[1], DAY[2] + 1)
        expected = iso(at(NEW_YORK, 8, 0, day=next_day))
        assert (message["status"], message["send_after"]) == ("scheduled", expected)


def test_cooldown_holds_across_zones(quiet_stack: Stack) -> None:
    stack = quiet_stack
    caller = "+18085550142"  # Honolulu, four or five hours behind the business in Chicago
    hawaii = "Pacific/Honolulu"
    with time_machine.travel(at(hawaii, 9, 0), tick=True) as traveller:
        stack.call(caller)
        stack.drain()
        assert len(stack.sent(caller)) == 1
        traveller.move_to(at(hawaii, 15, 0))  # 6 h later: inside the 12 h cooldown
        stack.call(caller)
        stack.drain()
        assert decisions(stack, caller) == [("text", "missed_no_answer"), ("skip", "cooldown")]
        assert len(outbound(stack, caller)) == 1
        lead = stack.lead(caller)
        assert lead is not None
        calls = [e for e in lead["timeline"] if e["type"] == "call"]
        assert [c["repeat"] for c in calls] == [False, True]
        traveller.move_to(at(hawaii, 22, 0))  # 13 h later: texted again, once the window opens
        stack.call(caller)
        stack.drain()
        assert decisions(stack, caller)[-1] == ("text", "missed_no_answer")
        assert len(stack.sent(caller)) == 1
        next_day = (DAY[0], DAY[1], DAY[2] + 1)
        assert outbound(stack, caller)[-1]["send_after"] == iso(at(hawaii, 8, 0, day=next_day))
        traveller.move_to(at(hawaii, 8, 0, 30, day=next_day))
        stack.drain()
        assert len(stack.sent(caller)) == 2


# -- next_send_time, pure ---------------------------------------------------------------------------

DEFAULT = parse_range("08:00-21:00")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 2026-03-08: New York springs forward at 02:00 EST -> 03:00 EDT.
        (utc(2026, 3, 8, 3, 0), utc(2026, 3, 8, 12, 0)),  # 22:00 EST the evening before -> 08:00 EDT
        (utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 12, 0)),  # 01:30 EST -> 08:00 EDT (only 5.5 h)
        (utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 12, 0)),  # 03:30 EDT
        (utc(2026, 3, 8, 12, 0), utc(2026, 3, 8, 12, 0)),  # 08:00 EDT: open
        (utc(2026, 3, 8, 11, 59), utc(2026, 3, 8, 12, 0)),  # 07:59 EDT
        (utc(2026, 3, 9, 0, 59), utc(2026, 3, 9, 0, 59)),  # 20:59 EDT: still open
        (utc(2026, 3, 9, 1, 0), utc(2026, 3, 9, 12, 0)),  # 21:00 EDT: closed until 08:00 EDT
        (utc(2026, 3, 7, 13, 0), utc(2026, 3, 7, 13, 0)),  # 08:00 EST the day before
        # 2026-11-01: New York falls back at 02:00 EDT -> 01:00 EST.
        (utc(2026, 11, 1, 2, 0), utc(2026, 11, 1, 13, 0)),  # 22:00 EDT Oct 31 -> 08:00 EST
        (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 13, 0)),  # 01:30 EDT (first time round)
        (utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 13, 0)),  # 01:30 EST (second time round)
        (utc(2026, 11, 1, 12, 59), utc(2026, 11, 1, 13, 0)),  # 07:59 EST
        (utc(2026, 11, 2, 1, 59), utc(2026, 11, 2, 1, 59)),  # 20:59 EST: open
        (utc(2026, 11, 2, 2, 0), utc(2026, 11, 2, 13, 0)),  # 21:00 EST -> 08:00 EST next day
        (utc(2026, 10, 31, 12, 0), utc(2026, 10, 31, 12, 0)),  # 08:00 EDT the day before
    ],
)
def test_next_send_time_across_dst_in_new_york(now: datetime, expected: datetime) -> None:
    got = next_send_time(now, [NEW_YORK], DEFAULT)
    assert got == expected, f"{now} -> {got.astimezone(NEW_YORK)}, expected {expected.astimezone(NEW_YORK)}"
    assert DEFAULT.contains(got.astimezone(NEW_YORK).time())


def test_next_send_time_is_in_the_window_every_minute_around_dst() -> None:
    for start in (utc(2026, 3, 7, 20, 0), utc(2026, 10, 31, 20, 0)):
        for minutes in range(0, 30 * 60, 7):
            now = start + timedelta(minutes=minutes)
            got = next_send_time(now, [NEW_YORK], DEFAULT)
            local = got.astimezone(NEW_YORK)
            assert got >= now and DEFAULT.contains(local.time()), (now, local)
            if got > now:  # waiting means it was closed now and opens exactly at 08:00 local
                assert local.time() == time(8, 0)
                assert not DEFAULT.contains(now.astimezone(NEW_YORK).time())


@pytest.mark.parametrize(
    "window", ["08:00-21:00", "01:30-21:00", "02:30-21:00", "02:15-02:45", "22:00-01:30"]
)
def test_next_send_time_never_lands_outside_the_window_around_dst(window: str) -> None:
    """Also for windows that open inside the skipped (spring) or repeated (autumn) hour."""
    w = parse_range(window)
    for start in (utc(2026, 3, 7, 20, 0), utc(2026, 10, 31, 20, 0)):
        for minutes in range(0, 30 * 60, 5):
            now = start + timedelta(minutes=minutes)
            got = next_send_time(now, [NEW_YORK], w)
            assert got >= now, (window, now, got)
            assert w.contains(got.astimezone(NEW_YORK).time()), (window, now, got.astimezone(NEW_YORK))
            assert got - now < timedelta(hours=49)  # 02:15-02:45 does not exist on the spring day


def test_next_send_time_opens_at_the_first_moment_of_the_window_on_dst_days() -> None:
    # A window opening at 01:30 on the autumn day: 01:15 EST (the second 01:15) waits for 01:30 EST.
    assert next_send_time(utc(2026, 11, 1, 6, 15), [NEW_YORK], parse_range("01:30-21:00")) == utc(
        2026, 11, 1, 6, 30
    )
    # The first 01:15 (EDT) opens at the first 01:30 (EDT).
    assert next_send_time(utc(2026, 11, 1, 5, 15), [NEW_YORK], parse_range("01:30-21:00")) == utc(
        2026, 11, 1, 5, 30
    )


def test_next_send_time_with_several_zones_takes_the_strictest() -> None:
    zones = [NEW_YORK, ZoneInfo("America/Los_Angeles")]
    # 09:00 in New York is 06:00 in Los Angeles: wait for 08:00 there.
    assert next_send_time(utc(2026, 6, 10, 13, 0), zones, DEFAULT) == utc(2026, 6, 10, 15, 0)
    # 20:30 in New York is 17:30 in Los Angeles: open in both.
    assert next_send_time(utc(2026, 6, 11, 0, 30), zones, DEFAULT) == utc(2026, 6, 11, 0, 30)
    # 21:30 in New York: the next moment open in both is 08:00 in Los Angeles the next day.
    assert next_send_time(utc(2026, 6, 11, 1, 30), zones, DEFAULT) == utc(2026, 6, 11, 15, 0)


def test_window_contains() -> None:
    w = Window(time(8, 0), time(21, 0))
    assert w.contains(time(8, 0)) and w.contains(time(20, 59, 59))
    assert not w.contains(time(21, 0)) and not w.contains(time(7, 59, 59))


# -- segments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "count", "units"),
    [
        ("", "GSM-7", 1, 0),
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),
        ("a" * 307, "GSM-7", 3, 307),
        ("€" * 80, "GSM-7", 1, 160),  # the extension table costs two septets
        ("€" * 81, "GSM-7", 2, 162),
        ("Reply STOP to opt out. Café £5 @home", "GSM-7", 1, 36),
        ("д" * 70, "UCS-2", 1, 70),
        ("д" * 71, "UCS-2", 2, 71),
        ("д" * 134, "UCS-2", 2, 134),
        ("д" * 135, "UCS-2", 3, 135),
        ("a" * 69 + "ç", "UCS-2", 1, 70),  # one non-GSM character switches the whole text
        ("a" * 70 + "ç", "UCS-2", 2, 71),
        ("😀", "UCS-2", 1, 2),  # an emoji is two UTF-16 code units
        ("😀" * 35, "UCS-2", 1, 70),
        ("😀" * 36, "UCS-2", 2, 72),
        ("a" * 68 + "😀", "UCS-2", 1, 70),
        ("a" * 69 + "😀", "UCS-2", 2, 71),
    ],
)
def test_segments(text: str, encoding: str, count: int, units: int) -> None:
    seg = templates.segments(text)
    assert (seg.encoding, seg.count, seg.units) == (encoding, count, units)


def test_default_first_texts_fit_in_two_segments() -> None:
    for name in templates.FIRST_MESSAGES:
        text = templates.render(
            templates.DEFAULTS[name],
            business="Bright Spark Electric",
            first_name="Christopher",
            booking_link=None,
        )
        assert "Bright Spark Electric" in text and "STOP" in text
        assert templates.segments(text).count <= 2
