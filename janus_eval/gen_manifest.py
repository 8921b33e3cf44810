"""The generations manifest of `janus generate` (docs/generate.md, 'Output'): one row per image drawn.

    OUT/images/<gen_id>.png                       every image, written atomically
    OUT/manifests/generations/part-*.parquet      one part per batch of chains, after its images
    OUT/generate.json                             the settings the images were drawn with

A part holds whole chains, and appears (atomically) only after every image it names is on
disk: a killed run loses at most the batch in flight, and a rerun draws the chains no part
holds. A chain whose image file went missing is dropped from its part and drawn again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from janus_data.errors import RunDirError
from janus_data.eval_results import GENERATIONS_KIND
from janus_data.manifest import atomic_write, clean_temp_files, manifest_dir, part_files, write_parquet_atomic

IMAGES_DIR = "images"
SETTINGS_FILE = "generate.json"
GENERATIONS_SCHEMA: dict[str, pl.DataType] = {
    "gen_id": pl.String(),
    "checkpoint": pl.String(),
    "label": pl.String(),
    "prompt_id": pl.String(),
    "prompt": pl.String(),
    "tags": pl.List(pl.String()),
    "metadata": pl.String(),
    "sample": pl.Int32(),
    "round": pl.Int32(),
    "seed": pl.Int64(),
    "image_path": pl.String(),
    "answer": pl.String(),
    "reason": pl.String(),
    "final": pl.Boolean(),
    "context_gen_id": pl.String(),
}
CHAIN_KEY = ("prompt_id", "sample")


def gen_id_for(prompt_id: str, sample: int, round_: int) -> str:
    """Image id: '<prompt_id>-<sample>-r<round>'."""
    return f"{prompt_id}-{sample}-r{round_}"


def image_path_for(gen_id: str) -> str:
    """Where image `gen_id` lives, relative to OUT."""
    return f"{IMAGES_DIR}/{gen_id}.png"


def read_generations(out: Path) -> pl.DataFrame:
    """Every row of OUT's generations manifest (an empty frame with the schema when there is none)."""
    parts = part_files(out, GENERATIONS_KIND)
    if not parts:
        return pl.DataFrame(schema=GENERATIONS_SCHEMA)
    return pl.read_parquet([str(p) for p in parts]).cast(GENERATIONS_SCHEMA)


def require_generations(out: Path, columns: list[str]) -> pl.DataFrame:
    """`columns` of OUT's generations manifest, one row per image (gen_id), or a RunDirError when it has none."""
    parts = part_files(out, GENERATIONS_KIND)
    if not parts:
        raise RunDirError(f"{out} has no generations manifest", hint="draw its images first: janus generate --out")
    return pl.scan_parquet([str(p) for p in parts]).select(columns).unique("gen_id", keep="first").collect()


def write_part(out: Path, rows: pl.DataFrame) -> Path:
    """One batch's rows as a part named by its gen_ids (a redrawn batch replaces its own part)."""
    digest = hashlib.sha1("|".join(rows["gen_id"].to_list()).encode()).hexdigest()[:16]
    path = manifest_dir(out, GENERATIONS_KIND) / f"part-{digest}.parquet"
    return write_parquet_atomic(rows.select(list(GENERATIONS_SCHEMA)).cast(GENERATIONS_SCHEMA), path)


def clean_out(out: Path) -> int:
    """Remove the temp files a killed run left (images and parts); return how many."""
    return clean_temp_files(Path(out) / IMAGES_DIR) + clean_temp_files(manifest_dir(out, GENERATIONS_KIND))


def drop_incomplete_chains(out: Path) -> int:
    """Drop from their parts the chains with an image file missing (deleted by hand); return how many.

    Each affected part is rewritten atomically without them (removed when nothing is left), so the
    next plan draws them again and no gen_id is ever listed twice."""
    dropped = 0
    for part in part_files(out, GENERATIONS_KIND):
        rows = pl.read_parquet(part)
        missing = [not (Path(out) / p).is_file() for p in rows["image_path"].to_list()]
        if not any(missing):
            continue
        bad = rows.filter(pl.Series(missing)).select(CHAIN_KEY).unique()
        keep = rows.join(bad, on=list(CHAIN_KEY), how="anti")
        dropped += bad.height
        if keep.height:
            write_parquet_atomic(keep, part)
        else:
            part.unlink()
    return dropped


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the drawing settings in OUT/generate.json, or refuse a rerun with other ones (one line).

    Images drawn with other settings would mix into one manifest; `n`, the prompts, batch size
    and loop may change (they add chains or change speed, not what a chain draws)."""
    path = Path(out) / SETTINGS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = None
        if saved == settings:
            return
        if isinstance(saved, dict):
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            what = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in diff[:3])
        else:
            what = f"{SETTINGS_FILE} is unreadable"
        raise RunDirError(
            f"{out} holds images drawn with other settings ({what})",
            hint="pass a new --out, or delete the directory to redraw",
        )
    text = json.dumps(settings, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))
