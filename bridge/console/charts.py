"""Charts as inline SVG, drawn on the server: no script, no external asset, nothing to load.

Colours are SVG presentation attributes (not ``style=``), so the console's strict
Content-Security-Policy needs no exception. Every bar and point carries a ``<title>`` (a tooltip
and the accessible text), and the pages show the same numbers in a table beside each chart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#64748b", "#2563eb", "#0891b2", "#7c3aed", "#16a34a", "#ea580c")
WIDTH = 760
HEIGHT = 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 44
MAX_BAR = 40.0


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str = PALETTE[0]


def _fmt(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}"


def nice_top(peak: float, ticks: int = 4) -> float:
    """A round axis maximum at or above ``peak`` that divides into ``ticks`` round steps."""
    if peak <= 0:
        return float(ticks)
    raw = peak / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * magnitude
        if step >= raw:
            return step * ticks
    return 10 * magnitude * ticks


def _frame(title: str, top: float, unit: str, plot_w: float, plot_h: float) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#475569">'
            f"{escape(_fmt(value) + unit)}</text>"
        )
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    parts, x = [], LEFT
    for s in series:
        parts.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{escape(s.color)}"/>'
            f'<text x="{x + 14}" y="17" font-size="12" fill="#0f172a">{escape(s.name)}</text>'
        )
        x += 24 + 7 * len(s.name)
    return parts


def _x_labels(labels: Sequence[str], plot_w: float, plot_h: float) -> list[str]:
    n = max(1, len(labels))
    every = max(1, math.ceil(n / 12))
    step = plot_w / n
    parts = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = LEFT + step * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16:.1f}" text-anchor="middle" font-size="11" '
            f'fill="#475569">{escape(label)}</text>'
        )
    return parts


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> Markup:
    """Grouped vertical bars: one group per label, one bar per series."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = nice_top(float(peak))
    parts = _frame(title, top, unit, plot_w, plot_h)
    n = max(1, len(labels))
    group = plot_w / n
    bar = min(group * 0.8 / max(1, len(series)), MAX_BAR)
    pad = (group - bar * len(series)) / 2  # the group is centred on its label
    for i, label in enumerate(labels):
        for j, s in enumerate(series):
            value = s.values[i] if i < len(s.values) else None
            if value is None:
                continue
            h = plot_h * float(value) / top
            x = LEFT + group * i + pad + bar * j
            parts.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{escape(s.color)}"><title>{escape(label)}: {escape(s.name)} '
                f"{escape(_fmt(float(value)) + unit)}</title></rect>"
            )
    parts += _x_labels(labels, plot_w, plot_h) + _legend(series) + ["</svg>"]
    return Markup("".join(parts))  # noqa: S704 (every text and attribute above went through escape())


def line_chart(
    title: str, labels: Sequence[str], series: Series, unit: str = "", top: float | None = None
) -> Markup:
    """One line; a missing value (None) breaks it."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((v for v in series.values if v is not None), default=0.0)
    top = top or nice_top(float(peak))
    parts = _frame(title, top, unit, plot_w, plot_h)
    step = plot_w / max(1, len(labels))
    runs: list[list[str]] = [[]]
    for i, label in enumerate(labels):
        value = series.values[i] if i < len(series.values) else None
        if value is None:
            runs.append([])
            continue
        x = LEFT + step * (i + 0.5)
        y = TOP + plot_h - plot_h * float(value) / top
        runs[-1].append(f"{x:.1f},{y:.1f}")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{escape(series.color)}"><title>{escape(label)}: '
            f"{escape(_fmt(float(value)) + unit)}</title></circle>"
        )
    for run in runs:
        if len(run) > 1:
            parts.append(
                f'<polyline points="{" ".join(run)}" fill="none" stroke="{escape(series.color)}" '
                'stroke-width="2"/>'
            )
    parts += _x_labels(labels, plot_w, plot_h) + _legend([series]) + ["</svg>"]
    return Markup("".join(parts))  # noqa: S704 (every text and attribute above went through escape())
