"""`janus data score`: the judge's consistency score S and a short reason for every image.

The work is the run's image manifest, sliced by rank exactly as synth slices it (by prompt),
anti-joined against the score manifest. Each batch's image bytes are read (and checked
against their sha256, then decoded) in a background thread while the judge scores the
previous batch; each scored batch appears as one manifest part, atomically. A killed run
leaves whole parts, and a rerun scores only what has no row yet.

An image that cannot be read, fails its checksum or does not decode, or that the judge
server refuses, gets a row with status 'error' and no S: it is counted, never fatal, and
the next run judges it again (`score.retry_errors`). A judge that cannot be reached (after
the client's retries), or that refuses every request of a batch, fails the stage with one
line; finished parts stay.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from janus_data.checks import require_images
from janus_data.config import JanusRunConfig
from janus_data.dist import Shard
from janus_data.errors import JanusError, RunDirError, one_line
from janus_data.judge.factory import check_judge, make_judge
from janus_data.judge.types import Judge, JudgeResult
from janus_data.manifest import (
    IMAGES_KIND,
    SCORES_KIND,
    clean_temp_files,
    ensure_writable,
    manifest_dir,
    scan_manifest,
    write_parquet_atomic,
)
from janus_data.progress import stage_progress
from janus_data.prompts import read_prompts_manifest
from janus_data.rundir import rank_dir, save_run_config
from janus_data.seeds import shard_of
from janus_data.storage import read_image_bytes
from janus_data.synth import IMAGE_SCHEMA

SCORE_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.Utf8,
    "prompt_id": pl.Utf8,
    "generator": pl.Utf8,
    "judge": pl.Utf8,
    "score": pl.Float64,
    "answer": pl.Utf8,
    "reason": pl.Utf8,
    "status": pl.Utf8,
    "error": pl.Utf8,
    "seconds": pl.Float64,
    "rank": pl.Int32,
}
STATUSES = ("ok", "flagged", "error")
THRESHOLDS = (0.5, 0.7, 0.8, 0.9)


@dataclass
class ScoreResult:
    """What one score call did, and the run's score distribution after it."""

    run_dir: Path
    shard: Shard
    judge: str | None = None
    planned: int = 0
    existing: int = 0
    written: int = 0
    judged: int = 0
    retried: int = 0
    retry_errors: bool = True
    errors: int = 0
    flagged: int = 0
    seconds: float = 0.0
    judge_seconds: float = 0.0
    by_generator: pl.DataFrame = field(default_factory=pl.DataFrame)
    histogram: pl.DataFrame = field(default_factory=pl.DataFrame)
    task: str = "t2i"

    @property
    def images_per_s(self) -> float:
        return self.judged / self.judge_seconds if self.judge_seconds > 0 else 0.0


@dataclass
class LoadedImage:
    """One image's bytes, or why it cannot be judged."""

    data: bytes | None
    error: str | None


def plan_scores(run_dir: Path, shard: Shard) -> pl.DataFrame:
    """Every image this rank judges: the image manifest's rows of its prompts, with the prompt text."""
    images = scan_manifest(run_dir, IMAGES_KIND, IMAGE_SCHEMA).select(
        "image_id", "prompt_id", "generator", "shard", "offset", "length", "sha256"
    )
    prompts = read_prompts_manifest(run_dir).select("prompt_id", "prompt")
    mine = [pid for pid in prompts["prompt_id"] if shard_of(pid, shard.world_size) == shard.rank]
    return (
        images.filter(pl.col("prompt_id").is_in(mine))
        .unique("image_id", keep="first")
        .collect()
        .join(prompts, on="prompt_id", how="left")
        .sort("generator", "prompt_id", "image_id")
    )


def scored_image_ids(run_dir: Path, retry: set[str] = frozenset(), kind: str = SCORES_KIND) -> pl.DataFrame:
    """image_id of every image that already has a score row (any rank, any status), but those in `retry`."""
    ids = scan_manifest(run_dir, kind, SCORE_SCHEMA).select("image_id").unique().collect()
    return ids.filter(~pl.col("image_id").is_in(list(retry))) if retry else ids


def error_rows(run_dir: Path, rank: int, mine: set[str], kind: str = SCORES_KIND) -> dict[Path, set[str]]:
    """The error rows of `mine` in this rank's parts: {part: image_ids}."""
    found: dict[Path, set[str]] = {}
    root = manifest_dir(run_dir, kind) / rank_dir(rank)
    for part in sorted(root.glob("*.parquet")) if root.exists() else []:
        ids = pl.read_parquet(part, columns=["image_id", "status"]).filter(pl.col("status") == "error")["image_id"]
        stale = set(ids) & mine
        if stale:
            found[part] = stale
    return found


def remaining(
    run_dir: Path, plan: pl.DataFrame, rank: int, retry_errors: bool, kind: str = SCORES_KIND
) -> tuple[pl.DataFrame, dict[Path, set[str]]]:
    """The planned images with no score row yet (their error rows too, under `retry_errors`) and those error rows."""
    stale = error_rows(run_dir, rank, set(plan["image_id"]), kind) if retry_errors else {}
    retry = set().union(*stale.values()) if stale else set()
    return plan.join(scored_image_ids(run_dir, retry, kind), on="image_id", how="anti"), stale


def drop_rows(parts: dict[Path, set[str]], key: str = "image_id") -> None:
    """Rewrite each part without the rows whose `key` is in the given ids (atomically); a part left empty is removed.

    Dropped before the images are judged again: a kill in between leaves them without a row,
    which the next run's anti-join picks up, never with two rows.
    """
    for part, ids in parts.items():
        kept = pl.read_parquet(part).filter(~pl.col(key).is_in(list(ids)))
        if kept.height:
            write_parquet_atomic(kept, part)
        else:
            part.unlink()


def load_image(run_dir: Path, row: dict) -> LoadedImage:
    """Read, checksum and decode one stored image; never raises for a bad image."""
    try:
        data = read_image_bytes(run_dir, row["shard"], row["offset"], row["length"])
    except (OSError, RunDirError) as err:
        return LoadedImage(None, f"unreadable: {one_line(err)}")
    if row["sha256"] and hashlib.sha256(data).hexdigest() != row["sha256"]:
        return LoadedImage(None, "corrupt: bytes do not match the manifest's sha256")
    return decoded(data)


def decoded(data: bytes) -> LoadedImage:
    """The image's bytes if they decode, else why not; never raises for a bad image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        return LoadedImage(None, f"undecodable: {one_line(err)}")
    return LoadedImage(data, None)


def load_batch(run_dir: Path, batch: pl.DataFrame) -> list[LoadedImage]:
    return [load_image(run_dir, row) for row in batch.iter_rows(named=True)]


def batches(todo: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, todo.height, size):
        yield todo.slice(start, size)


def prefetched(chunks: list[pl.DataFrame], load: Callable[[pl.DataFrame], list]) -> Iterator[tuple[pl.DataFrame, list]]:
    """Each chunk with its loaded images; the next chunk is read in a background thread while the caller judges."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-io") as io_pool:
        pending: Future | None = io_pool.submit(load, chunks[0]) if chunks else None
        for n, chunk in enumerate(chunks):
            loaded = pending.result()
            if n + 1 < len(chunks):
                pending = io_pool.submit(load, chunks[n + 1])
            yield chunk, loaded


def judge_readable(
    judge: Judge, prompts: list[str], loaded: list[LoadedImage], kept: str
) -> tuple[dict[int, JudgeResult], float]:
    """Judge the batch's readable images: {index in batch: result} and the judge's seconds.

    A judge that fails the whole batch (JanusError: unreachable, every request refused) stops the
    stage; its hint gains `kept` (what is already scored) and how to resume.
    """
    ok = [i for i, item in enumerate(loaded) if item.data is not None]
    t0 = time.perf_counter()
    try:
        results = judge.score([prompts[i] for i in ok], [loaded[i].data for i in ok]) if ok else []
    except JanusError as err:
        raise with_resume_hint(err, kept) from None
    return dict(zip(ok, results, strict=True)), time.perf_counter() - t0


def with_resume_hint(err: JanusError, kept: str) -> JanusError:
    """A judge failure's hint gains what is already scored and how to resume."""
    err.hint = f"{err.hint}; {kept}: rerun the same command to resume" if err.hint else kept
    return err


def result_status(result: JudgeResult) -> str:
    """'error' (refused or unreadable, no S), 'flagged' (no yes/no token, no S) or 'ok'."""
    return "error" if result.error else ("flagged" if result.flagged else "ok")


def part_path(root: Path, ids: Iterable[str]) -> Path:
    """A batch's part file, named after its row ids so a rerun of the same batch cannot double it."""
    return root / f"part-{hashlib.sha1('|'.join(ids).encode()).hexdigest()[:16]}.parquet"


def score_rows(
    batch: pl.DataFrame,
    loaded: list[LoadedImage],
    judged: dict[int, JudgeResult],
    judge_id: str,
    seconds: float,
    rank: int,
) -> pl.DataFrame:
    """The manifest rows of one batch: one per image, in batch order."""
    rows: dict[str, list] = {k: [] for k in SCORE_SCHEMA}
    per_image = seconds / max(1, len(judged))
    for i, (img, item) in enumerate(zip(batch.iter_rows(named=True), loaded, strict=True)):
        result = judged.get(i)
        if result is None:
            result = JudgeResult(None, None, "", False, error=item.error)
        error, status = result.error, result_status(result)
        rows["image_id"].append(img["image_id"])
        rows["prompt_id"].append(img["prompt_id"])
        rows["generator"].append(img["generator"])
        rows["judge"].append(judge_id)
        rows["score"].append(result.score)
        rows["answer"].append(result.answer)
        rows["reason"].append(result.reason)
        rows["status"].append(status)
        rows["error"].append(error)
        rows["seconds"].append(per_image if i in judged else 0.0)
        rows["rank"].append(rank)
    return pl.DataFrame(rows, schema=SCORE_SCHEMA)


def write_scores(run_dir: Path, df: pl.DataFrame, rank: int, kind: str = SCORES_KIND) -> Path:
    """One batch's part, named after its images so a rerun of the same batch cannot double it."""
    return write_parquet_atomic(df, part_path(manifest_dir(run_dir, kind) / rank_dir(rank), df["image_id"]))


def score_stats(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per generator over the whole run: counts, mean S, pass rates; and a 10-bin histogram of S."""
    scores = scan_manifest(run_dir, SCORES_KIND, SCORE_SCHEMA)
    s = pl.col("score")
    by_generator = (
        scores.group_by("generator")
        .agg(
            pl.len().alias("images"),
            (pl.col("status") == "ok").sum().alias("ok"),
            (pl.col("status") == "flagged").sum().alias("flagged"),
            (pl.col("status") == "error").sum().alias("errors"),
            s.mean().alias("mean_s"),
            *[(s >= t).mean().alias(f"pass_{t}") for t in THRESHOLDS],
        )
        .sort("generator")
        .collect()
    )
    histogram = (
        scores.filter(s.is_not_null())
        .with_columns((s * 10).floor().clip(0, 9).cast(pl.Int32).alias("bin"))
        .group_by("generator", "bin")
        .agg(pl.len().alias("count"))
        .collect()
    )
    return by_generator, histogram


def run_score(
    run_dir: Path,
    cfg: JanusRunConfig,
    shard: Shard = Shard(),
    progress: bool | None = None,
    judge: Judge | None = None,
) -> ScoreResult:
    """Score every image of this rank's slice of the run that has no score row yet."""
    require_images(run_dir)

    def rows_by(judge: Judge, result: ScoreResult) -> RowsFn:
        def judge_rows(batch: pl.DataFrame, loaded: list[LoadedImage], kept: str) -> tuple[pl.DataFrame, int, float]:
            judged, dt = judge_readable(judge, batch["prompt"].to_list(), loaded, kept)
            return score_rows(batch, loaded, judged, result.judge or "", dt, shard.rank), len(judged), dt

        return judge_rows

    plan = plan_scores(Path(run_dir), shard)
    result = score_stage(run_dir, cfg, shard, progress, judge, plan, functools.partial(load_batch, run_dir), rows_by)
    result.by_generator, result.histogram = score_stats(run_dir)
    return result


RowsFn = Callable[[pl.DataFrame, list, str], tuple[pl.DataFrame, int, float]]


def score_stage(
    run_dir: Path,
    cfg: JanusRunConfig,
    shard: Shard,
    progress: bool | None,
    judge: Any,
    plan: pl.DataFrame,
    load: Callable[[pl.DataFrame], list],
    rows_by: Callable[[Any, ScoreResult], RowsFn],
    kind: str = SCORES_KIND,
    task: str = "t2i",
) -> ScoreResult:
    """A score stage over `plan` (text-to-image or edits): resume (`remaining`), check and load the judge
    only when something is left, then `score_loop` with the judge's `rows_by(judge, result)`. The
    caller adds its manifest's statistics."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    ensure_writable(run_dir)
    clean_temp_files(manifest_dir(run_dir, kind))
    result = ScoreResult(run_dir, shard, retry_errors=cfg.score.retry_errors, task=task)
    todo, stale = remaining(run_dir, plan, shard.rank, cfg.score.retry_errors, kind)
    result.planned, result.existing = plan.height, plan.height - todo.height
    result.retried = len(set().union(*stale.values()))
    if todo.height:
        if judge is None:
            check_judge(cfg)  # a missing checkpoint, a dead or misconfigured server fails here, in seconds
        drop_rows(stale)
        save_run_config(run_dir, cfg)
        judge = judge or make_judge(cfg)
        result.judge = judge.model_id
        score_loop(
            run_dir, cfg.score.batch_size, shard.rank, progress, todo, result, load, rows_by(judge, result), kind
        )
    result.seconds = time.perf_counter() - start
    return result


def score_loop(
    run_dir: Path,
    batch_size: int,
    rank: int,
    progress: bool | None,
    todo: pl.DataFrame,
    result: ScoreResult,
    load: Callable[[pl.DataFrame], list],
    judge_rows: RowsFn,
    kind: str = SCORES_KIND,
) -> None:
    """Batches of `todo`: `load` (in a background thread, one batch ahead), `judge_rows` -> (rows, judged,
    seconds), each batch's rows one part of manifest `kind`; `result` counts them."""
    chunks = list(batches(todo, batch_size))
    with stage_progress(progress) as bars:
        task = bars.add_task("score", total=todo.height, unit="img")
        for batch, loaded in prefetched(chunks, load):
            done = result.existing + result.written
            kept = f"{done:,} of {result.planned:,} images of this rank are scored and kept"
            df, judged, dt = judge_rows(batch, loaded, kept)
            write_scores(run_dir, df, rank, kind)
            result.written += df.height
            result.judged += judged
            result.errors += int((df["status"] == "error").sum())
            result.flagged += int((df["status"] == "flagged").sum())
            result.judge_seconds += dt
            bars.advance(task, batch.height)
