"""Small inline SVG charts for the report: line curves, a radar, horizontal bars.

Hand-written SVG keeps the report one self-contained file whose numbers stay text (testable,
searchable) and crisp at any zoom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#ad494a",
    "#637939",
    "#843c39",
    "#5254a3",
    "#8ca252",
)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 470,
    height: int = 280,
) -> str:
    """One polyline per series ``name: (x, y)``; axes from 0 to 1 in x, 0 to max(y, 1) in y."""
    left, right, top, bottom = 48, 170, 24, 36
    pw, ph = width - left - right, height - top - bottom
    ymax = max([1.0] + [max(y) for _, y in series.values() if len(y)])

    def px(x: float, y: float) -> str:
        return f"{left + x * pw:.1f},{top + ph - y / ymax * ph:.1f}"

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in (0, 0.5, 1):
        parts.append(
            f'<text x="{left + t * pw:.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{t:g}</text>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{top + ph - t * ph + 4:.1f}" class="tick" text-anchor="end">{t * ymax:.2g}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" class="tick" text-anchor="middle">{escape(xlabel)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + ph / 2}" class="tick" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2})">{escape(ylabel)}</text>'
    )
    for i, (name, (x, y)) in enumerate(series.items()):
        points = " ".join(px(a, b) for a, b in zip(x, y) if b is not None and math.isfinite(b))
        parts.append(
            f'<polyline data-series="{escape(name)}" points="{points}" fill="none" '
            f'stroke="{colour(i)}" stroke-width="1.5"/>'
        )
        ly = top + 10 + 13 * i
        parts.append(
            f'<line x1="{left + pw + 8}" x2="{left + pw + 22}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour(i)}" stroke-width="2"/><text x="{left + pw + 26}" y="{ly}" '
            f'class="tick">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def radar(scores: Mapping[str, float], *, title: str, colour_: str, size: int = 220) -> str:
    """A radar over ``axis: score in [0, 1]`` (1 = the best method on that axis); NaN → 0."""
    axes = list(scores)
    c, r = size / 2, size / 2 - 52
    parts = [
        f'<svg class="radar" width="{size}" height="{size + 8}" viewBox="0 0 {size} {size + 8}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{c}" y="12" class="title" text-anchor="middle">{escape(title)}</text>',
    ]

    def point(i: int, v: float) -> tuple[float, float]:
        a = -math.pi / 2 + 2 * math.pi * i / max(1, len(axes))
        return c + v * r * math.cos(a), c + 6 + v * r * math.sin(a)

    for ring in (0.5, 1.0):
        ring_pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, ring) for i in range(len(axes))))
        parts.append(f'<polygon points="{ring_pts}" fill="none" stroke="#ccc"/>')
    for i, name in enumerate(axes):
        x, y = point(i, 1.0)
        lx, ly = point(i, 1.22)
        parts.append(f'<line x1="{c}" y1="{c + 6}" x2="{x:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        words = name.split("_")  # long category names on one line per word
        top = ly + 3 - 5.5 * (len(words) - 1)
        lines = "".join(
            f'<tspan x="{lx:.1f}" dy="{0 if j == 0 else 11}">{escape(w)}</tspan>' for j, w in enumerate(words)
        )
        parts.append(f'<text x="{lx:.1f}" y="{top:.1f}" class="tick" text-anchor="middle">{lines}</text>')
    values = [0.0 if not math.isfinite(scores[a]) else scores[a] for a in axes]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i, v in enumerate(values)))
    data = ";".join(f"{a}={scores[a]:.4f}" for a in axes)
    parts.append(
        f'<polygon data-scores="{escape(data)}" points="{pts}" fill="{colour_}" '
        f'fill-opacity="0.35" stroke="{colour_}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bars(values: Mapping[str, float], *, title: str, unit: str, width: int = 520) -> str:
    """Horizontal bars on a log scale (times span orders of magnitude), value printed beside."""
    finite = {k: v for k, v in values.items() if v is not None and math.isfinite(v) and v > 0}
    row, left = 18, 150
    height = 24 + row * len(values)
    lo = math.log10(min(finite.values())) - 0.5 if finite else 0
    hi = math.log10(max(finite.values())) if finite else 1
    span = max(hi - lo, 1e-9)
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="14" class="title">{escape(title)}</text>',
    ]
    for i, (name, v) in enumerate(values.items()):
        y = 22 + row * i
        w = (math.log10(v) - lo) / span * (width - left - 90) if name in finite else 0
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" class="tick" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{colour(i)}"/>'
            f'<text x="{left + w + 4:.1f}" y="{y + 12}" class="tick">{_fmt(v)} {unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"
