"""The filter's shards: a sample's WebDataset members, one task's resumable writing, the samples manifest.

A task's progress is recorded in `<task dir>/progress.json` after every complete shard, so a
killed run resumes at the next shard and writes exactly the bytes a clean run would.

One writer serves both filters: a `FilterKind` says what differs between the text-to-image
samples (`T2I`: sft/, manifests/samples) and the edit samples (`EDIT`: sft_edit/,
manifests/edit_samples; every sample also carries its prepared source image and its codes).
Task names are distinct across kinds, so a task names its kind (`kind_of`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from janus_data.config import FilterConfig
from janus_data.edit_manifest import read_prepared, read_source
from janus_data.errors import RunDirError
from janus_data.janus_format import EDIT_TASKS, TASKS
from janus_data.manifest import (
    EDIT_IMAGES_KIND,
    EDIT_SAMPLES_KIND,
    EDIT_SCORES_KIND,
    EDITS_KIND,
    IMAGES_KIND,
    PROMPTS_KIND,
    SAMPLES_KIND,
    SCORES_KIND,
    atomic_write,
    manifest_dir,
)
from janus_data.rundir import SFT_DIR, SFT_EDIT_DIR
from janus_data.select import labelled_reason
from janus_data.storage import EXTENSIONS, read_image_bytes
from janus_data.wds import TarShardWriter

PROGRESS_FILE = "progress.json"
Roles = tuple[tuple[str, str, bool], ...]
# Which images of a sample go into the shard, under which member prefix (and column suffix), and
# whether the trainer embeds them through the generation path (then their VQ codes go in too).
IMAGE_ROLES: dict[str, Roles] = {
    "t2i": (("image", "", True),),
    "judge": (("image", "", False),),
    "regen": (("bad", "", True), ("good", "_good", True)),
}
# An edit sample starts with its prepared source (`edit_sources/<edit_id>.png`), always with codes.
SOURCE_ROLE = ("source", "_source", True)
EDIT_IMAGE_ROLES: dict[str, Roles] = {
    edit_task: (SOURCE_ROLE, *IMAGE_ROLES[task]) for task, edit_task in zip(TASKS, EDIT_TASKS, strict=True)
}
# What a task's sample is: a target image (Task I), a labelled image (Task II), a bad -> good pair (Task III).
SHAPES = {**dict(zip(TASKS, ("target", "judge", "regen"), strict=True))}
SHAPES |= {e: SHAPES[t] for t, e in zip(TASKS, EDIT_TASKS, strict=True)}
SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Utf8,
    "task": pl.Utf8,
    "prompt_id": pl.Utf8,
    "image_ids": pl.List(pl.Utf8),
    "scores": pl.List(pl.Float64),
    "label": pl.Utf8,
    "shard": pl.Utf8,
}
EDIT_SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    ("edit_id" if k == "prompt_id" else k): v for k, v in SAMPLE_SCHEMA.items()
}


@dataclass(frozen=True)
class FilterKind:
    """What differs between the text-to-image filter and the edit filter; the writing is shared."""

    name: str
    """`janus data filter --task` value: 't2i' or 'edit'."""
    tasks: tuple[str, ...]
    """The kind's SFT tasks, in the order they are written and listed."""
    out_dir: str
    """The shards' directory, relative to the run (a task per subdirectory, state.json beside them)."""
    inputs: tuple[str, ...]
    """The manifest kinds the samples are a function of (fingerprinted by their part files)."""
    samples_kind: str
    """The samples manifest's kind (manifests/<kind>/<kind>.parquet)."""
    id_field: str
    """The record's and samples manifest's name of the group id (prompt_id / edit_id)."""
    text_field: str
    """The record's name of the group's text (prompt / instruction)."""
    side_scores: bool
    """Records carry S_flw and S_psv per image besides the score (edits)."""
    tag: str
    """Fingerprint prefix (with the format version)."""
    version: int
    """Format version: a build of another version is rebuilt."""
    noun: str
    """What one pooled item is, for messages: 'images' or 'edits'."""
    group: str
    """What a group is, for messages: 'prompts' or 'edits'."""

    def roles(self, task: str) -> Roles:
        return (EDIT_IMAGE_ROLES if self.name == "edit" else IMAGE_ROLES)[task]

    def samples_path(self, run_dir: Path) -> Path:
        return manifest_dir(run_dir, self.samples_kind) / f"{self.samples_kind}.parquet"

    def schema(self) -> dict[str, pl.DataType]:
        return EDIT_SAMPLE_SCHEMA if self.side_scores else SAMPLE_SCHEMA


T2I = FilterKind(
    name="t2i",
    tasks=TASKS,
    out_dir=SFT_DIR,
    inputs=(PROMPTS_KIND, IMAGES_KIND, SCORES_KIND),
    samples_kind=SAMPLES_KIND,
    id_field="prompt_id",
    text_field="prompt",
    side_scores=False,
    tag="janus-filter",
    version=2,  # 2: labels follow the judge's own answer (judge_labels), generator roles
    noun="images",
    group="prompts",
)
EDIT = FilterKind(
    name="edit",
    tasks=EDIT_TASKS,
    out_dir=SFT_EDIT_DIR,
    inputs=(EDITS_KIND, EDIT_IMAGES_KIND, EDIT_SCORES_KIND),
    samples_kind=EDIT_SAMPLES_KIND,
    id_field="edit_id",
    text_field="instruction",
    side_scores=True,
    tag="janus-filter-edit",
    version=1,
    noun="edits",
    group="edits",
)
KINDS = {k.name: k for k in (T2I, EDIT)}


def kind_of(task: str) -> FilterKind:
    """The kind a task belongs to (task names are distinct across kinds)."""
    return EDIT if task in EDIT_TASKS else T2I


def _record(task: str, row: dict, fcfg: FilterConfig, vq_model: str) -> dict:
    """The sample's JSON record (what the trainer reads besides the images and codes)."""
    kind, shape = kind_of(task), SHAPES[task]
    xs = ("", "_good") if shape == "regen" else ("",)
    label = {"target": None, "judge": row.get("label"), "regen": "No"}[shape]
    record = {
        "key": row["key"],
        "task": task,
        kind.id_field: row["prompt_id"],
        kind.text_field: row["prompt"],
        "image_ids": [row[f"image_id{x}"] for x in xs],
        "generators": [row[f"generator{x}"] for x in xs],
        "scores": [row[f"score{x}"] for x in xs],
        "label": label,
        "reason": labelled_reason(label, row["reason"]) if label else None,
        "threshold": fcfg.threshold,
        "vq_model": vq_model if any(vq for _, _, vq in kind.roles(task)) else None,
    }
    if kind.side_scores:  # an unscored reference has none
        record |= {f"scores_{s}": [row.get(f"score_{s}{x}") for x in xs] for s in ("flw", "psv")}
    return record


def _image_bytes(run_dir: Path, row: dict, suffix: str) -> bytes:
    if suffix == SOURCE_ROLE[1]:  # the prepared source the editors and the judge saw
        return read_source(run_dir, row["prompt_id"])
    if row.get(f"path{suffix}") is not None:  # a reference edit: a file of its own, no manifest sha256
        return read_prepared(run_dir, row[f"path{suffix}"], "reference edit")
    data = read_image_bytes(run_dir, row[f"shard{suffix}"], row[f"offset{suffix}"], row[f"length{suffix}"])
    if hashlib.sha256(data).hexdigest() != row[f"sha256{suffix}"]:
        raise RunDirError(
            f"image {row[f'image_id{suffix}']} no longer matches its manifest sha256",
            hint="its shard was changed after scoring: rerun `janus data synth` and `janus data score` "
            "(with --task edit for a candidate edit)",
        )
    return data


def npy_bytes(codes: np.ndarray) -> bytes:
    """A numpy array as .npy bytes (no pickle: plain integer array)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(codes), allow_pickle=False)
    return buf.getvalue()


def sample_members(task: str, rows: list[dict], run_dir: Path, encode, fcfg: FilterConfig, vq_model: str):
    """(key, {extension: bytes}) of each row: JSON, image bytes, and VQ codes where the trainer needs them."""
    roles = kind_of(task).roles(task)
    blobs, codes = {}, {}
    for role, suffix, needs_codes in roles:
        # An edit's prepared source repeats across its samples: read and encoded once per batch.
        keys = [r["prompt_id"] if role == SOURCE_ROLE[0] else i for i, r in enumerate(rows)]
        first: dict = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        read = {key: _image_bytes(run_dir, rows[i], suffix) for key, i in first.items()}
        blobs[role] = [read[key] for key in keys]
        if needs_codes:
            encoded = dict(zip(read, encode([Image.open(io.BytesIO(b)) for b in read.values()]), strict=True))
            codes[role] = [encoded[key] for key in keys]
    out = []
    for i, row in enumerate(rows):
        record = _record(task, row, fcfg, vq_model)
        members = {"json": json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()}
        for role, suffix, needs_codes in roles:
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
    needs_codes = any(vq for _, _, vq in kind_of(task).roles(task))
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
    return [f"{kind_of(task).out_dir}/{task}/{s['name']}" for s in shards for _ in range(s["samples"])]


def samples_path(run_dir: Path, kind: FilterKind = T2I) -> Path:
    """The kind's samples manifest: manifests/samples/samples.parquet, manifests/edit_samples/edit_samples.parquet."""
    return kind.samples_path(run_dir)


def samples_manifest(samples: dict[str, pl.DataFrame], shards: dict[str, list[dict]]) -> pl.DataFrame:
    """One row per sample: key, task, prompt_id (edit_id for edits), image_ids, scores, label, shard."""
    frames = []
    kind = kind_of(next(iter(samples), "t2i"))
    for task, df in samples.items():
        shape = SHAPES[task]
        xs = ("", "_good") if shape == "regen" else ("",)
        label = pl.col("label") if shape == "judge" else pl.lit("No" if shape == "regen" else None, pl.Utf8)
        frames.append(
            df.select(
                "key",
                pl.lit(task).alias("task"),
                pl.col("prompt_id").alias(kind.id_field),
                pl.concat_list([f"image_id{x}" for x in xs]).alias("image_ids"),
                pl.concat_list([pl.col(f"score{x}").cast(pl.Float64) for x in xs]).alias("scores"),
                label.alias("label"),
                pl.Series("shard", shard_column(task, shards[task]), pl.Utf8),
            )
        )
    return pl.concat(frames).cast(kind.schema())
