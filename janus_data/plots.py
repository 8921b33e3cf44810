"""Figures for the run report: self-contained SVG plots (line, grouped bar) and PNG thumbnail strips."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from PIL import Image

# Colour-blind-safe (Okabe-Ito based); fixed per series name so a generator or task keeps its colour.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F")
NAMED = {
    "flux": "#0072B2",
    "janus": "#E69F00",
    "t2i": "#0072B2",
    "judge": "#E69F00",
    "regen": "#009E73",
    "total": "#333333",
    "r1": "#0072B2",
    "r2": "#E69F00",
    "r3": "#009E73",
}
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
MARGIN = {"left": 62, "right": 16, "top": 40, "bottom": 44}


def colour(name: str, i: int) -> str:
    """The series colour: a fixed one for known names, else the i-th palette entry."""
    return NAMED.get(name, PALETTE[i % len(PALETTE)])


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def tick_label(v: float, ticks: Sequence[float]) -> str:
    """A tick value with the fewest decimals that show every tick of the axis exactly (e-notation when tiny)."""
    big = max((abs(t) for t in ticks), default=0.0)
    if big >= 1e5 or 0 < big < 1e-2:
        return "0" if v == 0 else f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    d = 0
    while d < 6 and any(abs(round(t, d) - t) > 1e-9 for t in ticks):
        d += 1
    return f"{v:.{d}f}"


def _span(values: Sequence[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        d = abs(lo) * 0.1 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


@dataclass
class _Frame:
    """The plot area and its data-to-pixel mapping."""

    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def left(self) -> float:
        return MARGIN["left"]

    @property
    def right(self) -> float:
        return self.width - MARGIN["right"]

    @property
    def top(self) -> float:
        return MARGIN["top"]

    @property
    def bottom(self) -> float:
        return self.height - MARGIN["bottom"]

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "middle", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="#333"{extra}>{escape(s)}</text>'
    )


def _axes(f: _Frame, title: str, xlabel: str, ylabel: str, xticks: list[float] | None) -> list[str]:
    """Title, horizontal grid with y ticks, x ticks (unless None: the caller labels categories), labels."""
    out = [_text(f.left, 16, title, 13, "start", ' font-weight="600"')]
    yticks = [t for t in nice_ticks(f.y0, f.y1) if f.y0 - 1e-12 <= t <= f.y1 + 1e-12]
    for t in yticks:
        y = f.py(t)
        out.append(f'<line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        out.append(_text(f.left - 6, y + 4, tick_label(t, yticks), anchor="end"))
    for t in xticks or []:
        x = f.px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.bottom}" y2="{f.bottom + 4}" stroke="#555"/>')
        out.append(_text(x, f.bottom + 16, tick_label(t, xticks)))
    out.append(f'<path d="M{f.left},{f.top} V{f.bottom} H{f.right}" fill="none" stroke="#555" stroke-width="1"/>')
    out.append(_text((f.left + f.right) / 2, f.height - 8, xlabel, 12))
    cy = (f.top + f.bottom) / 2
    out.append(_text(12, cy, ylabel, 12, extra=f' transform="rotate(-90 12 {cy:.1f})"'))
    return out


def _legend(f: _Frame, names: Sequence[str]) -> list[str]:
    """One row of swatches, right-aligned above the plot area."""
    if len(names) < 2:
        return []
    widths = [22 + 6.5 * len(n) for n in names]
    x = f.right - sum(widths)
    out = []
    for i, (name, w) in enumerate(zip(names, widths, strict=True)):
        c = colour(name, i)
        out.append(f'<rect x="{x:.1f}" y="24" width="12" height="4" fill="{c}"/>')
        out.append(_text(x + 16, 30, name, 11, "start"))
        x += w
    return out


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" font-family="{escape(FONT)}">'
        f'<rect width="{width}" height="{height}" fill="#fff"/>' + "".join(body) + "</svg>\n"
    )


def _no_data(width: int, height: int, title: str) -> str:
    body = [
        _text(MARGIN["left"], 16, title, 13, "start", ' font-weight="600"'),
        _text(width / 2, height / 2, "no data"),
    ]
    return _svg(width, height, title, body)


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 520,
    height: int = 280,
    ylim: tuple[float, float] | None = None,
    xlim: tuple[float, float] | None = None,
    vline: tuple[float, str] | None = None,
) -> str:
    """Lines (x, y) per named series; non-finite points are dropped; markers when a series is short."""
    clean = {
        name: [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        for name, (xs, ys) in series.items()
    }
    points = [p for pts in clean.values() for p in pts]
    if not points:
        return _no_data(width, height, title)
    f = _Frame(width, height, *(xlim or _span([p[0] for p in points], 0.0)), *(ylim or _span([p[1] for p in points])))
    if f.x1 - f.x0 < 1e-12:
        f.x0, f.x1 = _span([f.x0])
    body = _axes(f, title, xlabel, ylabel, [t for t in nice_ticks(f.x0, f.x1) if f.x0 <= t <= f.x1])
    if vline is not None and f.x0 <= vline[0] <= f.x1:
        x = f.px(vline[0])
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" y2="{f.bottom}" stroke="#999" stroke-dasharray="4 3"/>'
        )
        body.append(_text(x + 4, f.top + 12, vline[1], 10, "start"))
    for i, (name, pts) in enumerate(clean.items()):
        if not pts:
            continue
        c = colour(name, i)
        d = " ".join(f"{'M' if j == 0 else 'L'}{f.px(x):.1f},{f.py(y):.1f}" for j, (x, y) in enumerate(pts))
        sw = 2.2 if name == "total" else 1.6
        body.append(f'<path d="{d}" fill="none" stroke="{c}" stroke-width="{sw}" stroke-linejoin="round"/>')
        if len(pts) <= 30:
            body += [f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="2.5" fill="{c}"/>' for x, y in pts]
    body += _legend(f, [n for n, pts in clean.items() if pts])
    return _svg(width, height, title, body)


def bar_plot(
    edges: Sequence[float],
    series: dict[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 520,
    height: int = 280,
) -> str:
    """Grouped bars over bins [edges[i], edges[i+1]) (a histogram per named series)."""
    if not series or not any(any(v) for v in series.values()):
        return _no_data(width, height, title)
    top = max(max(v) for v in series.values())
    f = _Frame(width, height, edges[0], edges[-1], 0.0, _span([0.0, top], 0.0)[1] * 1.08)
    body = _axes(f, title, xlabel, ylabel, list(edges))
    n = len(series)
    for i, (name, counts) in enumerate(series.items()):
        c = colour(name, i)
        for b, v in enumerate(counts):
            x0, x1 = f.px(edges[b]), f.px(edges[b + 1])
            w = (x1 - x0 - 4) / n
            x = x0 + 2 + i * w
            y = f.py(v)
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w - 1, 1):.1f}" height="{f.bottom - y:.1f}" fill="{c}">'
                f"<title>{escape(name)}: {v:g}</title></rect>"
            )
    body += _legend(f, list(series))
    return _svg(width, height, title, body)


def category_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.0),
    width: int = 520,
    height: int = 280,
) -> str:
    """Grouped bars: one group per category (e.g. a checkpoint), one bar per named series; None draws no bar."""
    if not groups or not any(v is not None for vs in series.values() for v in vs):
        return _no_data(width, height, title)
    f = _Frame(width, height, 0.0, float(len(groups)), *ylim)
    body = _axes(f, title, "", ylabel, None)
    n = len(series)
    for g, name in enumerate(groups):
        body.append(_text(f.px(g + 0.5), f.bottom + 16, name))
        x0, x1 = f.px(g + 0.15), f.px(g + 0.85)
        for i, (label, values) in enumerate(series.items()):
            v = values[g]
            if v is None or not math.isfinite(v):
                continue
            w = (x1 - x0) / n
            y = f.py(min(max(v, ylim[0]), ylim[1]))
            body.append(
                f'<rect x="{x0 + i * w:.1f}" y="{y:.1f}" width="{max(w - 2, 1):.1f}" height="{f.bottom - y:.1f}" '
                f'fill="{colour(label, i)}"><title>{escape(name)} · {escape(label)}: {v:.3g}</title></rect>'
            )
    body += _legend(f, list(series))
    return _svg(width, height, title, body)


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); values outside fall into the first or last bin."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = sum(v >= e for e in edges[1:-1])
        counts[i] += 1
    return counts


def pass_curve(values: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Share of `values` at or above each threshold."""
    n = len(values) or 1
    return [sum(v >= t for v in values) / n for t in thresholds]


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Fit in size x size: small images upscale crisply (nearest), large ones downscale (Lanczos)."""
    img = img.convert("RGB")
    scale = size / max(img.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def strip(images: Sequence[Image.Image], size: int, gap: int = 2) -> Image.Image:
    """One row of size x size thumbnails on white, `gap` pixels apart."""
    out = Image.new("RGB", (max(1, len(images) * (size + gap) - gap), size), "white")
    for i, img in enumerate(images):
        out.paste(thumbnail(img, size), (i * (size + gap), 0))
    return out
