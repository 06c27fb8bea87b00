"""Latency distributions as small standalone SVG files (no plotting library needed).

One plot per figure: the empirical CDF of each system's samples, on a shared x axis, with the
figure's goal as a dashed line. Pure: returns the SVG text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from controller.lab.bench.results import Result

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 40, 50
COLORS = {"veil": "#1f77b4", "ovn": "#d62728", "plain": "#7f7f7f"}
FALLBACK = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _nice_max(value: float) -> float:
    """A round axis end at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def ecdf_points(samples: Sequence[float]) -> list[tuple[float, float]]:
    """Step points (value, fraction <= value) of the empirical CDF."""
    s = sorted(samples)
    n = len(s)
    pts: list[tuple[float, float]] = []
    for i, v in enumerate(s):
        pts.append((v, i / n))
        pts.append((v, (i + 1) / n))
    return pts


def cdf_plot(title: str, unit: str, results: Sequence[Result], goal: float | None = None) -> str:
    """An SVG ECDF plot of every result that has samples."""
    series = [r for r in results if r.error is None and r.samples]
    if not series:
        raise ValueError(f"{title}: nothing measured to plot")
    xmax = _nice_max(max([max(r.samples) for r in series] + ([goal] if goal else [])))
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(v: float) -> float:
        return LEFT + pw * v / xmax

    def y(f: float) -> float:
        return TOP + ph * (1 - f)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for i in range(6):  # grid first, so the axes and curves are drawn over it
        v, f = xmax * i / 5, i / 5
        out.append(f'<line x1="{LEFT}" y1="{y(f):.1f}" x2="{LEFT + pw}" y2="{y(f):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x(v):.1f}" y="{y(0) + 16}" text-anchor="middle">{v:g}</text>')
        out.append(f'<text x="{LEFT - 6}" y="{y(f) + 4:.1f}" text-anchor="end">{f:.1f}</text>')
    out.append(f'<line x1="{LEFT}" y1="{y(0)}" x2="{LEFT + pw}" y2="{y(0)}" stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{y(0)}" x2="{LEFT}" y2="{y(1)}" stroke="black"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(unit)}</text>')
    out.append(f'<text x="14" y="{TOP + ph / 2}" transform="rotate(-90 14 {TOP + ph / 2})" '
               'text-anchor="middle">fraction of samples</text>')
    if goal is not None:
        out.append(f'<line class="goal" x1="{x(goal):.1f}" y1="{y(0)}" x2="{x(goal):.1f}" y2="{y(1)}" '
                   'stroke="green" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x(goal) + 3:.1f}" y="{y(1) + 12}" fill="green">goal {goal:g}</text>')
    for i, r in enumerate(series):
        color = COLORS.get(r.system, FALLBACK[i % len(FALLBACK)])
        pts = " ".join(f"{x(v):.1f},{y(f):.1f}" for v, f in ecdf_points(r.samples))
        out.append(f'<polyline class="series" data-system="{escape(r.system)}" fill="none" '
                   f'stroke="{color}" stroke-width="2" points="{pts}"/>')
        s = r.summary
        assert s is not None
        label = f"{r.system}: median {s.median:.3g}, p95 {s.p95:.3g} (n={s.n})"
        out.append(f'<text x="{LEFT + pw - 4}" y="{y(0.25) - 16 * i:.1f}" text-anchor="end" '
                   f'fill="{color}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
