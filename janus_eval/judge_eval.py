"""`janus eval judge`: a prompt set drawn by each checkpoint and scored by the run's judge (S and a reason).

Any prompt file the loader reads (DPG-Bench, T2I-CompBench, the user's own; tags kept) is drawn
by `janus_eval.generate.run_generate` into OUT = `<out_root>/<label>/`, then every image of OUT's
generations manifest is judged exactly as `janus data score` judges synth images (the same
judge backends, batching, background reads and error rows: `janus_data.score`'s pieces).

Resumable: each batch lands as one manifest part (OUT/manifests/judge_eval); a rerun judges only
the images without a row (and, with score.retry_errors, those left with an error row). An image
passes when S >= filter.threshold, the run's own bar for a good image. OUT/judge_eval_summary.parquet
holds, per checkpoint label, image ("first": each chain's first image; "final": its last, the
checkpoint's answer to the prompt; equal without --introspect) and tag ("all" + each tag of the
file): n_images, mean S and pass rate over the images the judge could score.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from janus_data.config import JanusRunConfig
from janus_data.errors import ConfigError, one_line
from janus_data.eval_results import JUDGE_EVAL_KIND, JUDGE_SUMMARY
from janus_data.judge.factory import check_judge, make_judge
from janus_data.judge.types import Judge, JudgeResult
from janus_data.manifest import (
    clean_temp_files,
    ensure_writable,
    manifest_dir,
    part_files,
    scan_manifest,
    write_parquet_atomic,
)
from janus_data.progress import stage_progress
from janus_data.prompts import check_prompt_file
from janus_data.score import (
    LoadedImage,
    batches,
    decoded,
    drop_rows,
    judge_readable,
    part_path,
    prefetched,
    result_status,
)
from janus_eval.gen_manifest import require_generations

ALL_TAGS = "all"  # the summary row over every image, whatever its tags
IMAGES = ("first", "final")  # the summary's `image` column
JUDGE_EVAL_SCHEMA: dict[str, pl.DataType] = {
    "gen_id": pl.Utf8,
    "label": pl.Utf8,
    "prompt_id": pl.Utf8,
    "tags": pl.List(pl.Utf8),
    "sample": pl.Int32,
    "round": pl.Int32,
    "final": pl.Boolean,
    "score": pl.Float64,  # S; null when the judge could not score the image (status flagged or error)
    "reason": pl.Utf8,
    "passed": pl.Boolean,  # S >= filter.threshold; null without S
    "status": pl.Utf8,  # ok | flagged | error (janus_data.score.STATUSES)
    "error": pl.Utf8,
    "judge": pl.Utf8,
}
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.Utf8,
    "image": pl.Utf8,
    "tag": pl.Utf8,
    "n_images": pl.Int64,
    "mean_score": pl.Float64,
    "pass_rate": pl.Float64,
    "threshold": pl.Float64,
}
GEN_COLUMNS = ("gen_id", "label", "prompt_id", "prompt", "tags", "sample", "round", "final", "image_path")


@dataclass
class JudgeEvalResult:
    """What scoring one OUT directory did, and its summary afterwards."""

    out: Path
    label: str
    judge: str | None = None  # the judge's id when this call judged anything
    planned: int = 0  # images in the generations manifest
    existing: int = 0  # already had a row
    written: int = 0  # rows written now
    retried: int = 0  # error rows of earlier runs judged again
    errors: int = 0
    flagged: int = 0
    seconds: float = 0.0
    judge_seconds: float = 0.0
    summary: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SUMMARY_SCHEMA))


@dataclass
class JudgeEvalRun:
    """`run_judge_eval`'s results: one per checkpoint, in the order given."""

    out_root: Path
    threshold: float
    results: list[JudgeEvalResult]

    @property
    def summary(self) -> pl.DataFrame:
        """Every label's summary rows, in checkpoint order."""
        frames = [r.summary for r in self.results]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=SUMMARY_SCHEMA)


class LazyJudge:
    """The configured judge, built on its first use: a rerun with nothing left to judge loads none."""

    def __init__(self, cfg: JanusRunConfig) -> None:
        self.cfg = cfg
        self._judge: Judge | None = None

    def get(self) -> Judge:
        if self._judge is None:
            self._judge = make_judge(self.cfg)
        return self._judge

    @property
    def model_id(self) -> str:
        return self.get().model_id

    def score(self, prompts: list[str], images: list) -> list[JudgeResult]:
        return self.get().score(prompts, images)


# ---------------------------------------------------------------- one OUT directory


def read_generations(out: Path) -> pl.DataFrame:
    """OUT's generations manifest (the columns this evaluation needs), one row per image, or RunDirError."""
    return require_generations(out, GEN_COLUMNS)


def load_generated(out: Path, row: dict) -> LoadedImage:
    """One drawn image's bytes (OUT/image_path, which must stay inside OUT), or why it cannot be judged."""
    rel = Path(row["image_path"] or "")
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return LoadedImage(None, f"unreadable: image_path {str(rel)!r} is not a path inside {out}")
    try:
        data = (out / rel).read_bytes()
    except OSError as err:
        return LoadedImage(None, f"unreadable: {one_line(err)}")
    return decoded(data)


def _load_batch(out: Path, batch: pl.DataFrame) -> list[LoadedImage]:
    return [load_generated(out, row) for row in batch.iter_rows(named=True)]


def _stale_errors(out: Path, ids: set[str]) -> dict[Path, set[str]]:
    """The error rows among `ids`, by part: {part: gen_ids}."""
    found = {}
    for part in part_files(out, JUDGE_EVAL_KIND):
        rows = pl.read_parquet(part, columns=["gen_id", "status"]).filter(pl.col("status") == "error")
        if stale := set(rows["gen_id"]) & ids:
            found[part] = stale
    return found


def eval_rows(
    batch: pl.DataFrame, loaded: list[LoadedImage], judged: dict[int, JudgeResult], judge_id: str, threshold: float
) -> pl.DataFrame:
    """The manifest rows of one batch: one per image, in batch order."""
    rows: dict[str, list] = {k: [] for k in JUDGE_EVAL_SCHEMA}
    for i, (gen, item) in enumerate(zip(batch.iter_rows(named=True), loaded, strict=True)):
        result = judged.get(i) or JudgeResult(None, None, "", False, error=item.error)
        for key in ("gen_id", "label", "prompt_id", "tags", "sample", "round", "final"):
            rows[key].append(gen[key])
        rows["score"].append(result.score)
        rows["reason"].append(result.reason)
        rows["passed"].append(None if result.score is None else result.score >= threshold)
        rows["status"].append(result_status(result))
        rows["error"].append(result.error)
        rows["judge"].append(judge_id)
    return pl.DataFrame(rows, schema=JUDGE_EVAL_SCHEMA)


def judge_summary(rows: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Per label, image (first | final) and tag ("all" + each tag): n_images, mean S, pass rate (S >= threshold).

    Over the images with an S; flagged and error rows are left out (the stage's table counts them).
    """
    scored = rows.filter(pl.col("score").is_not_null())
    views = pl.concat(
        [
            scored.filter(pl.col("round") == 0).with_columns(image=pl.lit("first")),
            scored.filter(pl.col("final")).with_columns(image=pl.lit("final")),
        ]
    )
    tagged = views.explode("tags").filter(pl.col("tags").is_not_null()).rename({"tags": "tag"})
    every = pl.concat([views.drop("tags").with_columns(tag=pl.lit(ALL_TAGS)), tagged], how="diagonal_relaxed")
    s = pl.col("score")
    summary = every.group_by("label", "image", "tag").agg(
        pl.len().cast(pl.Int64).alias("n_images"),
        s.mean().alias("mean_score"),
        (s >= threshold).mean().alias("pass_rate"),
    )
    summary = summary.sort(pl.col("label"), pl.col("image") != IMAGES[0], pl.col("tag") != ALL_TAGS, pl.col("tag"))
    return summary.with_columns(threshold=pl.lit(float(threshold))).select(list(SUMMARY_SCHEMA)).cast(SUMMARY_SCHEMA)


def score_generations(
    out: Path, cfg: JanusRunConfig, *, judge: Judge | None = None, progress: bool | None = None
) -> JudgeEvalResult:
    """Judge every image of OUT's generations manifest that has no row yet; rewrite OUT's summary."""
    start = time.perf_counter()
    out = Path(out)
    gens = read_generations(out)
    ensure_writable(out)
    clean_temp_files(manifest_dir(out, JUDGE_EVAL_KIND))
    threshold = cfg.filter.threshold
    labels = sorted(gens["label"].unique().to_list())
    result = JudgeEvalResult(out, ", ".join(labels) or out.name)
    stale = _stale_errors(out, set(gens["gen_id"])) if cfg.score.retry_errors else {}
    retry = set().union(*stale.values()) if stale else set()
    done = scan_manifest(out, JUDGE_EVAL_KIND, JUDGE_EVAL_SCHEMA).select("gen_id").unique().collect()
    todo = gens.join(done.filter(~pl.col("gen_id").is_in(list(retry))), on="gen_id", how="anti")
    todo = todo.sort("prompt_id", "sample", "round")
    result.planned, result.existing, result.retried = gens.height, gens.height - todo.height, len(retry)
    if todo.height:
        if judge is None:
            check_judge(cfg)  # a missing checkpoint or a dead server fails here, in seconds
            judge = make_judge(cfg)
        drop_rows(stale, key="gen_id")
        result.judge = judge.model_id
        _judge_batches(out, cfg, judge, todo, result, progress)
    rows = scan_manifest(out, JUDGE_EVAL_KIND, JUDGE_EVAL_SCHEMA).collect()
    result.summary = judge_summary(rows, threshold)
    write_parquet_atomic(result.summary, out / JUDGE_SUMMARY)
    result.seconds = time.perf_counter() - start
    return result


def _judge_batches(
    out: Path, cfg: JanusRunConfig, judge: Judge, todo: pl.DataFrame, result: JudgeEvalResult, progress: bool | None
) -> None:
    """Judge `todo` batch by batch (score.batch_size), reading the next batch while the judge works."""
    root = manifest_dir(out, JUDGE_EVAL_KIND)
    with stage_progress(progress) as bars:
        task = bars.add_task(f"judge {result.label}", total=todo.height, unit="img")
        for batch, loaded in prefetched(list(batches(todo, cfg.score.batch_size)), functools.partial(_load_batch, out)):
            kept = f"{result.existing + result.written:,} of {result.planned:,} images of {out} are scored and kept"
            judged, dt = judge_readable(judge, batch["prompt"].to_list(), loaded, kept)
            df = eval_rows(batch, loaded, judged, result.judge or "", cfg.filter.threshold)
            write_parquet_atomic(df, part_path(root, df["gen_id"]))
            result.written += df.height
            result.errors += int((df["status"] == "error").sum())
            result.flagged += int((df["status"] == "flagged").sum())
            result.judge_seconds += dt
            bars.advance(task, batch.height)


# ---------------------------------------------------------------- checkpoints: draw, then judge


def checkpoint_label(checkpoint: str, cfg: JanusRunConfig, run_dir: Path | None) -> str:
    """The checkpoint's label (base, sft, rl, or one derived from its path): its OUT directory's name."""
    from janus_eval.checkpoints import resolve_checkpoint

    return resolve_checkpoint(checkpoint, run_dir, cfg).label


def generate(checkpoint: str, prompts: Path, out: Path, cfg: JanusRunConfig, run_dir: Path | None, progress) -> None:
    """Draw the prompt set with one checkpoint into OUT (resumable: only missing images are drawn)."""
    from janus_eval.generate import run_generate

    run_generate(checkpoint, prompts, out, cfg, run_dir=run_dir, progress=progress)


def run_judge_eval(
    checkpoints: Sequence[str],
    prompts: Path,
    out_root: Path,
    cfg: JanusRunConfig,
    *,
    run_dir: Path | None = None,
    progress: bool | None = None,
) -> JudgeEvalRun:
    """Draw `prompts` with each checkpoint into `<out_root>/<label>/`, then score every image with the judge.

    Every checkpoint is resolved and the judge checked before any image is drawn; all drawing
    happens before the judge loads (one model in memory at a time), and the judge loads once, only
    when some image has no score yet.
    """
    if not checkpoints:
        raise ConfigError("no checkpoint to evaluate", hint="pass --checkpoint base|sft|rl|PATH (repeatable)")
    check_prompt_file(prompts)
    labels = [checkpoint_label(c, cfg, run_dir) for c in checkpoints]
    seen: dict[str, str] = {}
    for ckpt, label in zip(checkpoints, labels, strict=True):
        if label in seen:
            raise ConfigError(
                f"checkpoints {seen[label]!r} and {ckpt!r} share the label {label!r}", hint="give each one once"
            )
        seen[label] = ckpt
    out_root = ensure_writable(Path(out_root))
    check_judge(cfg)
    for ckpt, label in zip(checkpoints, labels, strict=True):
        generate(ckpt, Path(prompts), out_root / label, cfg, run_dir, progress)
    judge = LazyJudge(cfg)
    results = [score_generations(out_root / label, cfg, judge=judge, progress=progress) for label in labels]
    return JudgeEvalRun(out_root, cfg.filter.threshold, results)
