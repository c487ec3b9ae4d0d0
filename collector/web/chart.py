"""The violations-over-time chart: a stacked bar per day, drawn on the server as inline SVG.

No script and no inline style (the Content-Security-Policy allows neither): shapes carry CSS
classes that ``static/dashboard.css`` colours, so the chart prints and works offline.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

SERIES = ("blocked", "reported", "exempted", "failed")
SERIES_LABELS = {
    "blocked": "Blocked",
    "reported": "Reported",
    "exempted": "Exempted",
    "failed": "Enforcement failed",
}
WIDTH, HEIGHT = 1180, 300
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 34, 30


def nice_ceiling(value: int) -> int:
    """The smallest 1/2/5 × 10^n at or above ``value`` (a readable axis maximum)."""
    if value <= 0:
        return 1
    exponent: int = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * exponent >= value:
            return step * exponent
    return 10 * exponent


def day_label(day: int, fmt: str = "%d %b") -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime(fmt)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def violations_chart(days: Sequence[tuple[int, Counter[str]]], *, title: str) -> Markup:
    """SVG markup for ``[(day, {series: count})]``, oldest first."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    peak = max((sum(c[s] for s in SERIES) for _, c in days), default=0)
    top = nice_ceiling(peak)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_num(y)}" y2="{_num(y)}"/>'
        )
        label = f"{int(value):,}" if value == int(value) else _num(value)
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">{label}</text>'
        )
    n = max(1, len(days))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.72)
    label_every = max(1, math.ceil(n / 10))
    for index, (day, counts) in enumerate(days):
        x = LEFT + index * slot + (slot - bar_w) / 2
        base = float(TOP + plot_h)
        total = sum(counts[s] for s in SERIES)
        for series in SERIES:
            count = counts[series]
            if not count:
                continue
            h = plot_h * count / top
            base -= h
            parts.append(
                f'<rect class="bar-{series}" x="{_num(x)}" y="{_num(base)}" '
                f'width="{_num(bar_w)}" height="{_num(max(h, 0.5))}">'
                f"<title>{escape(day_label(day, '%Y-%m-%d'))}: {count:,} "
                f"{SERIES_LABELS[series].lower()} (of {total:,})</title></rect>"
            )
        if index % label_every == 0:
            parts.append(
                f'<text class="tick" x="{_num(LEFT + index * slot + slot / 2)}" '
                f'y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(day_label(day))}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
        f'y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
    )
    x = WIDTH - RIGHT
    for series in reversed(SERIES):
        label = SERIES_LABELS[series]
        width = 22 + 6.6 * len(label)
        x -= width
        parts.append(f'<rect class="bar-{series}" x="{_num(x)}" y="8" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{_num(x + 14)}" y="17">{escape(label)}</text>')
    parts.append("</svg>")
    # Every interpolated text above went through escape(); the rest is our own markup.
    return Markup("".join(parts))  # noqa: S704
