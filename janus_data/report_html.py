"""The report's HTML pieces: escaping, tables, number formatting, the asset writer and the page's CSS."""

from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path

from PIL import Image

NOT_RUN = "not run yet"
NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(%| pt)?$|^-$")  # " pt": percentage points


def esc(value: object) -> str:
    """User text as HTML: control characters dropped, markup escaped."""
    return escape("".join(ch for ch in str(value) if ch in "\t\n" or (ord(ch) >= 32 and ord(ch) != 127)))


def not_run(command: str) -> str:
    return f'<p class="notrun">{NOT_RUN}: <code>{esc(command)}</code></p>'


def table(header: list[str], rows: list[list[object]]) -> str:
    """A plain table; columns whose cells all read as numbers are right-aligned."""
    num = [bool(rows) and all(NUMBER.match(str(r[i])) for r in rows) for i in range(len(header))]
    cls = [' class="n"' if n else "" for n in num]
    head = "".join(f"<th{c}>{esc(h)}</th>" for h, c in zip(header, cls, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{esc(v)}</td>" for v, c in zip(r, cls, strict=True)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(v: object, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return f"{v:,}" if isinstance(v, int) else ("-" if v is None else str(v))


class Assets:
    """Writes files under <tmp>/assets and returns the relative paths the HTML uses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []
        (root / "assets").mkdir(parents=True)

    def _add(self, name: str) -> tuple[str, Path]:
        self.names.append(f"assets/{name}")
        return f"assets/{name}", self.root / "assets" / name

    def svg(self, name: str, text: str, alt: str) -> str:
        rel, path = self._add(f"{name}.svg")
        path.write_text(text, encoding="utf-8")
        return f'<img src="{rel}" alt="{esc(alt)}">'

    def png(self, name: str, image: Image.Image) -> str:
        rel, path = self._add(f"{name}.png")
        image.save(path, format="PNG", optimize=True)
        return rel


CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
header{padding:28px 40px 16px;border-bottom:1px solid var(--line)}
h1{font-size:22px;margin:0 0 4px;font-weight:600}
nav{position:sticky;top:0;z-index:1;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);padding:8px 40px}
nav a{color:var(--accent);text-decoration:none;margin-right:20px;font-size:13px}
main{max-width:1160px;padding:0 40px 56px}
section{padding-top:24px}
h2{font-size:18px;font-weight:600;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;font-weight:600;margin:18px 0 6px}
.muted,.sub{color:var(--muted);font-size:13px}
code,pre{font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code{background:var(--soft);padding:1px 5px;border-radius:4px}
pre{background:var(--soft);padding:12px;border-radius:6px;overflow:auto;max-height:420px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 14px;font-variant-numeric:tabular-nums}
th,td{padding:4px 12px;text-align:left;border-bottom:1px solid #eaeef2;vertical-align:top}
th{color:var(--muted);font-weight:600;border-bottom:1px solid var(--line)}
.n{text-align:right}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(128px,1fr));gap:10px;margin-bottom:8px}
.tile{border:1px solid var(--line);border-radius:6px;padding:10px 14px;background:var(--soft)}
.tile .v{font-size:20px;font-weight:600}
.tile .k{color:var(--muted);font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:14px;margin-top:8px}
.plots img{border:1px solid var(--line);border-radius:6px;max-width:100%;height:auto}
.notrun{border:1px dashed var(--line);border-radius:6px;padding:10px 14px;color:var(--muted);background:var(--soft)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:14px}
.prompt{border:1px solid var(--line);border-radius:6px;padding:2px 16px 10px}
.prompt h3{margin:12px 0 0}
.prompt p{margin:2px 0 6px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{margin:6px 0}
.pair img{display:block;image-rendering:pixelated;border-radius:4px;border:3px solid #1a7f37;margin-bottom:4px}
.pair .worst img{border-color:#cf222e}
figcaption{font-size:13px}
.reason{display:block;margin-top:4px;color:var(--muted);font-style:italic;overflow-wrap:anywhere}
.strip img{image-rendering:pixelated;max-width:100%;height:auto}
details summary{cursor:pointer;color:var(--accent);font-size:13px}
h4{font-size:13px;font-weight:600;margin:14px 0 6px}
.evalcards{display:grid;gap:14px}
.evalrow{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
.evallabel{width:84px;font-weight:600;font-size:13px;padding-top:4px;overflow-wrap:anywhere}
.evalrow figure{margin:0;width:112px}
.evalrow img{display:block;image-rendering:pixelated;border:1px solid var(--line);border-radius:4px}
.evalrow figcaption{font-size:12px;color:var(--muted)}
.editrow{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
.editrow figure{margin:0;width:124px}
.editrow img{display:block;image-rendering:pixelated;border:3px solid var(--line);border-radius:4px;margin-bottom:4px}
.editrow .source img{border-color:var(--muted)}
.editrow .best img{border-color:#1a7f37}
.editrow .worst img{border-color:#cf222e}
.editrow figcaption{font-size:12px;overflow-wrap:anywhere}
"""
