"""Evaluation results on disk: where `janus_eval` writes them, and how the report and the tables read them.

An evaluation output directory OUT holds `images/`, `manifests/<kind>/part-*.parquet` and the
summary files below. Under a run, OUT is `<run>/eval/<geneval|judge>/<checkpoint label>/`.
The report reads these files itself (janus_data never imports janus_eval); the terminal tables
of `janus_eval.tables` share the side-by-side reading here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

EVAL_DIR = "eval"  # <run>/eval/
GENEVAL = "geneval"  # <run>/eval/geneval/<label>/
JUDGE = "judge"  # <run>/eval/judge/<label>/
EVAL_KINDS = (GENEVAL, JUDGE)

IMAGES_DIR = "images"  # OUT/images/<gen_id>.png
GENERATIONS_KIND = "generations"  # OUT/manifests/generations: one row per image drawn
GENEVAL_KIND = "geneval"  # OUT/manifests/geneval: GenEval's verdict per image
JUDGE_EVAL_KIND = "judge_eval"  # OUT/manifests/judge_eval: the judge's S per image

GENEVAL_SUMMARY = "geneval_summary.parquet"  # label, image, tag, n_images, accuracy
GENEVAL_INTROSPECT = "geneval_introspect.parquet"  # label, first/final overall, aha_gain, rates, agreement
JUDGE_SUMMARY = "judge_eval_summary.parquet"  # label, image, tag, n_images, mean_score, pass_rate, threshold
SUMMARIES = {GENEVAL: GENEVAL_SUMMARY, JUDGE: JUDGE_SUMMARY}

LABEL_ORDER = ("base", "sft", "rl")  # the run's checkpoints in training order; other labels follow by name


def eval_root(run_dir: Path, kind: str) -> Path:
    """`<run>/eval/<kind>`: one OUT directory per checkpoint label below it."""
    return Path(run_dir) / EVAL_DIR / kind


def label_dirs(run_dir: Path, kind: str, file: str) -> list[Path]:
    """The OUT directories of `kind` under a run that hold `file`, sorted by name."""
    root = eval_root(run_dir, kind)
    return sorted(p for p in root.iterdir() if (p / file).is_file()) if root.is_dir() else []


def sort_labels(labels: Sequence[str]) -> list[str]:
    """base, sft, rl first (training order), then the other labels by name, each once.

    >>> sort_labels(["rl", "x/step-9", "base", "rl"])
    ['base', 'rl', 'x/step-9']
    """
    unique = set(labels)
    return [x for x in LABEL_ORDER if x in unique] + sorted(unique - set(LABEL_ORDER))


@dataclass(frozen=True)
class SideBySide:
    """A metric per (label, tag): the labels are columns, the tags rows."""

    labels: list[str]
    tags: list[str]
    values: dict[tuple[str, str], float | None]

    def delta(self, tag: str) -> float | None:
        """The last label's value minus the first's (None unless both exist and there are two labels)."""
        if len(self.labels) < 2:
            return None
        a, b = self.values.get((self.labels[0], tag)), self.values.get((self.labels[-1], tag))
        return b - a if a is not None and b is not None else None


def ordered(seen: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """`order`'s entries that occur in `seen` first, then the rest of `seen` in first-seen order."""
    unique = list(dict.fromkeys(seen))
    first = [t for t in order or () if t in unique]
    return first + [t for t in unique if t not in first]


def filtered(frame: pl.DataFrame, where: Mapping[str, object] | None) -> pl.DataFrame:
    """The rows whose columns equal the given values; a column the frame lacks filters nothing."""
    import polars as pl

    for column, value in (where or {}).items():
        if column in frame.columns:
            frame = frame.filter(pl.col(column) == value)
    return frame


def side_by_side(
    summary_frames: Sequence[pl.DataFrame] | pl.DataFrame,
    metric: str,
    *,
    where: Mapping[str, object] | None = None,
    labels: Sequence[str] | None = None,
    tag_order: Sequence[str] | None = None,
) -> SideBySide:
    """Stack summary frames (label, tag, `metric`, ...), keep the `where` rows and lay labels side by side.

    Labels: `labels` (those present) else first seen; tags: `tag_order`'s first, then first seen.
    """
    import polars as pl

    frames = [summary_frames] if isinstance(summary_frames, pl.DataFrame) else list(summary_frames)
    frames = [filtered(f, where) for f in frames if f.height]
    if not frames:
        return SideBySide([], [], {})
    frame = pl.concat(frames, how="diagonal_relaxed")
    seen = frame["label"].to_list()
    cols = list(dict.fromkeys(seen)) if labels is None else [x for x in labels if x in set(seen)]
    values = {(r["label"], r["tag"]): r[metric] for r in frame.iter_rows(named=True)}
    return SideBySide(cols, ordered(frame["tag"].to_list(), tag_order), values)


def fmt_metric(value: object, percent: bool = False, digits: int = 3) -> str:
    """A metric cell: '-' when missing, a percentage, a fixed number of digits, or a count.

    >>> fmt_metric(0.8125, percent=True), fmt_metric(0.8125), fmt_metric(None), fmt_metric(float("nan")), fmt_metric(1200)
    ('81.2%', '0.812', '-', '-', '1,200')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) and not percent:
        return f"{value:,}"
    if isinstance(value, (int, float)):
        return f"{value:.{max(digits - 2, 0)}%}" if percent else f"{value:.{digits}f}"
    return str(value)


def fmt_delta(value: float | None, percent: bool = False, digits: int = 3) -> str:
    """A signed difference: '+4.0 pt' (percentage points) or '+0.040'; '-' when missing.

    >>> fmt_delta(0.04, percent=True), fmt_delta(-0.0312), fmt_delta(None)
    ('+4.0 pt', '-0.031', '-')
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:+.{max(digits - 2, 0)}f} pt" if percent else f"{value:+.{digits}f}"
