"""The report's sections: one function per section, each returning its HTML body (assets written through `Assets`)."""

from __future__ import annotations

import polars as pl
from PIL import Image

from janus_data import plots
from janus_data.config_stages import GENERATORS
from janus_data.errors import JanusError
from janus_data.janus_format import ALL_TASKS
from janus_data.report_data import RunData
from janus_data.report_html import Assets, esc, fmt, not_run, table
from janus_data.rundir import CONFIG_FILE, first_latest_table
from janus_data.score import STATUSES, THRESHOLDS
from janus_data.select import TASKS
from janus_data.storage import open_image

THUMB = 128
STRIP_THUMB = 48


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
        (
            "synth",
            _status(d.images.height, True),
            f"{d.images.height:,} images: " + ", ".join(f"{g} {n:,}" for g, n in gens),
            "data synth",
        ),
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
            values |= {f"{g}.model": m for g in GENERATORS if (m := (d.cfg(section, g) or {}).get("model"))}
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


LOSSES = {k: f"loss/{k}" for k in (*ALL_TASKS, "total")}
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
