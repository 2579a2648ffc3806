"""core.slots: opening hours minus busy time, DST-safe, on a grid, spread over days."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.crm import Slot
from core.hours import Window, parse_range
from core.slots import bookable_slots, candidate_slots

CHICAGO = ZoneInfo("America/Chicago")
WEEKDAYS_9_TO_5 = {d: [parse_range("09:00-17:00")] for d in range(5)}


def at(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = CHICAGO) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz)


def local(slots: list[Slot], tz: ZoneInfo = CHICAGO) -> list[str]:
    return [s.start.astimezone(tz).strftime("%a %d %H:%M") for s in slots]


def test_earliest_slots_spread_over_days() -> None:
    now = at(2030, 3, 4, 8)  # Monday 08:00; lead 2 h
    slots = bookable_slots(now, [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO)
    assert local(slots) == ["Mon 04 10:00", "Tue 05 09:00", "Wed 06 09:00"]
    assert all(s.end - s.start == timedelta(hours=1) and s.start.tzinfo == UTC for s in slots)
    plain = bookable_slots(now, [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, spread_days=False)
    assert local(plain) == ["Mon 04 10:00", "Mon 04 10:30", "Mon 04 11:00"]


def test_few_days_fill_with_earliest_remaining() -> None:
    now = at(2030, 3, 8, 13)  # Friday 13:00: 15:00 and 15:30... then the weekend, horizon 1 day
    slots = bookable_slots(now, [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, horizon_days=1)
    assert local(slots) == ["Fri 08 15:00", "Fri 08 15:30", "Fri 08 16:00"]


def test_busy_is_widened_by_the_buffer_on_both_sides() -> None:
    now = at(2030, 3, 4, 7)
    busy = [Slot(at(2030, 3, 4, 10), at(2030, 3, 4, 11))]  # widened: 09:45-11:15
    slots = candidate_slots(now, busy, WEEKDAYS_9_TO_5, frozenset(), CHICAGO, lead_minutes=0)
    monday = [s for s in local(slots) if s.startswith("Mon")]
    assert monday[:3] == ["Mon 04 11:30", "Mon 04 12:00", "Mon 04 12:30"]
    # Touching the widened interval is fine: busy 11:15-12:00 widens to 11:00-12:15.
    touching = [Slot(at(2030, 3, 4, 11, 15), at(2030, 3, 4, 12))]
    slots = candidate_slots(now, touching, WEEKDAYS_9_TO_5, frozenset(), CHICAGO, lead_minutes=0)
    assert local(slots)[:4] == ["Mon 04 09:00", "Mon 04 09:30", "Mon 04 10:00", "Mon 04 12:30"]


def test_whole_slot_inside_one_window_and_grid_anchored_at_opening() -> None:
    hours = {0: [parse_range("08:15-10:00"), parse_range("13:00-14:30")]}
    now = at(2030, 3, 4, 0)
    slots = candidate_slots(now, [], hours, frozenset(), CHICAGO, lead_minutes=0, horizon_days=1)
    assert local(slots) == ["Mon 04 08:15", "Mon 04 08:45", "Mon 04 13:00", "Mon 04 13:30"]


def test_window_to_midnight() -> None:
    hours = {0: [parse_range("22:00-24:00")]}
    slots = candidate_slots(
        at(2030, 3, 4, 0), [], hours, frozenset(), CHICAGO, lead_minutes=0, horizon_days=1
    )
    assert local(slots) == ["Mon 04 22:00", "Mon 04 22:30", "Mon 04 23:00"]


def test_holidays_lead_and_horizon() -> None:
    now = at(2030, 3, 4, 15, 10)  # Monday 15:10: lead ends 17:10, after closing
    holidays = frozenset({date(2030, 3, 5)})
    slots = bookable_slots(now, [], WEEKDAYS_9_TO_5, holidays, CHICAGO, horizon_days=3)
    # Two days have slots (Tuesday is a holiday); the third place goes to the earliest remaining one.
    assert local(slots) == ["Wed 06 09:00", "Wed 06 09:30", "Thu 07 09:00"]
    every = candidate_slots(now, [], WEEKDAYS_9_TO_5, holidays, CHICAGO, horizon_days=3)
    assert max(s.start for s in every) < now + timedelta(days=3)
    assert local(every)[-1] == "Thu 07 15:00"


def test_spring_forward_week_keeps_local_hours() -> None:
    # DST starts in Chicago on Sunday 10 March 2030: 09:00 is 15:00Z on Friday, 14:00Z on Monday.
    now = at(2030, 3, 8, 6)
    slots = bookable_slots(now, [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, lead_minutes=0)
    assert [s.start for s in slots] == [
        datetime(2030, 3, 8, 15, tzinfo=UTC),
        datetime(2030, 3, 11, 14, tzinfo=UTC),
        datetime(2030, 3, 12, 14, tzinfo=UTC),
    ]
    last = candidate_slots(now, [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, lead_minutes=0)
    assert {s.end.astimezone(CHICAGO).time() for s in last} <= {
        time(h, m) for h in range(10, 18) for m in (0, 30)
    }


def test_spring_forward_night_skips_missing_times_and_uses_real_lengths() -> None:
    hours = {6: [parse_range("01:00-04:00")]}  # Sunday; 02:00-02:59 does not exist on 10 March 2030
    slots = candidate_slots(
        at(2030, 3, 9, 12), [], hours, frozenset(), CHICAGO, lead_minutes=0, horizon_days=2
    )
    assert [s.start.strftime("%H:%M") for s in slots] == ["07:00", "07:30", "08:00"]  # UTC
    assert local(slots) == ["Sun 10 01:00", "Sun 10 01:30", "Sun 10 03:00"]
    assert all(s.end <= datetime(2030, 3, 10, 9, tzinfo=UTC) for s in slots)  # 04:00 CDT


def test_fall_back_night_offers_the_first_occurrence_only() -> None:
    hours = {6: [parse_range("00:00-03:00")]}  # Sunday 3 November 2030: 01:00-01:59 happens twice
    slots = candidate_slots(
        at(2030, 11, 2, 12), [], hours, frozenset(), CHICAGO, lead_minutes=0, horizon_days=2
    )
    assert [s.start.strftime("%H:%M") for s in slots] == ["05:00", "05:30", "06:00", "06:30", "08:00"]
    assert all(s.end <= datetime(2030, 11, 3, 9, tzinfo=UTC) for s in slots)  # 03:00 CST


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        bookable_slots(datetime(2030, 3, 4, 8), [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO)
    with pytest.raises(ValueError):
        bookable_slots(at(2030, 3, 4, 8), [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, step_minutes=0)
    assert bookable_slots(at(2030, 3, 4, 8), [], WEEKDAYS_9_TO_5, frozenset(), CHICAGO, limit=0) == []
    assert bookable_slots(at(2030, 3, 4, 8), [], {}, frozenset(), CHICAGO) == []


# -- property -------------------------------------------------------------------------------------
ZONES = ["America/Chicago", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "UTC", "America/St_Johns"]
quarter_hours = st.integers(0, 95).map(lambda q: time(q // 4, q % 4 * 15))


@st.composite
def windows(draw: st.DrawFn) -> list[Window]:
    return [Window(draw(quarter_hours), draw(quarter_hours)) for _ in range(draw(st.integers(0, 2)))]


def _close(day: date, window: Window, tz: ZoneInfo) -> datetime:
    if window.end == time(0, 0) or window.end <= window.start:
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return datetime.combine(day, window.end, tzinfo=tz)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone=st.sampled_from(ZONES),
    now=st.datetimes(min_value=datetime(2030, 1, 1), max_value=datetime(2031, 1, 1), timezones=st.just(UTC)),
    hours=st.dictionaries(st.integers(0, 6), windows(), max_size=7),
    busy_spec=st.lists(st.tuples(st.integers(0, 10 * 24 * 60), st.integers(1, 8 * 60)), max_size=12),
    holiday_offsets=st.sets(st.integers(0, 9), max_size=3),
    length=st.sampled_from([15, 30, 45, 60, 90, 120]),
    buffer=st.integers(0, 45),
    lead=st.integers(0, 24 * 60),
    horizon=st.integers(0, 9),
    step=st.sampled_from([10, 15, 30, 60]),
    limit=st.integers(1, 6),
    spread=st.booleans(),
)
def test_property_never_overlaps_busy_or_leaves_opening_hours(
    zone: str,
    now: datetime,
    hours: dict[int, list[Window]],
    busy_spec: list[tuple[int, int]],
    holiday_offsets: set[int],
    length: int,
    buffer: int,
    lead: int,
    horizon: int,
    step: int,
    limit: int,
    spread: bool,
) -> None:
    tz = ZoneInfo(zone)
    busy = [Slot(now + timedelta(minutes=o), now + timedelta(minutes=o + d)) for o, d in busy_spec]
    holidays = frozenset(now.astimezone(tz).date() + timedelta(days=o) for o in holiday_offsets)
    slots = bookable_slots(
        now,
        busy,
        hours,
        holidays,
        tz,
        length_minutes=length,
        buffer_minutes=buffer,
        lead_minutes=lead,
        horizon_days=horizon,
        step_minutes=step,
        limit=limit,
        spread_days=spread,
    )
    every = candidate_slots(
        now,
        busy,
        hours,
        holidays,
        tz,
        length_minutes=length,
        buffer_minutes=buffer,
        lead_minutes=lead,
        horizon_days=horizon,
        step_minutes=step,
    )
    assert len(slots) <= limit and len(slots) == min(limit, len(every))
    assert slots == sorted(set(slots), key=lambda s: s.start)
    assert set(slots) <= set(every)
    if not spread:
        assert slots == every[:limit]
    pad = timedelta(minutes=buffer)
    for slot in every:
        assert slot.end - slot.start == timedelta(minutes=length)
        assert now + timedelta(minutes=lead) <= slot.start < now + timedelta(days=horizon)
        for b in busy:
            assert slot.end <= b.start - pad or slot.start >= b.end + pad
        start_local = slot.start.astimezone(tz)
        day = start_local.date()
        assert day not in holidays
        inside = [
            w
            for w in hours.get(day.weekday(), [])
            if w.contains(start_local.time())
            and slot.start >= datetime.combine(day, w.start, tzinfo=tz)
            and slot.end <= _close(day, w, tz)
        ]
        assert inside, f"{slot} is outside opening hours"
        opening = datetime.combine(day, inside[0].start)
        wall = start_local.replace(tzinfo=None)
        assert any(
            (wall - datetime.combine(day, w.start)) % timedelta(minutes=step) == timedelta(0) for w in inside
        ), (opening, wall)
