"""The report's evaluation section: the run's checkpoints side by side on GenEval and on the judge's scores.

Reads what `janus eval geneval|judge` wrote under `<run>/eval/` (layout: janus_data.eval_results):
each label's summary Parquet, GenEval's introspection file, and the generations manifests for
the image grid (the same prompts, each checkpoint's images in a row). The section exists only
when some evaluation result does; an unreadable file becomes a note, never a failed report.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image

from janus_data import plots
from janus_data.errors import one_line
from janus_data.eval_results import (
    GENERATIONS_KIND,
    GENEVAL,
    GENEVAL_INTROSPECT,
    GENEVAL_KIND,
    JUDGE,
    JUDGE_EVAL_KIND,
    SUMMARIES,
    eval_root,
    fmt_delta,
    fmt_metric,
    label_dirs,
    side_by_side,
    sort_labels,
)
from janus_data.manifest import read_manifest
from janus_data.report_html import Assets, esc, table

THUMB = 112
IMAGES_SHOWN = 4  # images per checkpoint and prompt in the grid
KIND_NAMES = {GENEVAL: "GenEval", JUDGE: "Judge-based scores"}
VERDICTS = {GENEVAL: (GENEVAL_KIND, ("gen_id", "correct")), JUDGE: (JUDGE_EVAL_KIND, ("gen_id", "score", "passed"))}
INTROSPECT_COLUMNS = {
    "first image": "first_overall",
    "final image": "final_overall",
    "Aha gain": "aha_gain",
    "regeneration rate": "regeneration_rate",
    "self-check agreement": "agreement",
}


@dataclass
class EvalResults:
    """Every evaluation result under a run: summaries per kind, introspection, and each label's OUT."""

    summaries: dict[str, pl.DataFrame] = field(default_factory=dict)  # kind -> every label's summary rows
    introspect: pl.DataFrame | None = None
    dirs: dict[str, dict[str, Path]] = field(default_factory=dict)  # kind -> {label: OUT}

    def labels(self, kind: str) -> list[str]:
        return sort_labels(list(self.dirs.get(kind, {})))


def _read(path: Path, notes: list[str]) -> pl.DataFrame | None:
    try:
        return pl.read_parquet(path)
    except Exception as err:  # a torn or foreign file: say so, keep the report
        notes.append(f"evaluation: cannot read {path.name} of {path.parent.name}: {one_line(err, 120)}")
        return None


def _labelled(df: pl.DataFrame, out: Path) -> pl.DataFrame:
    """The file's own label column, else the directory's name."""
    return df if "label" in df.columns else df.with_columns(label=pl.lit(out.name))


def load_eval(run_dir: Path, notes: list[str]) -> EvalResults | None:
    """Read every evaluation summary under the run; None when there is none."""
    found = EvalResults()
    introspect = []
    for kind, file in SUMMARIES.items():
        frames = []
        for out in label_dirs(run_dir, kind, file):
            df = _read(out / file, notes)
            if df is None or not df.height:
                continue
            df = _labelled(df, out)
            frames.append(df)
            found.dirs.setdefault(kind, {})[df["label"][0]] = out
            extra = _read(out / GENEVAL_INTROSPECT, notes) if (out / GENEVAL_INTROSPECT).is_file() else None
            if kind == GENEVAL and extra is not None and extra.height:
                introspect.append(_labelled(extra, out))
        if frames:
            found.summaries[kind] = pl.concat(frames, how="diagonal_relaxed")
    if introspect:
        found.introspect = pl.concat(introspect, how="diagonal_relaxed")
    return found if found.summaries else None


def _side_table(frame: pl.DataFrame, metric: str, labels: list[str], percent: bool, tag_order=None) -> str:
    """Tags as rows, checkpoints as columns, and the last minus the first when there are two or more."""
    view = side_by_side(frame, metric, where={"image": "final"}, labels=labels, tag_order=tag_order)
    header = ["tag", *view.labels] + ([f"{view.labels[-1]} − {view.labels[0]}"] if len(view.labels) > 1 else [])
    rows = []
    for tag in view.tags:
        cells = [fmt_metric(view.values.get((label, tag)), percent) for label in view.labels]
        rows.append([tag, *cells, *([fmt_delta(view.delta(tag), percent)] if len(view.labels) > 1 else [])])
    return table(header, rows)


def _counts(frame: pl.DataFrame, labels: list[str], all_tag: str) -> str:
    final = frame.filter(pl.col("tag") == all_tag)
    if "image" in final.columns:
        final = final.filter(pl.col("image") == "final")
    n = dict(zip(final["label"], final["n_images"], strict=True)) if "n_images" in final.columns else {}
    return " · ".join(f"{esc(label)}: {n.get(label, 0):,} images" for label in labels)


def _geneval(ev: EvalResults, a: Assets) -> str:
    frame, labels = ev.summaries[GENEVAL], ev.labels(GENEVAL)
    tags = [t for t in frame["tag"].unique(maintain_order=True).to_list() if t != "overall"] + ["overall"]
    html = f'<p class="muted">accuracy of the final image of each chain · {_counts(frame, labels, "overall")}</p>'
    html += _side_table(frame, "accuracy", labels, True, tags)
    if ev.introspect is not None:
        html += _introspection(ev.introspect, labels, a)
    return html


def _introspection(df: pl.DataFrame, labels: list[str], a: Assets) -> str:
    rows_by = {r["label"]: r for r in df.iter_rows(named=True)}
    labels = [x for x in labels if x in rows_by] + sort_labels([x for x in rows_by if x not in labels])
    header = ["checkpoint", *INTROSPECT_COLUMNS, "images evaluated"]
    rows = []
    for label in labels:
        r = rows_by[label]
        cells = [
            fmt_delta(r.get(c), True) if c == "aha_gain" else fmt_metric(r.get(c), True)
            for c in INTROSPECT_COLUMNS.values()
        ]
        rows.append([label, *cells, fmt_metric(r.get("n_evaluated"))])

    def series(cols: dict[str, str]) -> dict[str, list[float | None]]:
        return {name: [rows_by[x].get(c) for x in labels] for name, c in cols.items()}

    aha = plots.category_bars(
        labels,
        series({"first image": "first_overall", "final image": "final_overall"}),
        "GenEval overall: first vs final image",
        "accuracy",
    )
    own = plots.category_bars(
        labels,
        series({"regeneration rate": "regeneration_rate", "agreement": "agreement"}),
        "Self-evaluation: redraws and agreement with GenEval",
        "share of images",
    )
    figs = a.svg("eval-aha", aha, "GenEval first vs final image") + a.svg("eval-selfcheck", own, "self-evaluation")
    return "<h4>With introspection</h4>" + table(header, rows) + f'<div class="plots">{figs}</div>'


def _judge(ev: EvalResults) -> str:
    frame, labels = ev.summaries[JUDGE], ev.labels(JUDGE)
    thresholds = frame["threshold"].drop_nulls().unique().to_list() if "threshold" in frame.columns else []
    bar = f"S ≥ {thresholds[0]:g}" if len(thresholds) == 1 else "S ≥ filter.threshold"
    html = f'<p class="muted">the final image of each chain · {_counts(frame, labels, "all")}</p>'
    html += "<h4>Mean S</h4>" + _side_table(frame, "mean_score", labels, False)
    return html + f"<h4>Pass rate ({esc(bar)})</h4>" + _side_table(frame, "pass_rate", labels, True)


# ---------------------------------------------------------------- the same prompts, side by side

SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def asset_name(*parts: str) -> str:
    """A file name from free text (labels, ids): only [A-Za-z0-9_-], plus a hash so two texts never collide."""
    text = "|".join(parts)
    return f"{SAFE.sub('_', '-'.join(parts))[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _final_images(out: Path, kind: str, notes: list[str]) -> pl.DataFrame | None:
    """OUT's final images (sample < IMAGES_SHOWN) with their verdict, in manifest order."""
    try:
        gens = read_manifest(out, GENERATIONS_KIND)
        if not gens.height:
            return None
        gens = gens.filter(pl.col("final") & (pl.col("sample") < IMAGES_SHOWN)).with_row_index("order")
        verdict_kind, cols = VERDICTS[kind]
        verdicts = read_manifest(out, verdict_kind)
        if verdicts.height and set(cols) <= set(verdicts.columns):
            gens = gens.join(verdicts.select(cols).unique("gen_id"), on="gen_id", how="left")
        return gens.sort("order")
    except Exception as err:
        notes.append(f"evaluation: cannot read the images of {out.name}: {one_line(err, 120)}")
        return None


def _thumb(out: Path, row: dict, unreadable: list[str]) -> Image.Image:
    rel = Path(row.get("image_path") or "")
    try:
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OSError(f"image_path {rel} is outside {out}")
        with Image.open(out / rel) as img:
            return plots.thumbnail(img, THUMB)
    except Exception:
        unreadable.append(str(row.get("gen_id")))
        return Image.new("RGB", (THUMB, THUMB), "#d1d9e0")


def _caption(kind: str, row: dict) -> str:
    if kind == GENEVAL:
        c = row.get("correct")
        verdict = "not evaluated" if c is None else ("✓ correct" if c else "✗ wrong")
    else:
        s = row.get("score")
        verdict = "not scored" if s is None else f"S {s:.3f}" + (" ✓" if row.get("passed") else "")
    extra = f" · redraw {row['round']}" if row.get("round") else ""
    said = f" · said {row['answer']}" if row.get("answer") else ""
    return esc(verdict + extra + said)


def gallery(ev: EvalResults, kind: str, a: Assets, shown: int, notes: list[str]) -> str:
    """For the first `shown` prompts every checkpoint drew: a row of final images per checkpoint."""
    images = {label: _final_images(out, kind, notes) for label, out in ev.dirs.get(kind, {}).items()}
    images = {label: df for label, df in images.items() if df is not None}
    labels = [x for x in ev.labels(kind) if x in images]
    if not labels:
        return ""
    common = set.intersection(*(set(images[x]["prompt_id"]) for x in labels))
    prompts = [p for p in images[labels[0]]["prompt_id"].unique(maintain_order=True) if p in common][:shown]
    cards, unreadable = [], []
    for pid in prompts:
        first = images[labels[0]].filter(pl.col("prompt_id") == pid).row(0, named=True)
        tags = ", ".join(first.get("tags") or [])
        rows = []
        for label in labels:
            figs = []
            for row in images[label].filter(pl.col("prompt_id") == pid).sort("sample").iter_rows(named=True):
                src = a.png(
                    asset_name("eval", kind, label, row["gen_id"]), _thumb(ev.dirs[kind][label], row, unreadable)
                )
                figs.append(
                    f'<figure><img src="{src}" width="{THUMB}" height="{THUMB}" alt="{esc(label)} image {row["sample"]}">'
                    f"<figcaption>{_caption(kind, row)}</figcaption></figure>"
                )
            rows.append(f'<div class="evalrow"><div class="evallabel">{esc(label)}</div>{"".join(figs)}</div>')
        meta = f"<code>{esc(pid)}</code>" + (f" · {esc(tags)}" if tags else "")
        cards.append(
            f'<article class="prompt"><h4>{esc(first["prompt"])}</h4><p class="muted">{meta}</p>{"".join(rows)}</article>'
        )
    if unreadable:
        notes.append(f"evaluation: {len(unreadable)} image(s) could not be read, e.g. {unreadable[0]}")
    more = len(common) - len(prompts)
    tail = f'<p class="muted">{more} more prompt(s) not shown</p>' if more > 0 else ""
    head = f"<h4>{KIND_NAMES[kind]}: the same prompts, side by side</h4>"
    return head + f'<div class="evalcards">{"".join(cards)}</div>' + tail


def evaluation(run_dir: Path, a: Assets, shown: int, notes: list[str]) -> str | None:
    """The evaluation section's body, or None when the run has no evaluation result."""
    ev = load_eval(run_dir, notes)
    if ev is None:
        return None
    parts = []
    for kind, render in ((GENEVAL, lambda: _geneval(ev, a)), (JUDGE, lambda: _judge(ev))):
        if kind in ev.summaries:
            where = eval_root(run_dir, kind).relative_to(run_dir)
            parts.append(f"<h3>{KIND_NAMES[kind]}</h3><p class='muted'>from <code>{esc(where)}</code></p>{render()}")
            parts.append(gallery(ev, kind, a, shown, notes))
    return "".join(parts)
