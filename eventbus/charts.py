"""Charts as inline SVG, drawn on the server: no script and no library for the browser.

The admin dashboard's one kind of chart: bars along time, stacked by series, with a
value axis, a few time labels, a tooltip (``<title>``) on every bar and a legend. The
SVG scales to its box (``viewBox``, width 100%), so it never widens the page; its text
takes the admin's colours through the classes in ``static/eventbus/admin.css``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Okabe and Ito's palette, which colour-blind readers tell apart; grey is "other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER = "#8C8C8C"

WIDTH, HEIGHT = 960, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 26, 28  # room for the unit, the values and the times


@dataclass(frozen=True)
class Series:
    """One stacked layer: a name for the legend, one value per bar, its colour."""

    name: str
    values: Sequence[float]
    color: str


def axis_top(value: float) -> float:
    """The value axis' top, four gridlines above 0: each step 1, 2, 2.5 or 5 times a
    power of ten, the smallest whose four steps reach ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    power = 10 ** math.floor(math.log10(quarter))
    for step in (1, 2, 2.5, 5, 10):
        if quarter <= step * power:
            return float(4 * step * power)
    return float(40 * power)  # pragma: no cover (the loop ends at 10)


def number(value: float) -> str:
    """A value as the axis and the tooltips show it: short, no needless decimals."""
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}"


def bar_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    unit: str,
    label_every: int = 10,
) -> SafeString:
    """Bars for ``labels`` (one per time bucket), ``series`` stacked on each, as SVG.

    ``labels`` name the buckets (in the tooltips; every ``label_every``-th also under
    the axis); ``unit`` follows each value in the tooltips and names the axis.
    """
    count = max(1, len(labels))
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = axis_top(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    bar = max(1.0, slot * 0.8)
    parts: list[str] = []
    for step in range(5):  # the value axis: 0, 1/4, ... of the top
        value = top * step / 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
                LEFT,
                WIDTH - RIGHT,
                f"{y:.1f}",
                f"{y:.1f}",
                LEFT - 6,
                f"{y + 4:.1f}",
                number(value),
            )
        )
    for index, label in enumerate(labels):
        x = LEFT + index * slot + (slot - bar) / 2
        base = float(TOP + plot_h)
        tooltip = [
            label,
            *(f"{s.name}: {number(s.values[index])} {unit}" for s in series if s.values[index]),
        ]
        if len(tooltip) == 1:
            tooltip.append(f"0 {unit}")
        for layer in series:
            value = layer.values[index]
            if not value:
                continue
            height = plot_h * value / top
            base -= height
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
                    f"{x:.1f}",
                    f"{base:.1f}",
                    f"{bar:.1f}",
                    f"{height:.1f}",
                    layer.color,
                    "\n".join(tooltip),
                )
            )
        if index % label_every == 0:
            parts.append(
                format_html(
                    '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
                    f"{x + bar / 2:.1f}",
                    HEIGHT - 8,
                    label,
                )
            )
    summary = f"{title}: at most {number(max(totals, default=0.0))} {unit} per bar"
    svg = format_html(
        '<svg class="eventbus-chart" id="{}" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-labelledby="{}-title" preserveAspectRatio="xMidYMid meet">'
        '<title id="{}-title">{}</title>'
        '<text class="axis unit" x="{}" y="{}">{}</text>{}</svg>',
        chart_id,
        WIDTH,
        HEIGHT,
        chart_id,
        chart_id,
        summary,
        LEFT,
        12,
        unit,
        mark_safe("".join(parts)),  # each part built by format_html()
    )
    return format_html("{}{}", svg, legend(series))


def legend(series: Sequence[Series]) -> SafeString:
    """The series' names with their colours, as an HTML list that wraps."""
    if len(series) < 2:
        return SafeString()
    return format_html(
        '<ul class="eventbus-legend">{}</ul>',
        format_html_join(
            "",
            '<li><span class="swatch" style="background:{}"></span>{}</li>',
            ((s.color, s.name) for s in series),
        ),
    )
