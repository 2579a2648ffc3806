"""Bookable slots: opening hours minus busy time, as a pure function of time.

Rules (all per business):

- **Grid.** Candidate starts lie on a ``step_minutes`` grid anchored at each opening window's start,
  in local wall-clock time (a window opening at 08:15 with a 30-minute step offers 08:15, 08:45...).
- **Opening hours.** The whole slot (``length_minutes`` of real time) lies inside one opening window
  of the day it starts on. A window ending at ``00:00`` (or at or before its start, as
  :meth:`core.hours.Window.contains` reads it) ends at midnight.
- **DST.** Wall-clock starts that do not exist (the hour skipped in spring) are skipped; in the
  repeated autumn hour only the first occurrence (``fold=0``) is offered. Window bounds and slot
  lengths are compared as instants, so a slot never runs past closing because the clock changed.
- **Holidays.** No slot starts on a local date in ``holidays``.
- **Lead time and horizon.** A slot starts at least ``lead_minutes`` after ``now`` and before
  ``now + horizon_days`` days. Ask the calendar for busy time over ``now .. now + horizon_days``
  plus ``length_minutes + buffer_minutes`` so the last slots are checked too.
- **Busy time.** Every busy interval is widened by ``buffer_minutes`` on both sides; a slot may touch
  a widened interval but not overlap it.
- **Choice.** With ``spread_days`` (the default) the earliest slot of each of the first ``limit``
  days that have one is taken, so a caller gets a real choice ("today 3 pm, tomorrow 9 am, Wednesday
  9 am") rather than three adjacent half-hours; if fewer days have slots, the remaining places go to
  the earliest slots not yet chosen. Without it, simply the earliest ``limit``. The result is sorted
  by start and given in UTC.
"""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.crm import Slot
from core.hours import Window


def _local(day: date, at: time, tz: ZoneInfo) -> datetime | None:
    """``day`` at wall-clock ``at`` in ``tz`` (first occurrence), or None if that time does not exist."""
    moment = datetime.combine(day, at, tzinfo=tz)
    round_trip = moment.astimezone(UTC).astimezone(tz)
    if round_trip.replace(tzinfo=None) != moment.replace(tzinfo=None):
        return None  # skipped by a spring-forward transition
    return moment


def _window_bounds(day: date, window: Window, tz: ZoneInfo) -> tuple[datetime, datetime, datetime, datetime]:
    """(wall-clock open, wall-clock close, open instant, close instant) of ``window`` on ``day``."""
    wall_open = datetime.combine(day, window.start)
    if window.end == time(0, 0) or window.end <= window.start:
        wall_close = datetime.combine(day + timedelta(days=1), time(0, 0))
    else:
        wall_close = datetime.combine(day, window.end)
    # Bounds that fall in a DST gap resolve with fold=0 (the offset before the change): a window
    # "opening at 02:00" on the spring-forward night opens at 03:00 daylight time.
    return (
        wall_open,
        wall_close,
        wall_open.replace(tzinfo=tz).astimezone(UTC),
        wall_close.replace(tzinfo=tz).astimezone(UTC),
    )


def _widened(busy: list[Slot], buffer: timedelta) -> tuple[list[datetime], list[datetime]]:
    """Busy intervals widened by ``buffer``, merged, as parallel sorted start/end lists (UTC)."""
    intervals = sorted(
        ((b.start.astimezone(UTC) - buffer, b.end.astimezone(UTC) + buffer) for b in busy), key=lambda i: i[0]
    )
    starts: list[datetime] = []
    ends: list[datetime] = []
    for start, end in intervals:
        if starts and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _overlaps(start: datetime, end: datetime, starts: list[datetime], ends: list[datetime]) -> bool:
    # The merged interval beginning last before ``end`` is the only one that can overlap.
    i = bisect.bisect_left(starts, end) - 1
    return i >= 0 and ends[i] > start


def candidate_slots(
    now: datetime,
    busy: list[Slot],
    hours: dict[int, list[Window]],
    holidays: frozenset[date],
    tz: ZoneInfo,
    *,
    length_minutes: int = 60,
    buffer_minutes: int = 15,
    lead_minutes: int = 120,
    horizon_days: int = 7,
    step_minutes: int = 30,
) -> list[Slot]:
    """Every free slot by the rules above, earliest first (UTC)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if length_minutes <= 0 or step_minutes <= 0:
        raise ValueError("length_minutes and step_minutes must be positive")
    if buffer_minutes < 0 or lead_minutes < 0 or horizon_days < 0:
        raise ValueError("buffer_minutes, lead_minutes and horizon_days must not be negative")
    if any(b.start.tzinfo is None or b.end.tzinfo is None for b in busy):
        raise ValueError("busy intervals must be timezone-aware")
    now = now.astimezone(UTC)
    earliest = now + timedelta(minutes=lead_minutes)
    latest = now + timedelta(days=horizon_days)  # exclusive bound for starts
    length = timedelta(minutes=length_minutes)
    step = timedelta(minutes=step_minutes)
    starts, ends = _widened(busy, timedelta(minutes=buffer_minutes))

    found: dict[datetime, Slot] = {}
    day = now.astimezone(tz).date()
    last_day = latest.astimezone(tz).date()
    while day <= last_day:
        for window in [] if day in holidays else hours.get(day.weekday(), []):
            wall, wall_close, open_at, close_at = _window_bounds(day, window, tz)
            while wall < wall_close:
                moment = _local(day, wall.time(), tz)
                wall += step
                if moment is None:
                    continue
                start = moment.astimezone(UTC)
                end = start + length
                if end > close_at:
                    break  # instants grow with the wall clock (fold=0), so no later start fits
                if start < open_at or start < earliest or start >= latest:
                    continue
                if not _overlaps(start, end, starts, ends):
                    found.setdefault(start, Slot(start, end))
        day += timedelta(days=1)
    return [found[k] for k in sorted(found)]


def bookable_slots(
    now: datetime,
    busy: list[Slot],
    hours: dict[int, list[Window]],
    holidays: frozenset[date],
    tz: ZoneInfo,
    length_minutes: int = 60,
    buffer_minutes: int = 15,
    lead_minutes: int = 120,
    horizon_days: int = 7,
    step_minutes: int = 30,
    limit: int = 3,
    *,
    spread_days: bool = True,
) -> list[Slot]:
    """Up to ``limit`` slots to offer a caller (see the module docstring for every rule)."""
    if limit <= 0:
        return []
    every = candidate_slots(
        now,
        busy,
        hours,
        holidays,
        tz,
        length_minutes=length_minutes,
        buffer_minutes=buffer_minutes,
        lead_minutes=lead_minutes,
        horizon_days=horizon_days,
        step_minutes=step_minutes,
    )
    if not spread_days or len(every) <= limit:
        return every[:limit]
    chosen: list[Slot] = []
    days: set[date] = set()
    for slot in every:
        local_day = slot.start.astimezone(tz).date()
        if local_day not in days:
            days.add(local_day)
            chosen.append(slot)
            if len(chosen) == limit:
                break
    if len(chosen) < limit:
        taken = set(chosen)
        chosen.extend([s for s in every if s not in taken][: limit - len(chosen)])
    return sorted(chosen, key=lambda s: s.start)
