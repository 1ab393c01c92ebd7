"""A small server-side line chart as inline SVG: no JavaScript, nothing to vendor, prints and screenshots.

Used by the UI view for "positive rate per policy version over time". Values are fractions in [0, 1]
(or None for a day with nothing labelled, drawn as a gap).
"""

from __future__ import annotations

from datetime import date
from html import escape
from typing import Mapping, Sequence

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


def line_chart(
    series: Mapping[str, Sequence[tuple[date, float | None]]],
    *,
    title: str = "",
    width: int = 560,
    height: int = 220,
    y_max: float | None = None,
) -> str:
    """One line per series over a shared date axis; y is a rate shown as a percentage."""
    left, right, top, bottom = 48, 24, 26 if title else 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    days = sorted({d for points in series.values() for d, _ in points})
    values = [v for points in series.values() for _, v in points if v is not None]
    top_value, steps = _nice_scale(max(values, default=0.0) if y_max is None else y_max)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title or "chart")}">'
    ]
    if title:
        parts.append(f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>')
    if not days:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" class="muted">no verdicts yet</text></svg>')
        return "".join(parts)

    def x_of(day: date) -> float:
        if len(days) == 1:
            return left + plot_w / 2
        return left + plot_w * days.index(day) / (len(days) - 1)

    def y_of(value: float) -> float:
        return top + plot_h * (1 - (value / top_value if top_value else 0))

    for i in range(steps + 1):  # horizontal grid with round percentage labels
        value = top_value * i / steps
        y = y_of(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{value:.0%}</text>')
    for day in _ticks(days, max_ticks=6):
        parts.append(f'<text x="{x_of(day):.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="axis">{day:%m-%d}</text>')

    for n, (name, points) in enumerate(sorted(series.items())):
        color = PALETTE[n % len(PALETTE)]
        for segment in _segments(sorted(points)):
            coords = " ".join(f"{x_of(d):.1f},{y_of(v):.1f}" for d, v in segment)
            if len(segment) > 1:
                parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
            for d, v in segment:
                parts.append(
                    f'<circle cx="{x_of(d):.1f}" cy="{y_of(v):.1f}" r="3" fill="{color}">'
                    f"<title>{escape(name)} {d:%Y-%m-%d}: {v:.1%}</title></circle>"
                )
        legend_x = left + 8 + 110 * n
        parts.append(f'<rect x="{legend_x}" y="{height - 14}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{height - 5}" class="legend">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _segments(points: Sequence[tuple[date, float | None]]) -> list[list[tuple[date, float]]]:
    """Split at missing values so a day with nothing labelled is a gap, not a fake zero."""
    out: list[list[tuple[date, float]]] = [[]]
    for d, v in points:
        if v is None:
            if out[-1]:
                out.append([])
        else:
            out[-1].append((d, float(v)))
    return [s for s in out if s]


def _ticks(days: Sequence[date], max_ticks: int) -> list[date]:
    if len(days) <= max_ticks:
        return list(days)
    step = (len(days) - 1) / (max_ticks - 1)
    return [days[round(i * step)] for i in range(max_ticks)]


def _nice_scale(value: float) -> tuple[float, int]:
    """A top for the y axis and a number of grid steps that give round percentages."""
    for top, steps in ((0.05, 5), (0.1, 5), (0.2, 4), (0.5, 5), (1.0, 5)):
        if value <= top:
            return top, steps
    return value, 4
