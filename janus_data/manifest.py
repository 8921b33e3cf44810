"""Parquet manifests: append-only part files that appear atomically (temp + rename).

A stage writes one part per rank and batch; readers take the union of all parts, so a
killed stage leaves only whole parts behind and a rerun anti-joins inputs against them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from janus_data.errors import RunDirError

if TYPE_CHECKING:  # polars is imported where a frame is read: the trainers and quick checks need none
    import polars as pl

MANIFEST_DIR = "manifests"
# The manifest kinds: <run>/manifests/<kind>/, one per stage's output.
PROMPTS_KIND = "prompts"  # janus_data.prompts
IMAGES_KIND = "images"  # janus data synth
SCORES_KIND = "scores"  # janus data score
SAMPLES_KIND = "samples"  # janus data filter
EDITS_KIND = "edits"  # janus data synth --task edit: the edit sources (janus_data.edit_manifest)
EDIT_IMAGES_KIND = "edit_images"  # janus data synth --task edit: the candidate edits
EDIT_SCORES_KIND = "edit_scores"  # janus data score --task edit
EDIT_SAMPLES_KIND = "edit_samples"  # janus data filter --task edit


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through a temp file in the same directory, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> Path:
    """Write a DataFrame as one Parquet file that appears atomically."""
    return atomic_write(path, lambda fh: df.write_parquet(fh, compression="zstd", statistics=True))


def manifest_dir(run_dir: Path, kind: str) -> Path:
    """Directory holding the part files of manifest `kind` (prompts, images, scores, ...)."""
    return Path(run_dir) / MANIFEST_DIR / kind


def part_files(run_dir: Path, kind: str) -> list[Path]:
    """Finished part files of a manifest, sorted (temp files never match)."""
    root = manifest_dir(run_dir, kind)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def scan_manifest(run_dir: Path, kind: str, schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
    """Lazy union of every part of a manifest; empty (with `schema`) when none exists yet."""
    import polars as pl

    parts = part_files(run_dir, kind)
    if not parts:
        return pl.LazyFrame(schema=schema or {})
    return pl.scan_parquet([str(p) for p in parts])


def read_manifest(run_dir: Path, kind: str, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Eager union of every part of a manifest."""
    return scan_manifest(run_dir, kind, schema).collect()


def ensure_writable(run_dir: Path) -> Path:
    """Create the run directory if needed and prove it is writable, or raise RunDirError."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(
            f"run directory {run_dir} is not writable: {err.strerror or err}",
            hint="pick a directory you can write to with --run",
        ) from None
    return run_dir


def clean_temp_files(root: Path) -> int:
    """Remove temp files a killed writer left under `root`; return how many."""
    if not root.exists():
        return 0
    n = 0
    for p in root.rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
