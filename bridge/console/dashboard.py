"""The dashboard: the recovery funnel per day and per business, and the response times."""

from __future__ import annotations

from flask import render_template, request
from flask.typing import ResponseReturnValue

from bridge.console import blueprint, queries
from bridge.console.charts import PALETTE, Series, bar_chart, line_chart
from bridge.console.common import config, fmt_duration, reading

PERIODS = (7, 14, 30, 90)
FUNNEL = (
    ("missed", "missed calls"),
    ("texted", "texted"),
    ("replied", "replied"),
    ("qualified", "qualified"),
    ("booked", "booked"),
)


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
        data = queries.dashboard(s, days, business)
    labels = [d.strftime("%m-%d") for d in data.days]
    day_rows = [data.per_day[d] for d in data.days]
    per_day_chart = bar_chart(
        "Missed calls and what followed, per day (UTC)",
        labels,
        [
            Series(name, [getattr(c, key) for c in day_rows], PALETTE[i])
            for i, (key, name) in enumerate(FUNNEL)
        ],
    )
    recovered_chart = line_chart(
        "Recovered %, per day",
        labels,
        Series("recovered %", [c.recovered_pct for c in day_rows], PALETTE[4]),
        unit="%",
        top=100,
    )
    names = list(data.per_business)
    per_business_chart = bar_chart(
        "The funnel per business",
        names,
        [
            Series(name, [getattr(data.per_business[b], key) for b in names], PALETTE[i])
            for i, (key, name) in enumerate(FUNNEL)
        ],
    )
    to_text = [data.median_to_text_by_business.get(b) for b in names]
    to_human = [data.median_to_human_by_business.get(b) for b in names]
    label, size = time_unit(to_text + to_human)
    times_chart = bar_chart(
        "Median response times per business",
        names,
        [
            Series("missed call to text", [_in(size, v) for v in to_text], PALETTE[1]),
            Series("to first human response", [_in(size, v) for v in to_human], PALETTE[5]),
        ],
        unit=label,
    )
    return render_template(
        "dashboard.html",
        data=data,
        days=days,
        periods=PERIODS,
        business=business,
        businesses=[b.id for b in cfg.businesses],
        funnel=FUNNEL,
        per_day_chart=per_day_chart,
        recovered_chart=recovered_chart,
        per_business_chart=per_business_chart,
        times_chart=times_chart,
        fmt_duration=fmt_duration,
    )
