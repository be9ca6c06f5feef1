"""Charts as inline SVG (no script, no network): loss curves and histograms that print as crisply as they show."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

Series = tuple[str, Sequence[tuple[float, float]], str, bool]  # (label, points, colour, draw markers)
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 280, 58, 16, 14, 42


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [math.floor(lo / step) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(ticks[-1] + step)
    return [round(t, 10) for t in ticks]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:.3g}"


def _frame(xt: list[float], yt: list[float], sx: object, sy: object, x_label: str, y_label: str) -> list[str]:
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="plot"/>']
    for y in yt:
        py = sy(y)  # type: ignore[operator]
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_label(y)}</text>')
    for x in xt:
        px = sx(x)  # type: ignore[operator]
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{H - BOTTOM}" y2="{H - BOTTOM + 4}" class="axis"/>'
                     f'<text x="{px:.1f}" y="{H - BOTTOM + 17}" text-anchor="middle">{_label(x)}</text>')
    parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle" class="title">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" class="title" '
                 f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(y_label)}</text>')
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def line_chart(series: Sequence[Series], x_label: str, y_label: str) -> str:
    """Lines (and markers for sparse series) on shared axes, with a legend."""
    points = [p for _, pts, _, _ in series for p in pts]
    if not points:
        return '<p class="none">no points to draw</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    yt = nice_ticks(min(ys), max(ys))
    xt = nice_ticks(min(xs), max(xs))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * (W - LEFT - RIGHT)

    def sy(y: float) -> float:
        return H - BOTTOM - (y - y0) / ((y1 - y0) or 1) * (H - TOP - BOTTOM)

    parts = _frame(xt, yt, sx, sy, x_label, y_label)
    for i, (label, pts, colour, markers) in enumerate(series):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        if markers:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        ly = TOP + 14 + 16 * i
        parts.append(f'<line x1="{W - RIGHT - 130}" x2="{W - RIGHT - 112}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2.5"/><text x="{W - RIGHT - 106}" y="{ly}">'
                     f'{escape(label)}</text>')
    return _svg(parts, f"{y_label} against {x_label}")


def histogram(values: Sequence[float], x_label: str, bins: int = 30, mark: float | None = None,
              mark_label: str = "") -> str:
    """Counts per equal-width bin; ``mark`` draws a vertical line (e.g. the cutoff length)."""
    if not values:
        return '<p class="none">no values</p>'
    lo, hi = min(values), max(values)
    if mark is not None:
        hi = max(hi, mark)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    xt = nice_ticks(lo, hi)
    yt = nice_ticks(0, max(counts))
    x0, x1, y1 = min(xt[0], lo), max(xt[-1], hi), yt[-1]

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * (W - LEFT - RIGHT)

    def sy(y: float) -> float:
        return H - BOTTOM - y / (y1 or 1) * (H - TOP - BOTTOM)

    parts = _frame([t for t in xt if x0 <= t <= x1], yt, sx, sy, x_label, "examples")
    for i, n in enumerate(counts):
        a, b = sx(lo + i * width), sx(lo + (i + 1) * width)
        parts.append(f'<rect x="{a:.1f}" y="{sy(n):.1f}" width="{max(0.5, b - a - 1):.1f}" '
                     f'height="{H - BOTTOM - sy(n):.1f}" class="bar"><title>{n}</title></rect>')
    if mark is not None:
        parts.append(f'<line x1="{sx(mark):.1f}" x2="{sx(mark):.1f}" y1="{TOP}" y2="{H - BOTTOM}" class="mark"/>'
                     f'<text x="{sx(mark) - 4:.1f}" y="{TOP + 12}" text-anchor="end">{escape(mark_label)}</text>')
    return _svg(parts, f"histogram of {x_label}")
