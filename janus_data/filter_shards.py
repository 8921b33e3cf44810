"""The filter's shards: a sample's WebDataset members, one task's resumable writing, the samples manifest.

A task's progress is recorded in `<task dir>/progress.json` after every complete shard, so a
killed run resumes at the next shard and writes exactly the bytes a clean run would.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from janus_data.config import FilterConfig
from janus_data.errors import RunDirError
from janus_data.manifest import SAMPLES_KIND, atomic_write, manifest_dir
from janus_data.rundir import SFT_DIR
from janus_data.select import labelled_reason
from janus_data.storage import EXTENSIONS, read_image_bytes
from janus_data.wds import TarShardWriter

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


def read_progress(task_dir: Path) -> dict:
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
    progress = read_progress(task_dir)
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
    return manifest_dir(run_dir, SAMPLES_KIND) / "samples.parquet"


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
