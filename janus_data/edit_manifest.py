"""The edit sources of a run: `manifests/edits/edits.parquet` and the prepared images under `edit_sources/`.

An edit source enters a run once: its source image centre-cropped to `synth.image_size`
(JanusEditor's `center_crop`, the shape both editors draw from and the judge's 'original') is
written as `edit_sources/<edit_id>.png`, its reference (if any) the same way as
`edit_sources/<edit_id>.reference.png`, each atomically; then the manifest row naming them is
merged into the edits manifest (atomically, last), as the prompts manifest is. The candidate edits
are planned over this manifest as images over prompts (janus_data.edit_synth).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import polars as pl

from janus_data.errors import RunDirError
from janus_data.manifest import EDITS_KIND, atomic_write, manifest_dir, read_manifest, write_parquet_atomic

EDITS_FILE = "edits.parquet"
SOURCES_DIR = "edit_sources"  # the prepared sources (the judge's originals) and references, relative to the run


@functools.cache
def edits_manifest_schema() -> dict[str, pl.DataType]:
    """The edits manifest's columns: the loaded frame's, with the images as paths relative to the run."""
    return {
        "edit_id": pl.String(),
        "instruction": pl.String(),
        "source_sha256": pl.String(),
        "source_path": pl.String(),
        "reference_path": pl.String(),
        "source_width": pl.Int32(),
        "source_height": pl.Int32(),
        "source": pl.String(),
        "source_id": pl.String(),
        "tags": pl.List(pl.String()),
        "n_occurrences": pl.Int32(),
    }


def source_path(edit_id: str) -> str:
    """Where an edit's prepared source lies, relative to the run."""
    return f"{SOURCES_DIR}/{edit_id}.png"


def reference_path(edit_id: str) -> str:
    """Where an edit's prepared reference lies, relative to the run."""
    return f"{SOURCES_DIR}/{edit_id}.reference.png"


def prepare_image(data: bytes, size: int) -> bytes:
    """Encoded image bytes -> PNG bytes of its centre `size` x `size` crop, as JanusEditor shapes a source."""
    from PIL import Image

    from janus_data.generators.janus_edit import center_crop

    with Image.open(io.BytesIO(data)) as image:
        crop = center_crop(image, size)
    buf = io.BytesIO()
    crop.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_edits(run_dir: Path, edits: pl.DataFrame, size: int) -> int:
    """Prepare the sources (and references) of `edits` (edit_sources' rows) not yet in the run, then merge
    their rows into the edits manifest; returns how many new edits the run gained."""
    run_dir = Path(run_dir)
    known = set(read_edits_manifest(run_dir)["edit_id"])
    new = edits.filter(~pl.col("edit_id").is_in(list(known)))
    for row in new.iter_rows(named=True):
        for rel, data in (
            (source_path(row["edit_id"]), row["source_image"]),
            (reference_path(row["edit_id"]), row["reference_image"]),
        ):
            if data is not None:
                blob = prepare_image(data, size)
                atomic_write(run_dir / rel, lambda fh, blob=blob: fh.write(blob))
    rows = edits.with_columns(
        pl.col("edit_id").map_elements(source_path, return_dtype=pl.String).alias("source_path"),
        pl.when(pl.col("reference_image").is_not_null())
        .then(pl.col("edit_id").map_elements(reference_path, return_dtype=pl.String))
        .alias("reference_path"),
    )
    write_edits_manifest(run_dir, rows)
    return new.height


def write_edits_manifest(run_dir: Path, df: pl.DataFrame) -> Path:
    """Merge `df` into the run's edits manifest (existing rows first, a repeated edit gains tags) atomically."""
    schema = edits_manifest_schema()
    merged = (
        pl.concat([read_edits_manifest(run_dir), df.select(list(schema)).cast(schema)], how="vertical")
        .group_by("edit_id", maintain_order=True)
        .agg(
            *[pl.col(c).first() for c in ("instruction", "source_sha256", "source_path")],
            pl.col("reference_path").drop_nulls().first(),
            *[pl.col(c).first() for c in ("source_width", "source_height", "source")],
            pl.col("source_id").drop_nulls().first(),
            pl.col("tags").explode().drop_nulls().unique().sort(),
            pl.col("n_occurrences").max(),
        )
        .select(list(schema))
        .cast(schema)
    )
    return write_parquet_atomic(merged, manifest_dir(Path(run_dir), EDITS_KIND) / EDITS_FILE)


def read_edits_manifest(run_dir: Path) -> pl.DataFrame:
    """The run's edits manifest; an empty frame when none was written yet."""
    return read_manifest(Path(run_dir), EDITS_KIND, edits_manifest_schema()).cast(edits_manifest_schema())


def read_source(run_dir: Path, edit_id: str) -> bytes:
    """The prepared source image of an edit (the judge's 'original'), or RunDirError."""
    return read_prepared(run_dir, source_path(edit_id), "edit source")


def read_prepared(run_dir: Path, rel: str, what: str) -> bytes:
    """A prepared image of the run (`edit_sources/...`: a source or a reference), or RunDirError naming `what`."""
    path = Path(run_dir) / rel
    try:
        return path.read_bytes()
    except OSError as err:
        raise RunDirError(
            f"{what} {path} is unreadable: {err.strerror or err}",
            hint="rerun `janus data synth --task edit --edits FILE` to write it again",
        ) from None
