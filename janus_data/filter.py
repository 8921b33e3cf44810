"""`janus data filter`: Task I/II/III samples from the scored pool, written as WebDataset shards.

The selection (janus_data.select) is a pure function of the manifests and the filter config.
Its output is written, one directory of shards per task, into a build directory named after
a fingerprint of the inputs (the manifest part files, which never change once written) and
the config. Each task's progress is recorded after every complete shard, so a killed run
resumes at the next shard and writes exactly the bytes a clean run would. When every task
is done the build directory replaces `<run>/sft` in one rename and the samples manifest is
written; a rerun with the same fingerprint does nothing, any change (a new threshold, new
scores) rebuilds.

Layout:
    <run>/sft/{t2i,judge,regen}/sft-000000.tar ...   WebDataset shards, one member set per task
    <run>/sft/state.json                             fingerprint, config, counts, shards
    <run>/manifests/samples/samples.parquet          one row per sample: key, task, shard, ...
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from janus_data.checks import require_manifests
from janus_data.config import FilterConfig, JanusRunConfig, to_dict
from janus_data.errors import JanusError, RunDirError
from janus_data.manifest import atomic_write, manifest_dir, part_files, scan_manifest, write_parquet_atomic
from janus_data.progress import stage_progress
from janus_data.prompts import PROMPTS_KIND
from janus_data.rundir import SFT_DIR, STATE_FILE, save_run_config
from janus_data.score import SCORE_SCHEMA
from janus_data.select import TASKS, labelled_reason, pool, select_all
from janus_data.storage import EXTENSIONS, read_image_bytes
from janus_data.synth import IMAGE_SCHEMA
from janus_data.wds import TarShardWriter

FORMAT_VERSION = 2  # 2: labels follow the judge's own answer (judge_labels), generator roles
PROGRESS_FILE = "progress.json"
# Which images of a sample go into the shard, under which member prefix, and whether the
# trainer embeds them through the generation path (then their VQ codes go in too).
IMAGE_ROLES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "t2i": (("image", "", True),),
    "judge": (("image", "", False),),
    "regen": (("bad", "", True), ("good", "_good", True)),
}
SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Utf8,
    "task": pl.Utf8,
    "prompt_id": pl.Utf8,
    "image_ids": pl.List(pl.Utf8),
    "scores": pl.List(pl.Float64),
    "label": pl.Utf8,
    "shard": pl.Utf8,
}


class FilterError(JanusError):
    """The scored pool cannot give any sample, or the run lacks a stage's output."""


@dataclass
class TaskStats:
    """One task's samples and shards."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    written_now: int = 0


@dataclass
class FilterResult:
    """What one filter call did, for the summary."""

    run_dir: Path
    threshold: float
    fingerprint: str = ""
    rebuilt: bool = False
    pool: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    prompts: int = 0
    prompts_without_sample: int = 0
    prompts_without_pair: int = 0
    judge_labels: str = "agree"
    labels: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, TaskStats] = field(default_factory=dict)
    mix: tuple[float, ...] = (0.2, 0.3, 0.5)
    vq_model: str = ""
    seconds: float = 0.0

    def mix_budget(self) -> tuple[int, str | None]:
        """Samples the mix can draw before its first task runs dry, and that task."""
        weights = dict(zip(TASKS, self.mix, strict=True))
        total = sum(weights.values())
        limits = {t: self.tasks[t].samples / (w / total) for t, w in weights.items() if w > 0 and t in self.tasks}
        if not limits:
            return 0, None
        dry = min(limits, key=lambda t: limits[t])
        return int(limits[dry]), dry


# ---------------------------------------------------------------- inputs and selection


def fingerprint(run_dir: Path, cfg: JanusRunConfig) -> str:
    """Hash of the input part files (immutable once written: name and size identify them) and the config."""
    h = hashlib.sha256(f"janus-filter-v{FORMAT_VERSION}".encode())
    h.update(json.dumps({"filter": to_dict(cfg.filter), "vq": cfg.synth.janus.model}, sort_keys=True).encode())
    for kind in (PROMPTS_KIND, "images", "scores"):
        for part in part_files(run_dir, kind):
            h.update(f"{part.relative_to(run_dir)}:{part.stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass
class Selection:
    """The chosen samples (slim: ids, scores, labels, in writing order) and pool statistics.

    `details(task)` adds what that task's shards need (prompt text, reasons, where each image's
    bytes are), one task at a time so that only one task's lookups are in memory at once.
    """

    samples: dict[str, pl.DataFrame]
    stats: dict
    prompts: pl.DataFrame
    images: pl.LazyFrame
    scores: pl.LazyFrame

    def details(self, task: str) -> pl.DataFrame:
        df = self.samples[task]
        suffixes = ("", "_good") if task == "regen" else ("",)
        rows = pl.concat([df[f"image_row{x}"] for x in suffixes]).unique().to_frame()
        plans = [
            self.images.with_row_index("image_row")
            .select("image_row", *LOCATION)
            .join(rows.lazy(), on="image_row", how="semi")
            .with_columns(pl.col("shard").cast(pl.Categorical))
        ]
        if task != "t2i":  # the judge's reason of the image evaluated (Task II, and Task III's bad image)
            plans.append(
                self.scores.with_row_index("score_row")
                .select("score_row", "reason")
                .join(df.select("score_row").lazy(), on="score_row", how="semi")
            )
        frames = pl.collect_all(plans, engine="streaming")  # the scans stream through the semi-joins
        # `df` is in writing order already; every join keeps it.
        out = df.join(self.prompts, on="prompt_id", how="left", maintain_order="left")
        for x in suffixes:
            located = frames[0].drop("image_id").rename({c: f"{c}{x}" for c in ("image_row", *LOCATION[1:])})
            out = out.join(located, on=f"image_row{x}", how="left", maintain_order="left")
        if task == "t2i":
            return out.with_columns(pl.lit(None, pl.Utf8).alias("reason"))
        return out.join(frames[1], on="score_row", how="left", maintain_order="left")


LOCATION = ("image_id", "generator", "format", "shard", "offset", "length", "sha256")


def select_samples(run_dir: Path, fcfg: FilterConfig) -> Selection:
    """The three tasks' samples and the pool statistics of the summary."""
    scores = scan_manifest(run_dir, "scores", SCORE_SCHEMA)
    images = scan_manifest(run_dir, "images", IMAGE_SCHEMA)
    prompts = scan_manifest(run_dir, PROMPTS_KIND)
    pooled = pool(scores, images, prompts, fcfg).cache()
    plans = select_all(pooled, fcfg)
    status = scores.group_by("status").agg(pl.len().alias("n"))
    labels = pooled.group_by("label").agg(pl.len().alias("n"))
    frames = pl.collect_all([*plans.values(), status, labels, prompts.select("prompt_id", "prompt")])
    samples = dict(zip(plans, frames[:3], strict=True))
    status_counts, label_counts = dict(frames[3].iter_rows()), dict(frames[4].iter_rows())
    prompt_text = frames[5]
    n_prompts = prompt_text.height
    stats = {
        "pool": int(sum(label_counts.values())),
        "excluded": {k: int(v) for k, v in sorted(status_counts.items()) if k != "ok"},
        "labels": {
            name: int(label_counts.get(key, 0)) for name, key in (("Yes", "Yes"), ("No", "No"), ("unlabelled", None))
        },
        "prompts": int(n_prompts),
        "prompts_without_sample": int(n_prompts - samples["t2i"]["prompt_id"].n_unique()),
        "prompts_without_pair": int(n_prompts - samples["regen"]["prompt_id"].n_unique()),
    }
    return Selection(samples, stats, prompt_text, images, scores)


# ---------------------------------------------------------------- shards


def _record(task: str, row: dict, fcfg: FilterConfig, vq_model: str) -> dict:
    """The sample's JSON record (what the trainer reads besides the images and codes)."""
    ids = [row["image_id"]] + ([row["image_id_good"]] if task == "regen" else [])
    scores = [row["score"]] + ([row["score_good"]] if task == "regen" else [])
    label = {"t2i": None, "judge": row.get("label"), "regen": "No"}[task]
    record = {
        "key": row["key"],
        "task": task,
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "image_ids": ids,
        "generators": [row["generator"]] + ([row["generator_good"]] if task == "regen" else []),
        "scores": scores,
        "label": label,
        "reason": labelled_reason(label, row["reason"]) if label else None,
        "threshold": fcfg.threshold,
        "vq_model": vq_model if any(vq for _, _, vq in IMAGE_ROLES[task]) else None,
    }
    return record


def _image_bytes(run_dir: Path, row: dict, suffix: str) -> bytes:
    data = read_image_bytes(run_dir, row[f"shard{suffix}"], row[f"offset{suffix}"], row[f"length{suffix}"])
    if hashlib.sha256(data).hexdigest() != row[f"sha256{suffix}"]:
        raise RunDirError(
            f"image {row[f'image_id{suffix}']} no longer matches its manifest sha256",
            hint="its shard was changed after scoring: rerun `janus data synth` and `janus data score`",
        )
    return data


def npy_bytes(codes: np.ndarray) -> bytes:
    """A numpy array as .npy bytes (no pickle: plain integer array)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(codes), allow_pickle=False)
    return buf.getvalue()


def sample_members(task: str, rows: list[dict], run_dir: Path, encode, fcfg: FilterConfig, vq_model: str):
    """(key, {extension: bytes}) of each row: JSON, image bytes, and VQ codes where the trainer needs them."""
    blobs = {role: [_image_bytes(run_dir, r, suffix) for r in rows] for role, suffix, _ in IMAGE_ROLES[task]}
    codes = {}
    for role, _, needs_codes in IMAGE_ROLES[task]:
        if needs_codes:
            pil = [Image.open(io.BytesIO(b)) for b in blobs[role]]
            codes[role] = encode(pil)
    out = []
    for i, row in enumerate(rows):
        record = _record(task, row, fcfg, vq_model)
        members = {"json": json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()}
        for role, suffix, needs_codes in IMAGE_ROLES[task]:
            members[f"{role}.{EXTENSIONS[row[f'format{suffix}']]}"] = blobs[role][i]
            if needs_codes:
                members[f"{role}.npy"] = npy_bytes(codes[role][i])
        out.append((row["key"], members))
    return out


def _read_progress(task_dir: Path) -> dict:
    path = task_dir / PROGRESS_FILE
    if not path.is_file():
        return {"samples": 0, "shards": []}
    return json.loads(path.read_text())


def _write_progress(task_dir: Path, progress: dict) -> None:
    text = json.dumps(progress, sort_keys=True, indent=1).encode()
    atomic_write(task_dir / PROGRESS_FILE, lambda fh: fh.write(text))


def write_task(
    run_dir: Path,
    task_dir: Path,
    task: str,
    samples: pl.DataFrame,
    fcfg: FilterConfig,
    encoder: Callable[[], object],
    advance: Callable[[int], None],
) -> tuple[list[dict], int]:
    """Write (or finish writing) one task's shards; returns the shard list and the samples written now."""
    progress = _read_progress(task_dir)
    done = progress["samples"]
    if progress.get("complete"):
        advance(samples.height)
        return progress["shards"], 0
    advance(done)
    needs_codes = any(vq for _, _, vq in IMAGE_ROLES[task])
    vq = encoder() if needs_codes and done < samples.height else None
    encode = vq.encode if vq is not None else None
    vq_model = vq.model_id if vq is not None else ""
    for stale in task_dir.glob(".*.tmp"):
        stale.unlink()
    shards = list(progress["shards"])
    writer = TarShardWriter(task_dir, max_bytes=fcfg.shard_bytes, start_index=len(shards))
    written = 0
    with writer:
        for start in range(done, samples.height, fcfg.vq_batch_size):
            rows = samples.slice(start, fcfg.vq_batch_size).to_dicts()
            for key, members in sample_members(task, rows, run_dir, encode, fcfg, vq_model):
                before = len(writer.shards)
                writer.write(key, members)
                written += 1
                if len(writer.shards) > before:  # a shard just completed: record it
                    shards += [asdict(s) for s in writer.shards[before:]]
                    _write_progress(task_dir, {"samples": sum(s["samples"] for s in shards), "shards": shards})
            advance(len(rows))
    shards += [asdict(s) for s in writer.shards[len(shards) - len(progress["shards"]) :]]
    _write_progress(task_dir, {"samples": samples.height, "shards": shards, "complete": True})
    return shards, written


def shard_column(task: str, shards: list[dict]) -> list[str]:
    """The shard of each sample, in writing order, from the shards' sample counts."""
    return [f"{SFT_DIR}/{task}/{s['name']}" for s in shards for _ in range(s["samples"])]


def samples_path(run_dir: Path) -> Path:
    return manifest_dir(run_dir, "samples") / "samples.parquet"


def samples_manifest(samples: dict[str, pl.DataFrame], shards: dict[str, list[dict]]) -> pl.DataFrame:
    """One row per sample: key, task, prompt_id, image_ids, scores, label, shard."""
    frames = []
    for task, df in samples.items():
        regen = task == "regen"
        frames.append(
            df.select(
                "key",
                pl.lit(task).alias("task"),
                "prompt_id",
                pl.concat_list(["image_id", "image_id_good"] if regen else ["image_id"]).alias("image_ids"),
                pl.concat_list(["score", "score_good"] if regen else ["score"]).alias("scores"),
                (pl.col("label") if task == "judge" else pl.lit("No" if regen else None, pl.Utf8)).alias("label"),
                pl.Series("shard", shard_column(task, shards[task]), pl.Utf8),
            )
        )
    return pl.concat(frames).cast(SAMPLE_SCHEMA)


# ---------------------------------------------------------------- the stage


def vq_factory(cfg: JanusRunConfig) -> Callable[[], object]:
    """Lazily load the run's Janus VQ model (only when a task needs codes)."""
    loaded: list = []

    def make():
        if not loaded:
            from janus_data.models import resolve_device, resolve_dtype
            from janus_data.vq import VQEncoder

            device = resolve_device(cfg.runtime)
            loaded.append(VQEncoder(cfg.synth.janus.model, device, resolve_dtype(cfg.runtime, device)))
        return loaded[0]

    return make


def run_filter(
    run_dir: Path, cfg: JanusRunConfig, progress: bool | None = None, encoder: Callable[[], object] | None = None
) -> FilterResult:
    """Select Task I/II/III samples and write their shards (resumable; a rerun with nothing changed does nothing)."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    fcfg = cfg.filter
    require_manifests(run_dir)
    result = FilterResult(
        run_dir, fcfg.threshold, mix=fcfg.mix, vq_model=cfg.synth.janus.model, judge_labels=fcfg.judge_labels
    )
    result.fingerprint = fp = fingerprint(run_dir, cfg)
    final = run_dir / SFT_DIR
    state_path = final / STATE_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") == fp:
            _from_state(result, state)
            if not samples_path(run_dir).is_file():  # killed between the swap and the manifest
                shards = {t: state["tasks"][t]["shard_files"] for t in TASKS}
                samples = select_samples(run_dir, fcfg).samples
                write_parquet_atomic(samples_manifest(samples, shards), samples_path(run_dir))
            result.seconds = time.perf_counter() - start
            return result

    selection = select_samples(run_dir, fcfg)
    samples, stats = selection.samples, selection.stats
    for key, value in stats.items():
        setattr(result, key, value)
    if sum(df.height for df in samples.values()) == 0:
        raise FilterError(
            f"no sample at threshold {fcfg.threshold}: of {stats['pool']:,} usable scored images, "
            f"{stats['labels']['Yes']:,} are labelled Yes and {stats['labels']['No']:,} No "
            f"(filter.judge_labels: {fcfg.judge_labels})",
            hint="lower --threshold, or generate and score more images",
        )
    save_run_config(run_dir, cfg)
    build = run_dir / f"{SFT_DIR}.build-{fp[:16]}"
    for stale in run_dir.glob(f"{SFT_DIR}.build-*"):
        if stale != build:
            shutil.rmtree(stale, ignore_errors=True)
    for old in run_dir.glob(f"{SFT_DIR}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    encoder = encoder or vq_factory(cfg)
    shards: dict[str, list[dict]] = {}
    with stage_progress(progress) as bars:
        for task in TASKS:
            done = _read_progress(build / task).get("complete", False)
            df = samples[task] if done else selection.details(task)
            bar = bars.add_task(f"filter {task}", total=df.height, unit="sample")
            shards[task], written = write_task(
                run_dir, build / task, task, df, fcfg, encoder, lambda n, b=bar: bars.advance(b, n)
            )
            del df  # one task's lookups in memory at a time
            result.tasks[task] = TaskStats(
                samples=samples[task].height,
                shards=len(shards[task]),
                bytes=sum(s["bytes"] for s in shards[task]),
                written_now=written,
            )
    state = {
        "fingerprint": fp,
        "format": FORMAT_VERSION,
        "filter": to_dict(fcfg),
        "vq_model": cfg.synth.janus.model,
        "stats": stats,
        "tasks": {t: {**asdict(result.tasks[t]), "shard_files": shards[t]} for t in TASKS},
    }
    text = json.dumps(state, sort_keys=True, indent=1).encode()
    atomic_write(build / STATE_FILE, lambda fh: fh.write(text))
    if final.exists():
        final.rename(run_dir / f"{SFT_DIR}.old-{time.time_ns()}")
    build.rename(final)
    for old in run_dir.glob(f"{SFT_DIR}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
    write_parquet_atomic(samples_manifest(samples, shards), samples_path(run_dir))
    result.rebuilt = True
    result.seconds = time.perf_counter() - start
    return result


def _from_state(result: FilterResult, state: dict) -> None:
    for key, value in state["stats"].items():
        setattr(result, key, value)
    for task in TASKS:
        t = state["tasks"][task]
        result.tasks[task] = TaskStats(samples=t["samples"], shards=t["shards"], bytes=t["bytes"])
