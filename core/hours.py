"""Opening hours, holidays and the caller's sending window. Pure functions of time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    start: time
    end: time  # time(0, 0) as an end means midnight

    def contains(self, t: time) -> bool:
        if self.end == time(0, 0) or self.end <= self.start:
            return t >= self.start
        return self.start <= t < self.end


def parse_range(text: str) -> Window:
    start_s, end_s = text.split("-")
    return Window(_parse_hhmm(start_s), _parse_hhmm(end_s))


def _parse_hhmm(text: str) -> time:
    hh, mm = text.split(":")
    if hh == "24":
        return time(0, 0)
    return time(int(hh), int(mm))


def is_open(
    now_utc: datetime, tz: ZoneInfo, hours: dict[int, list[Window]], holidays: frozenset[date]
) -> bool:
    """Whether the business is open at ``now_utc`` in its own time zone."""
    local = now_utc.astimezone(tz)
    if local.date() in holidays:
        return False
    return any(w.contains(local.time()) for w in hours.get(local.weekday(), []))


def next_send_time(now_utc: datetime, zones: list[ZoneInfo], window: Window) -> datetime:
    """The earliest moment at or after ``now_utc`` that lies inside ``window`` in every zone.

    A caller whose number maps to several zones gets the strictest reading, so no zone ever sees
    a text outside its window.
    """
    candidate = now_utc
    for _ in range(8):  # each pass moves to a window start; a few passes settle every zone
        moved = False
        for tz in zones:
            opened = _next_open_in_zone(candidate, tz, window)
            if opened > candidate:
                candidate = opened
                moved = True
        if not moved:
            return candidate
    return candidate


def _next_open_in_zone(moment: datetime, tz: ZoneInfo, window: Window) -> datetime:
    local = moment.astimezone(tz)
    if window.contains(local.time()):
        return moment
    day = local.date()
    for offset in range(0, 3):
        # Compare instants, not wall times: on DST days a wall time can occur twice (fold 0 is the
        # first) or never (both folds then land outside the window and the day is skipped).
        for fold in (0, 1):
            start = datetime.combine(day + timedelta(days=offset), window.start, tzinfo=tz).replace(fold=fold)
            opened = start.astimezone(moment.tzinfo)
            if opened >= moment and window.contains(opened.astimezone(tz).time()):
                return opened
    return moment  # unreachable for a sane window
