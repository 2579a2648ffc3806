"""The dashboard: the recovery funnel per day and per business, and the response times.

Every number comes from :func:`core.report.build`, the code behind ``textback report``, with the
same definitions (docs/reports.md): "last N days" is ``textback report --since Nd`` (calls that
started in the last N days, up to now), days are each business's own local days, and the
numbers are counted per missed call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from bridge.console import blueprint
from bridge.console.charts import PALETTE, Series, bar_chart, line_chart
from bridge.console.common import config, fmt_duration, reading
from core import report
from core.config import Config
from core.models import utcnow

PERIODS = (7, 14, 30, 90)
#: (key in ``Funnel.to_json()``, label): the stages shown as cards, chart series and table columns.
FUNNEL = (
    ("missed_calls", "missed calls"),
    ("texted", "texted"),
    ("replied", "replied"),
    ("qualified", "qualified"),
    ("booked", "booked"),
    ("recovered", "recovered"),
)


@dataclass
class Board:
    """What the dashboard shows: the report, and its days summed over the businesses shown."""

    report: report.Report
    total: dict[str, Any]
    #: (business, time zone, its total), in the report's order.
    businesses: list[tuple[str, str, dict[str, Any]]]
    #: (local day, the funnel of every business shown for that day of its own), oldest first.
    days: list[tuple[date, dict[str, Any]]]


def build(
    session: Session, cfg: Config, days: int, business: str | None, now: datetime | None = None
) -> Board:
    """The dashboard for the last ``days`` days: ``textback report --since {days}d [--business B]``."""
    until = now or utcnow()
    data = report.build(session, cfg, until - timedelta(days=days), until, business)
    per_day: dict[date, report.Funnel] = {d: report.Funnel() for d in _day_range(data)}
    for b in data.businesses:
        for day, funnel in b.days.items():
            per_day.setdefault(day, report.Funnel()).add(funnel)
    return Board(
        report=data,
        total=data.total.to_json(),
        businesses=[(b.business, b.timezone, b.total.to_json()) for b in data.businesses],
        days=[(d, f.to_json()) for d, f in sorted(per_day.items())],
    )


def _day_range(data: report.Report) -> list[date]:
    """Every local day the period touches, in any of the report's time zones (empty days too)."""
    last_moment = data.until - timedelta(microseconds=1)
    firsts, lasts = [], []
    for b in data.businesses:
        tz = ZoneInfo(b.timezone)
        firsts.append(data.since.astimezone(tz).date())
        lasts.append(last_moment.astimezone(tz).date())
    if not firsts:
        return []
    first, last = min(firsts), max(lasts)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def time_unit(values: list[float | None]) -> tuple[str, float]:
    """The unit that suits the longest of these durations (in seconds): its label and size."""
    peak = max((v for v in values if v is not None), default=0.0)
    if peak < 120:
        return " s", 1.0
    if peak < 3 * 3600:
        return " min", 60.0
    return " h", 3600.0


def _in(unit: float, seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / unit, 1)


@blueprint.get("/")
def dashboard() -> ResponseReturnValue:
    cfg = config()
    try:
        days = int(request.args.get("days", "14"))
    except ValueError:
        days = 14
    days = days if days in PERIODS else 14
    business = request.args.get("business") or None
    if business and cfg.business(business) is None:
        business = None
    with reading() as s:
        board = build(s, cfg, days, business)
    labels = [d.strftime("%m-%d") for d, _ in board.days]
    day_rows = [f for _, f in board.days]
    per_day_chart = bar_chart(
        "Missed calls and what followed, per local day",
        labels,
        [Series(name, [f[key] for f in day_rows], PALETTE[i]) for i, (key, name) in enumerate(FUNNEL)],
    )
    recovered_chart = line_chart(
        "Recovered %, per local day",
        labels,
        Series("recovered %", [f["recovered_pct"] for f in day_rows], PALETTE[4]),
        unit="%",
        top=100,
    )
    names = [name for name, _, _ in board.businesses]
    totals = [f for _, _, f in board.businesses]
    per_business_chart = bar_chart(
        "The funnel per business",
        names,
        [Series(name, [f[key] for f in totals], PALETTE[i]) for i, (key, name) in enumerate(FUNNEL)],
    )
    to_text = [f["median_seconds_to_text"] for f in totals]
    to_person = [f["median_seconds_to_person"] for f in totals]
    label, size = time_unit(to_text + to_person)
    times_chart = bar_chart(
        "Median response times per business",
        names,
        [
            Series("missed call to text", [_in(size, v) for v in to_text], PALETTE[1]),
            Series("to first human response", [_in(size, v) for v in to_person], PALETTE[5]),
        ],
        unit=label,
    )
    return render_template(
        "dashboard.html",
        board=board,
        days=days,
        periods=PERIODS,
        business=business,
        businesses=[b.id for b in cfg.businesses],
        timezones=sorted({tz for _, tz, _ in board.businesses}),
        funnel=FUNNEL,
        per_day_chart=per_day_chart,
        recovered_chart=recovered_chart,
        per_business_chart=per_business_chart,
        times_chart=times_chart,
        fmt_duration=fmt_duration,
    )
