"""Fault suite, compliance: the opt-out corpus across both of a business's numbers (9), and random
call times in every US time zone against quiet hours (10). Time is moved with time-machine."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
import yaml

from tests.conftest import BUSINESS_NUMBER
from tests.faults.harness import SECOND_NUMBER, World, fault_business

pytestmark = pytest.mark.faults

CHICAGO = ZoneInfo("America/Chicago")
CORPUS = yaml.safe_load((Path(__file__).parents[1] / "corpus" / "opt_out.yaml").read_text(encoding="utf-8"))
WINDOW = (time(8, 0), time(21, 0))  # the default sending window, in the caller's zone


def _to_utc(day: tuple[int, int, int], hour: int, minute: int = 0) -> datetime:
    return datetime(*day, hour, minute, tzinfo=CHICAGO).astimezone(UTC)


# -- 9. after an opt-out, nothing reaches the number from any of the business's numbers ------------


@pytest.mark.slow
def test_9_after_each_opt_out_in_the_corpus_nothing_reaches_the_number(
    make_world: Callable[..., World],
) -> None:
    business = fault_business(
        policy={
            "cooldown_hours": 0,
            "sending_window": {"start": "08:00", "end": "21:00"},
            "follow_up_after_hours": 6,
        }
    )
    world = make_world(businesses=[business])
    phrases: list[str] = list(CORPUS["opt_out"])
    assert len(phrases) >= 80
    # Three ways to opt out, round robin over the corpus:
    #   0. a reply to the first text, to the number that sent it;
    #   1. the same, while a text from the other number is queued (a second missed call);
    #   2. to the other number, late at night, with the follow-up already scheduled for 08:00.
    callers = [f"+1312555{8000 + i:04d}" for i in range(len(phrases))]
    controls = [f"+1312555{8900 + i:04d}" for i in range(3)]  # the same story, no opt-out
    day = (2026, 6, 10)  # a Wednesday
    worker = world.worker()
    opted_at: dict[str, datetime] = {}
    with time_machine.travel(_to_utc(day, 15, 0), tick=True) as clock:
        for caller in callers + controls:
            world.missed_call(caller, to=BUSINESS_NUMBER)
        world.drain(worker)
        clock.move_to(_to_utc(day, 15, 30))
        for i, (caller, phrase) in enumerate(zip(callers, phrases, strict=True)):
            if i % 3 == 1:
                world.missed_call(caller, to=SECOND_NUMBER)  # its text is queued, not sent yet
            if i % 3 in (0, 1):
                opted_at[caller] = datetime.now(UTC)
                world.text_in(caller, phrase, to=BUSINESS_NUMBER)
        world.missed_call(controls[1], to=SECOND_NUMBER)
        world.drain(worker)
        clock.move_to(_to_utc(day, 21, 30))  # the 21:00 follow-ups come due: held for 08:00
        world.drain(worker)
        clock.move_to(_to_utc(day, 22, 0))
        for i, (caller, phrase) in enumerate(zip(callers, phrases, strict=True)):
            if i % 3 == 2:
                opted_at[caller] = datetime.now(UTC)
                world.text_in(caller, phrase, to=SECOND_NUMBER)
        world.drain(worker)
        # Afterwards, everything that would text them: calls to both numbers, replies, HELP.
        clock.move_to(_to_utc(day, 22, 30))
        for caller in callers:
            world.missed_call(caller, to=BUSINESS_NUMBER)
            world.missed_call(caller, to=SECOND_NUMBER)
            world.text_in(caller, "hello? can someone call me back", to=BUSINESS_NUMBER)
            world.text_in(caller, "HELP", to=SECOND_NUMBER)
        world.drain(worker)
        next_day = (2026, 6, 11)
        for hour in (8, 12, 18):  # the held follow-ups, and anything else that might come due
            clock.move_to(_to_utc(next_day, hour, 1))
            world.drain(worker)

    sent = world.sent()
    for caller, phrase in zip(callers, phrases, strict=True):
        got = [m for m in sent if m["to"] == caller]
        after = [m for m in got if datetime.fromisoformat(m["date_created"]) >= opted_at[caller]]
        # Before the opt-out: the first text. After it: the one confirmation, from the number the
        # caller wrote to, and nothing else, ever, from either number.
        assert len(got) == 2 and len(after) == 1, (phrase, [(m["from"], m["body"][:40]) for m in got])
        [confirmation] = after
        assert "unsubscribed" in confirmation["body"], (phrase, confirmation["body"])
        assert got[0]["from"] == BUSINESS_NUMBER and "unsubscribed" not in got[0]["body"]
    # The controls prove each story would have texted: the second number's text, the follow-up.
    assert any(m["from"] == SECOND_NUMBER for m in sent if m["to"] == controls[1])
    assert all(
        any("just checking in" in m["body"] for m in sent if m["to"] == c) for c in (controls[0], controls[2])
    )
    assert not [j for j in world.jobs() if j.status in ("pending", "running") and j.kind == "sms.send"]


# -- 10. random call times in every US time zone: no automated text outside quiet hours ------------

# The caller's zone(s) as they are: every US zone, DST and not, and numbers that span two zones.
US_NUMBERS = {
    "+1212555": ("America/New_York",),
    "+1312555": ("America/Chicago",),
    "+1303555": ("America/Denver",),
    "+1602555": ("America/Phoenix",),  # no DST
    "+1415555": ("America/Los_Angeles",),
    "+1907555": ("America/Anchorage", "America/Adak"),  # Alaska, and Hawaii-Aleutian with DST
    "+1808555": ("Pacific/Honolulu",),
    "+1787555": ("America/Puerto_Rico",),  # Atlantic
    "+1340555": ("America/St_Thomas",),
    "+1671555": ("Pacific/Guam",),  # Chamorro
    "+1670555": ("Pacific/Saipan",),
    "+1684633": ("Pacific/Pago_Pago",),  # Samoa
    "+1208555": ("America/Boise", "America/Los_Angeles"),  # Idaho: Mountain and Pacific
    "+1605555": ("America/Chicago", "America/Denver"),  # South Dakota: Central and Mountain
}
RANDOM_CALLS = 42
# Around the spring-forward and fall-back nights (UTC), where a window check is easiest to get wrong.
DST_EDGES = [
    datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
    datetime(2026, 3, 8, 12, 59, tzinfo=UTC),
    datetime(2026, 11, 1, 5, 45, tzinfo=UTC),
    datetime(2026, 11, 1, 13, 30, tzinfo=UTC),
    datetime(2026, 3, 9, 0, 55, tzinfo=UTC),
    datetime(2026, 11, 2, 1, 59, tzinfo=UTC),
]


def _in_window(moment: datetime, zones: tuple[str, ...]) -> bool:
    return all(WINDOW[0] <= moment.astimezone(ZoneInfo(z)).time() < WINDOW[1] for z in zones)


@pytest.mark.slow
def test_10_random_call_times_in_every_us_zone_never_text_outside_quiet_hours(
    make_world: Callable[..., World],
) -> None:
    business = fault_business(
        policy={"sending_window": {"start": "08:00", "end": "21:00"}, "follow_up_after_hours": 5}
    )
    world = make_world(businesses=[business])
    worker = world.worker()
    rng = random.Random(10)
    year = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [year + timedelta(seconds=rng.randrange(365 * 86400)) for _ in range(RANDOM_CALLS)] + DST_EDGES
    prefixes = sorted(US_NUMBERS)
    checked = []
    for i, moment in enumerate(moments):
        prefix = prefixes[i % len(prefixes)]
        caller = f"{prefix}{1000 + i:04d}"[:12]
        zones = US_NUMBERS[prefix]
        with time_machine.travel(moment, tick=True) as clock:
            world.missed_call(caller)
            # The worker looks at random moments until the text and its follow-up have gone out.
            for _ in range(60):
                world.drain(worker)
                kinds = {m.kind for m in world.messages(caller) if m.sent_at is not None}
                if {"first_text", "follow_up"} <= kinds:
                    break
                clock.shift(timedelta(minutes=rng.randrange(20, 200)))
            else:
                raise AssertionError(f"{caller}: the texts never went out: {world.messages(caller)}")
        for message in world.sent(caller):
            at = datetime.fromisoformat(message["date_created"])  # the emulator's clock
            assert _in_window(at, zones), (caller, zones, at, [at.astimezone(ZoneInfo(z)) for z in zones])
            checked.append(message)
    assert len(checked) == 2 * len(moments)  # every call got its text and its follow-up, in hours
    assert {m["to"][:8] for m in checked} == set(prefixes)  # every zone was tried
