"""The run report: one self-contained HTML page (inline CSS, no JS, no network) of every stage of a run.

`build_report` writes `<run>/report/index.html` and `<run>/report/assets/*` (PNG thumbnails and
strips, SVG plots) into a temp directory next to the target and swaps it in with renames, so a
killed report never leaves a half-written one. Each section has a stable id and says
"not run yet: <command>" when its stage has not run.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import polars as pl
from PIL import Image
from rich.table import Table

from janus_data import plots
from janus_data.errors import JanusError
from janus_data.report_data import RunData, load_run
from janus_data.rundir import CONFIG_FILE, first_latest_table
from janus_data.score import STATUSES, THRESHOLDS
from janus_data.storage import open_image

# Section id -> (heading, how a note names its stage: "GRPO: not run yet"), in page order.
SECTIONS = {
    "overview": ("Overview", "overview"),
    "scores": ("Judge scores", "scores"),
    "tasks": ("SFT tasks", "SFT data"),
    "samples": ("Samples", "samples"),
    "sft": ("SFT", "SFT"),
    "rl": ("GRPO", "GRPO"),
}
NOT_RUN = "not run yet"
TASKS = ("t2i", "judge", "regen")
THUMB = 128
STRIP_THUMB = 48
NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+%?$|^-$")


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    path: Path  # <out>/index.html
    sections: list[str]  # ids of the sections written, in order
    assets: list[Path]  # every file the HTML references
    notes: list[str] = field(default_factory=list)  # e.g. "GRPO: not run yet"


# ---------------------------------------------------------------- HTML pieces


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


# ---------------------------------------------------------------- sections


def overview(d: RunData, a: Assets) -> str:
    gens = d.images.group_by("generator").len().sort("generator").rows()
    steps = {k: f"{d.steps[k]:,} / {fmt(d.cfg(k, 'max_steps'))}" if d.steps[k] else "-" for k in d.steps}
    tiles = [
        ("prompts", fmt(d.prompts.height)),
        *((f"images · {g}", fmt(n)) for g, n in gens),
        ("scored images", fmt(d.ok.height)),
        ("SFT samples", fmt(d.samples.height) if d.samples is not None else "-"),
        ("SFT steps", steps["sft"]),
        ("GRPO steps", steps["rl"]),
    ]
    html = '<div class="tiles">'
    html += "".join(
        f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in tiles
    )
    by = dict(d.scores.group_by("status").len().rows())
    scored = d.scores["image_id"].n_unique()
    stages = [
        ("synth", "done", f"{d.images.height:,} images: " + ", ".join(f"{g} {n:,}" for g, n in gens), "data synth"),
        ("score", _status(scored, d.images.height), ", ".join(f"{by.get(s, 0):,} {s}" for s in STATUSES), "data score"),
        (
            "filter",
            _status(d.samples is not None, True),
            f"{fmt(d.samples.height if d.samples is not None else None)} samples",
            "data filter",
        ),
        ("SFT", _status(d.steps["sft"], d.cfg("sft", "max_steps")), f"step {d.steps['sft']:,}", "train sft"),
        ("GRPO", _status(d.steps["rl"], d.cfg("rl", "max_steps")), f"step {d.steps['rl']:,}", "train rl"),
    ]
    rows = [[s, st, out if st != "not run" else "-", d.command(c)] for s, st, out, c in stages]
    html += "</div><h3>Stages</h3>" + table(["stage", "status", "output", "command"], rows)
    return html + "<h3>Configuration</h3>" + config_summary(d)


def _status(done: int | bool, target: int | bool | None) -> str:
    if not done:
        return "not run"
    return "done" if not isinstance(target, (int, bool)) or done >= target else "partial"


CONFIG_KEYS = {
    "runtime": ("device", "dtype"),
    "synth": ("generators", "images_per_prompt", "image_size", "seed"),
    "score": ("backend", "model", "reason_tokens"),
    "filter": ("threshold", "mix", "t2i_per_prompt", "judge_per_prompt", "regen_per_prompt"),
    "sft": ("model", "max_steps", "batch_size", "grad_accum", "lr", "mix"),
    "rl": ("model", "max_steps", "prompts_per_step", "group_size", "lr", "beta", "clip_eps"),
}


def config_summary(d: RunData) -> str:
    if not d.config:
        return f'<p class="muted">no readable {CONFIG_FILE} in the run directory</p>'
    rows = []
    for section, keys in CONFIG_KEYS.items():
        values = {k: d.cfg(section, k) for k in keys if d.cfg(section, k) is not None}
        if section == "synth":
            values |= {f"{g}.model": m for g in ("janus", "flux") if (m := (d.cfg(section, g) or {}).get("model"))}
        text = " · ".join(f"{k} = {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items())
        rows.append(f"<tr><td>{esc(section)}</td><td>{esc(text)}</td></tr>")
    html = "<table><tbody>" + "".join(rows) + "</tbody></table>"
    return html + f"<details><summary>{CONFIG_FILE}</summary><pre>{esc(d.config_text)}</pre></details>"


def scores(d: RunData, a: Assets) -> str:
    if d.ok.height == 0:
        return not_run(d.command("data score"))
    by_gen = {g: d.ok.filter(pl.col("generator") == g)["score"] for g in sorted(set(d.ok["generator"]))}
    counts = dict(((g, s), n) for g, s, n in d.scores.group_by("generator", "status").len().rows())
    rows = []
    for g, s in by_gen.items():
        n = [fmt(x) for x in (s.len(), counts.get((g, "flagged"), 0), counts.get((g, "error"), 0))]
        rows.append([g, *n, fmt(s.mean(), 3), fmt(s.median(), 3), *(f"{(s >= t).mean():.1%}" for t in THRESHOLDS)])
    header = ["generator", "ok", "flagged", "error", "mean S", "median S", *(f"S ≥ {t}" for t in THRESHOLDS)]
    edges, ts = [i / 10 for i in range(11)], [i / 100 for i in range(101)]
    hist = {g: plots.histogram(s.to_list(), edges) for g, s in by_gen.items()}
    curves = {g: (ts, plots.pass_curve(s.to_list(), ts)) for g, s in by_gen.items()}
    t = d.cfg("filter", "threshold")
    vline = (float(t), f"filter threshold {t}") if isinstance(t, (int, float)) else None
    hist_svg = plots.bar_plot(edges, hist, "S per generator (10 bins)", "S", "images")
    pass_svg = plots.line_plot(
        curves, "Pass rate vs threshold", "threshold t", "share with S ≥ t", ylim=(0, 1), xlim=(0, 1), vline=vline
    )
    figs = a.svg("scores-hist", hist_svg, "histogram of S") + a.svg("scores-pass", pass_svg, "pass rate vs threshold")
    return table(header, rows) + f'<div class="plots">{figs}</div>'


def tasks(d: RunData, a: Assets) -> str:
    if d.samples is None:
        return not_run(d.command("data filter"))
    counts = dict(d.samples.group_by("task").len().rows())
    prompts = dict(d.samples.group_by("task").agg(pl.col("prompt_id").n_unique()).rows())
    state = d.sft_state or {}
    info, fcfg = state.get("tasks") or {}, state.get("filter") or {}
    mix = dict(zip(TASKS, fcfg.get("mix") or d.cfg("filter", "mix") or (), strict=False))
    total, mix_total = sum(counts.values()) or 1, sum(mix.values()) or 1
    rows = []
    for t in TASKS:
        n, shard = counts.get(t, 0), info.get(t) or {}
        share = [f"{n / total:.1%}", f"{mix[t] / mix_total:.1%}" if t in mix else "-", fmt(prompts.get(t, 0))]
        files = [fmt(len(shard["shard_files"])), f"{shard.get('bytes', 0) / 2**20:.2f}"] if shard else ["-", "-"]
        rows.append([t, fmt(n), *share, *files])
    html = table(["task", "samples", "share", "mix target", "prompts", "shards", "MiB"], rows)
    if stats := state.get("stats"):
        html += (
            f'<p class="muted">pool of {fmt(stats.get("pool"))} scored images · threshold {esc(fcfg.get("threshold", "-"))} · '
            f"{fmt(stats.get('prompts'))} prompts, {fmt(stats.get('prompts_without_sample'))} without a sample, "
            f"{fmt(stats.get('prompts_without_pair'))} without a regen pair</p>"
        )
    return html


def _open(d: RunData, row: dict, unreadable: list[str]) -> Image.Image:
    try:
        return open_image(d.run_dir, row["shard"], row["offset"], row["length"])
    except (JanusError, OSError):
        unreadable.append(row["image_id"])
        return Image.new("RGB", (64, 64), "#d1d9e0")


def _figure(a: Assets, label: str, row: dict, img: Image.Image) -> str:
    src = a.png(f"{row['prompt_id']}-{label}", plots.thumbnail(img, THUMB))
    reason = esc(row["reason"]) if row["reason"] else "(no reason given)"
    return (
        f'<figure class="{label}"><img src="{src}" width="{THUMB}" height="{THUMB}" alt="{label} candidate">'
        f"<figcaption><b>{label}</b> · S = {row['score']:.3f} · {esc(row['generator'])} #{row['index']}"
        f'<span class="reason">{reason}</span></figcaption></figure>'
    )


def samples(d: RunData, a: Assets, shown: int, notes: list[str]) -> str:
    if d.ok.height == 0:
        return not_run(d.command("data score"))
    cols = ["image_id", "generator", "index", "shard", "offset", "length"]
    scored = d.ok.select("image_id", "prompt_id", "score", "reason").join(d.images.select(cols), on="image_id")
    scored = scored.sort(["score", "image_id"], descending=[True, False])
    have = set(scored["prompt_id"])
    order = [(p, text) for p, text in d.prompts.select("prompt_id", "prompt").rows() if p in have]
    cards, unreadable = [], []
    for pid, text in order[:shown]:
        rows = scored.filter(pl.col("prompt_id") == pid).to_dicts()
        imgs = [_open(d, r, unreadable) for r in rows]
        figs = _figure(a, "best", rows[0], imgs[0]) + _figure(a, "worst", rows[-1], imgs[-1])
        strip = a.png(f"{pid}-strip", plots.strip(imgs, STRIP_THUMB))
        s = [r["score"] for r in rows]
        cards.append(
            f'<article class="prompt"><h3>{esc(text)}</h3><p class="muted"><code>{esc(pid)}</code> · '
            f"{len(rows)} scored candidates · mean S {sum(s) / len(s):.3f}</p><div class='pair'>{figs}</div>"
            f'<figure class="strip"><img src="{strip}" alt="all candidates by S"><figcaption class="muted">'
            f"all {len(rows)} candidates by S, best first ({s[0]:.3f} → {s[-1]:.3f})</figcaption></figure></article>"
        )
    if unreadable:
        notes.append(f"samples: {len(unreadable)} image(s) could not be read, e.g. {unreadable[0]}")
    more = f'<p class="muted">{len(order) - shown} more prompt(s) not shown</p>' if len(order) > shown else ""
    return f'<div class="cards">{"".join(cards)}</div>{more}'


def _series(rows: list[dict], keys: dict[str, str]) -> dict[str, tuple[list[float], list[float]]]:
    """{label: (steps, values)} for each metric key, skipping steps that did not log it."""
    out = {}
    for label, key in keys.items():
        pts = [(float(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            out[label] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def _first_latest(rows: list[dict], keys: dict[str, str]) -> str:
    return table(*first_latest_table(rows, keys, fmt))


def curves(d: RunData, a: Assets, kind: str, stage: str, spec: tuple, summary: dict[str, str]) -> str:
    """A first/latest table and one SVG line plot per (asset name, title, y label, {label: metric key})."""
    rows = d.metrics[kind]
    if not rows:
        return not_run(d.command(stage))
    figs = "".join(
        a.svg(name, plots.line_plot(series, title, "step", ylabel), title)
        for name, title, ylabel, keys in spec
        if (series := _series(rows, keys))
    )
    times = {k: [r[k] for r in rows if isinstance(r.get(k), (int, float))] for k in TIMES}
    total = sum(sum(v) for v in times.values())
    html = _first_latest(rows, summary)
    if total > 0:
        parts = " · ".join(
            f"{k[5:]} {sum(v) / len(v):.2f} s/step ({sum(v) / total:.0%})" for k, v in times.items() if v
        )
        html += f'<p class="muted">time per step: {esc(parts)}</p>'
    return html + f'<div class="plots">{figs}</div>'


LOSSES = {k: f"loss/{k}" for k in (*TASKS, "total")}
SFT_PLOTS = (
    ("sft-loss", "SFT loss per task", "loss", LOSSES),
    ("sft-lr", "Learning rate", "lr", {"lr": "lr"}),
    ("sft-grad", "Gradient norm (before clipping)", "norm", {"grad norm": "grad_norm"}),
)
RL_PLOTS = (
    ("rl-reward", "Rewards", "reward", {"r1": "reward/r1", "r2": "reward/r2", "r3": "reward/r3"}),
    ("rl-kl", "KL to reference", "KL (k3)", {"kl": "kl"}),
    (
        "rl-rates",
        "Aha and regeneration rates",
        "share of rollouts",
        {"aha rate": "aha_rate", "regen rate": "regen_rate"},
    ),
    ("rl-loss", "GRPO loss", "loss", {"loss": "loss"}),
)
RL_SUMMARY = {
    "reward (weighted)": "reward",
    "R1 = S(image 1)": "reward/r1",
    "R2 = self-check": "reward/r2",
    "R3 = S(final)": "reward/r3",
    "self-check acc": "selfcheck_acc",
    "regeneration rate": "regen_rate",
    "Aha rate (S2 > S1)": "aha_rate",
    "KL to reference": "kl",
    "clip fraction": "clip_frac",
}
TIMES = ("time/rollout", "time/judge", "time/update")


# ---------------------------------------------------------------- the page

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
"""


def render(d: RunData, bodies: dict[str, str], notes: list[str]) -> str:
    nav = "".join(f'<a href="#{s}">{SECTIONS[s][0]}</a>' for s in bodies)
    sections = "".join(f'<section id="{s}"><h2>{SECTIONS[s][0]}</h2>{body}</section>' for s, body in bodies.items())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = f'<p class="sub">{esc(" · ".join(notes))}</p>' if notes else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>janus report · {esc(d.run_dir.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>janus run report</h1><div class='sub'>run <code>{esc(d.run_dir)}</code> · "
        f"generated {stamp}</div>{note}</header><nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def _swap(tmp: Path, out: Path) -> None:
    """Replace `out` with the finished `tmp` directory by renames (a directory cannot be replaced in one)."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    """Temp and old directories a killed report left next to `out`."""
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for p in out.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def build_report(run_dir: Path, out_dir: Path | None = None, prompts_shown: int = 6) -> ReportResult:
    """Write the HTML report of a run to `out_dir` (default <run>/report) and return what was written."""
    run_dir = Path(run_dir)
    data, notes = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        assets = Assets(tmp)
        bodies = {
            "overview": overview(data, assets),
            "scores": scores(data, assets),
            "tasks": tasks(data, assets),
            "samples": samples(data, assets, prompts_shown, notes),
            "sft": curves(data, assets, "sft", "train sft", SFT_PLOTS, LOSSES),
            "rl": curves(data, assets, "rl", "train rl", RL_PLOTS, RL_SUMMARY),
        }
        notes[:0] = [f"{SECTIONS[s][1]}: {NOT_RUN}" for s in SECTIONS if 'class="notrun"' in bodies[s]]
        (tmp / "index.html").write_text(render(data, bodies, notes), encoding="utf-8")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportResult(out / "index.html", list(bodies), [out / n for n in assets.names], notes)


def report_table(result: ReportResult) -> Table:
    """A short terminal summary: each section and whether it has data."""
    t = Table(title="janus data report", title_justify="left")
    t.add_column("section")
    t.add_column("status")
    for s in result.sections:
        t.add_row(SECTIONS[s][0], NOT_RUN if f"{SECTIONS[s][1]}: {NOT_RUN}" in result.notes else "ok")
    t.caption = f"{len(result.assets)} assets · open {result.path}"
    t.caption_justify = "left"
    return t
