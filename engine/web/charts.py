"""Charts drawn on the server as SVG (no JavaScript): bars for counts by name (aging buckets,
queue depth) and a line over time (throughput). Every label is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD = 640, 180, 28
#: The width of a label's character (base.html draws chart text at 10px; capitals are wider).
CHAR = 6.5


def bars(title: str, values: Sequence[tuple[str, float]], unit: str = "") -> str:
    """A bar per (label, value), labelled with the value. A label that does not fit under its
    bar is shortened in the middle (``MISS…SERIAL``: names that share a beginning stay
    apart); when some do not fit, every other label goes one row lower, each then having the
    room of two bars. The whole label is in the bar's tooltip."""
    top = max([v for _, v in values] or [0]) or 1
    n = max(len(values), 1)
    slot = (WIDTH - 2 * PAD) / n
    stagger = n > 1 and any(len(label) * CHAR > slot * 0.95 for label, _ in values)
    room = slot * (1.9 if stagger else 0.95)
    parts = [_head(title)]
    for i, (label, value) in enumerate(values):
        h = (HEIGHT - 2 * PAD) * value / top
        x = PAD + i * slot + slot * 0.1
        y = HEIGHT - PAD - h
        below = HEIGHT - PAD + (25 if stagger and i % 2 else 14)
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
            f'class="bar"><title>{escape(label)}: {value:g}{escape(unit)}</title></rect>'
            f'<text x="{x + slot * 0.4:.1f}" y="{y - 3:.1f}" text-anchor="middle">'
            f"{value:g}</text>"
            f'<text x="{x + slot * 0.4:.1f}" y="{below}" text-anchor="middle">'
            f"{escape(fit(label, room))}</text>"
        )
    if not values:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">none</text>')
    parts.append("</svg>")
    return "".join(parts)


def fit(label: str, room: float) -> str:
    """``label`` as it fits ``room`` pixels: whole, or its beginning and end around an
    ellipsis (at least three characters)."""
    most = max(3, int(room // CHAR))
    if len(label) <= most:
        return label
    head = most // 2
    tail = most - 1 - head
    return f"{label[:head]}…{label[-tail:] if tail else ''}"


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
