"""Charts drawn on the server as SVG (no JavaScript): bars for counts by name (aging buckets,
queue depth) and a line over time (throughput). Every label is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD = 640, 180, 28


def bars(title: str, values: Sequence[tuple[str, float]], unit: str = "") -> str:
    """A bar per (label, value), labelled with the value."""
    top = max([v for _, v in values] or [0]) or 1
    n = max(len(values), 1)
    slot = (WIDTH - 2 * PAD) / n
    parts = [_head(title)]
    for i, (label, value) in enumerate(values):
        h = (HEIGHT - 2 * PAD) * value / top
        x = PAD + i * slot + slot * 0.1
        y = HEIGHT - PAD - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
            f'class="bar"><title>{escape(label)}: {value:g}{escape(unit)}</title></rect>'
            f'<text x="{x + slot * 0.4:.1f}" y="{y - 3:.1f}" text-anchor="middle">'
            f"{value:g}</text>"
            f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle">'
            f"{escape(label[:14])}</text>"
        )
    if not values:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">none</text>')
    parts.append("</svg>")
    return "".join(parts)


def line(title: str, points: Sequence[tuple[float, float]], start: float, end: float) -> str:
    """A line of (time, value) from ``start`` to ``end``, time labels at both ends."""
    top = max([v for _, v in points] or [0]) or 1
    span = max(end - start, 1)

    def xy(t: float, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (t - start) / span
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top
        return f"{x:.1f},{y:.1f}"

    parts = [_head(title)]
    if points:
        path = " ".join(xy(t, v) for t, v in points)
        parts.append(f'<polyline points="{path}" class="line"/>')
        for t, v in points:
            x, y = xy(t, v).split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" class="dot"/>')
    parts.append(
        f'<text x="{PAD}" y="{HEIGHT - 8}">{_hm(start)}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end">{_hm(end)}</text>'
        f'<text x="{PAD - 4}" y="{PAD}" text-anchor="end">{top:g}</text>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'class="axis"/></svg>'
    )
    return "".join(parts)


def _head(title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'class="chart"><title>{escape(title)}</title>'
        f'<text x="{PAD}" y="14" class="title">{escape(title)}</text>'
    )


def _hm(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M")
