"""`janus data score --task edit`: S_flw, S_psv and the edit reward R for every candidate edit.

The text-to-image score stage's machinery (janus_data.score) on the edit manifests: the work is the
run's edit image manifest, sliced by rank by edit as synth slices it, anti-joined against
`manifests/edit_scores`; each batch's originals (`edit_sources/<edit_id>.png`) and edited images are
read and decoded one batch ahead; the judge answers both questions with the two images in one
request (`score_edits`, docs/edit.md); each batch is one part, atomically. Rows are the score
manifest's (so the same readers work) with `score` = S_flw, `answer` and `reason` the following
question's, plus `score_flw`, `score_psv`, `reward` = edit.reward_flw * S_flw + edit.reward_psv * S_psv,
`reason_flw`, `reason_psv`. An unreadable image or a refused pair is an error row, judged again by the
next run under `score.retry_errors`; a judge that cannot be reached stops the stage with one line.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from janus_data.checks import require_edit_images
from janus_data.config import JanusRunConfig
from janus_data.dist import Shard
from janus_data.edit_manifest import read_edits_manifest, read_source
from janus_data.errors import JanusError, RunDirError, one_line
from janus_data.judge.scoring import edit_reward
from janus_data.judge.types import EditJudge, EditJudgeResult
from janus_data.manifest import (
    EDIT_IMAGES_KIND,
    EDIT_SCORES_KIND,
    scan_manifest,
)
from janus_data.score import (
    SCORE_SCHEMA,
    LoadedImage,
    RowsFn,
    ScoreResult,
    decoded,
    load_image,
    score_stage,
    with_resume_hint,
)
from janus_data.seeds import shard_of
from janus_data.synth import IMAGE_SCHEMA

EDIT_SCORE_SCHEMA: dict[str, pl.DataType] = {
    **SCORE_SCHEMA,
    "score_flw": pl.Float64,
    "score_psv": pl.Float64,
    "reward": pl.Float64,
    "reason_flw": pl.Utf8,
    "reason_psv": pl.Utf8,
}


@dataclass
class LoadedEdit:
    """An edit's original and edited bytes, or why it cannot be judged."""

    original: bytes | None
    data: bytes | None
    error: str | None


def plan_edit_scores(run_dir: Path, shard: Shard) -> pl.DataFrame:
    """Every candidate edit this rank judges, with its instruction as `prompt`."""
    images = scan_manifest(run_dir, EDIT_IMAGES_KIND, IMAGE_SCHEMA).select(
        "image_id", "prompt_id", "generator", "shard", "offset", "length", "sha256"
    )
    edits = read_edits_manifest(run_dir).select(pl.col("edit_id").alias("prompt_id"), pl.col("instruction"))
    mine = [eid for eid in edits["prompt_id"] if shard_of(eid, shard.world_size) == shard.rank]
    return (
        images.filter(pl.col("prompt_id").is_in(mine))
        .unique("image_id", keep="first")
        .collect()
        .join(edits.rename({"instruction": "prompt"}), on="prompt_id", how="left")
        .sort("generator", "prompt_id", "image_id")
    )


def load_edit(run_dir: Path, row: dict, originals: dict[str, LoadedImage]) -> LoadedEdit:
    """Read, checksum and decode one edited image and its original; never raises for a bad image."""
    eid = row["prompt_id"]
    if eid not in originals:
        try:
            originals[eid] = decoded(read_source(run_dir, eid))
        except RunDirError as err:
            originals[eid] = LoadedImage(None, f"unreadable: {one_line(err)}")
    original, edited = originals[eid], load_image(run_dir, row)
    if original.error:
        return LoadedEdit(None, None, f"original {original.error}")
    return LoadedEdit(original.data, edited.data, edited.error)


def load_edit_batch(run_dir: Path, batch: pl.DataFrame) -> list[LoadedEdit]:
    originals: dict[str, LoadedImage] = {}
    return [load_edit(run_dir, row, originals) for row in batch.iter_rows(named=True)]


def judge_edits(
    judge: EditJudge, instructions: list[str], loaded: list[LoadedEdit], kept: str
) -> tuple[dict[int, EditJudgeResult], float]:
    """Judge the batch's readable edits: {index in batch: result} and the judge's seconds."""
    ok = [i for i, item in enumerate(loaded) if item.data is not None]
    t0 = time.perf_counter()
    try:
        results = (
            judge.score_edits(
                [instructions[i] for i in ok], [loaded[i].original for i in ok], [loaded[i].data for i in ok]
            )
            if ok
            else []
        )
    except JanusError as err:
        raise with_resume_hint(err, kept) from None
    return dict(zip(ok, results, strict=True)), time.perf_counter() - t0


def edit_score_rows(
    batch: pl.DataFrame,
    loaded: list[LoadedEdit],
    judged: dict[int, EditJudgeResult],
    cfg: JanusRunConfig,
    judge_id: str,
    seconds: float,
    rank: int,
) -> pl.DataFrame:
    """The manifest rows of one batch: one per candidate edit, in batch order."""
    rows: dict[str, list] = {k: [] for k in EDIT_SCORE_SCHEMA}
    per_image = seconds / max(1, len(judged))
    for i, (img, item) in enumerate(zip(batch.iter_rows(named=True), loaded, strict=True)):
        result = judged.get(i) or EditJudgeResult.failed(item.error or "not judged")
        flw, psv = result.following, result.preserving
        values = {
            "image_id": img["image_id"],
            "prompt_id": img["prompt_id"],
            "generator": img["generator"],
            "judge": judge_id,
            "score": flw.score,
            "answer": flw.answer,
            "reason": flw.reason,
            "status": result.status,
            "error": result.error,
            "seconds": per_image if i in judged else 0.0,
            "rank": rank,
            "score_flw": flw.score,
            "score_psv": psv.score,
            "reward": edit_reward(flw.score, psv.score, cfg.edit.reward_flw, cfg.edit.reward_psv),
            "reason_flw": flw.reason,
            "reason_psv": psv.reason,
        }
        for key, value in values.items():
            rows[key].append(value)
    return pl.DataFrame(rows, schema=EDIT_SCORE_SCHEMA)


def edit_score_stats(run_dir: Path) -> pl.DataFrame:
    """Per generator over the whole run: counts, mean S_flw, S_psv and R."""
    return (
        scan_manifest(run_dir, EDIT_SCORES_KIND, EDIT_SCORE_SCHEMA)
        .group_by("generator")
        .agg(
            pl.len().alias("images"),
            (pl.col("status") == "flagged").sum().alias("flagged"),
            (pl.col("status") == "error").sum().alias("errors"),
            pl.col("score_flw").mean().alias("mean_flw"),
            pl.col("score_psv").mean().alias("mean_psv"),
            pl.col("reward").mean().alias("mean_reward"),
        )
        .sort("generator")
        .collect()
    )


def run_edit_score(
    run_dir: Path,
    cfg: JanusRunConfig,
    shard: Shard = Shard(),
    progress: bool | None = None,
    judge: EditJudge | None = None,
) -> ScoreResult:
    """Judge every candidate edit of this rank's slice of the run that has no edit score row yet."""
    require_edit_images(run_dir)

    def rows_by(judge: EditJudge, result: ScoreResult) -> RowsFn:
        def judge_rows(batch: pl.DataFrame, loaded: list[LoadedEdit], kept: str) -> tuple[pl.DataFrame, int, float]:
            judged, dt = judge_edits(judge, batch["prompt"].to_list(), loaded, kept)
            return edit_score_rows(batch, loaded, judged, cfg, result.judge or "", dt, shard.rank), len(judged), dt

        return judge_rows

    plan = plan_edit_scores(Path(run_dir), shard)
    load = functools.partial(load_edit_batch, run_dir)
    result = score_stage(run_dir, cfg, shard, progress, judge, plan, load, rows_by, EDIT_SCORES_KIND, task="edit")
    result.by_generator = edit_score_stats(run_dir)
    return result
