"""Edit sources: (source image, instruction[, reference edited image]) rows for the image-editing task.

Four formats (docs/edit.md), each with the columns or keys `source_image`, `instruction` and,
optionally, `reference_image`, `id`, `tags`:
- JSON Lines: one object per line, images as paths relative to the file's folder;
- Parquet: image columns as bytes, paths (relative to the file's folder) or `{bytes, path}`
  structs (what `datasets` writes for its Image feature);
- WebDataset: a `.tar` or a folder of them, `<key>.png|jpg|jpeg|webp` the source image,
  `<key>.reference.<ext>` the reference, the instruction in `<key>.json` or `<key>.txt`; read
  with janus_data.wds (no pickle, nothing extracted or written);
- a folder written by `datasets` `save_to_disk`, images as Image features (or paths).

An edit's id is a hash of its source image's bytes and its normalised instruction, so the same
edit gets the same id from any format. Bad input fails as prompts do (janus_data/prompts.py):
one line naming the file and the line, row or sample; empty instructions are dropped and
duplicates merged, both counted. JSON Lines and WebDataset are checked without polars or PIL.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janus_data.edit_rows import EditSourceError, RawEdit, read_edit_rows
from janus_data.errors import JanusError, one_line
from janus_data.prompts import normalise_prompt

if TYPE_CHECKING:
    import polars as pl

__all__ = ["EditSourceError", "EditStats", "RawEdit", "check_edit_source", "edit_id_for", "edit_schema", "load_edits"]


@dataclass(frozen=True)
class EditStats:
    """Counts from one `load_edits` call; unique = rows_read - empty_dropped - bad_images_skipped - duplicates_merged."""

    rows_read: int
    empty_dropped: int
    duplicates_merged: int
    unique: int
    with_reference: int
    bad_images_skipped: int = 0


@functools.cache
def edit_schema() -> dict[str, pl.DataType]:
    """The columns of a loaded edit source, one row per unique edit."""
    import polars as pl

    return {
        "edit_id": pl.String(),
        "instruction": pl.String(),
        "source_image": pl.Binary(),
        "source_sha256": pl.String(),
        "source_width": pl.Int32(),
        "source_height": pl.Int32(),
        "reference_image": pl.Binary(),
        "source": pl.String(),
        "source_id": pl.String(),
        "tags": pl.List(pl.String()),
        "n_occurrences": pl.Int32(),
    }


def edit_id_for(source_sha256: str, instruction: str) -> str:
    """Stable id: the first 16 hex of sha256(the source image's sha256 hex, a newline, the normalised instruction).

    >>> edit_id_for("ab" * 32, "make it  red") == edit_id_for("ab" * 32, " make it red ")
    True
    """
    text = f"{source_sha256}\n{normalise_prompt(instruction)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- images


class _BadImage(Exception):
    """An image that cannot be read or decoded: the message names it."""


def _image_bytes(value: Any, base: Path, column: str) -> bytes:
    """The encoded bytes of one image cell: bytes as they are, a path read (relative to `base`), {bytes, path}."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if value is None:
            raise _BadImage(f"{column} has neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    file = Path(value) if Path(value).is_absolute() else base / value
    try:
        return file.read_bytes()
    except OSError as err:
        raise _BadImage(f"{column} {value}: {err.strerror or err}") from None


def _image_size(data: bytes, column: str) -> tuple[int, int]:
    """(width, height) of fully decoded image bytes; _BadImage when PIL cannot decode them."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception as err:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
        raise _BadImage(f"{column} cannot be decoded ({type(err).__name__}: {one_line(err, 120)})") from None


# ---------------------------------------------------------------- loading


def load_edits(path: str | Path, skip_bad_images: bool = False) -> tuple[pl.DataFrame, EditStats]:
    """Read an edit source into `edit_schema()` rows, one per unique edit, in first-seen order.

    Every image is read and decoded; one that cannot be is an EditSourceError naming its row,
    or, with `skip_bad_images`, a dropped row counted in `bad_images_skipped`.
    """
    source = str(path)
    rows, base = read_edit_rows(Path(path), source)
    index: dict[str, int] = {}
    out: dict[str, list] = {c: [] for c in edit_schema()}
    tags: list[set[str]] = []
    n_rows = n_empty = n_bad = 0
    for row in rows:
        n_rows += 1
        text = normalise_prompt(row.instruction) if isinstance(row.instruction, str) else ""
        if not text:
            n_empty += 1
            continue
        try:
            data = _image_bytes(row.source_image, base, "source_image")
            size = _image_size(data, "source_image")
            ref = None
            if row.reference_image is not None:
                ref = _image_bytes(row.reference_image, base, "reference_image")
                _image_size(ref, "reference_image")
        except _BadImage as err:
            if skip_bad_images:
                n_bad += 1
                continue
            raise EditSourceError(
                f"{source}: {row.where}: {err}", hint="fix or remove that row, or skip such rows (skip_bad_images)"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        edit_id = edit_id_for(digest, text)
        i = index.get(edit_id)
        if i is not None:
            out["n_occurrences"][i] += 1
            tags[i].update(row.tags)
            for column, value in (("source_id", row.source_id), ("reference_image", ref)):
                if out[column][i] is None:
                    out[column][i] = value
            continue
        index[edit_id] = len(tags)
        tags.append(set(row.tags))
        new = {
            "edit_id": edit_id,
            "instruction": text,
            "source_image": data,
            "source_sha256": digest,
            "source_width": size[0],
            "source_height": size[1],
            "reference_image": ref,
            "source": source,
            "source_id": row.source_id,
            "n_occurrences": 1,
        }
        for column, value in new.items():
            out[column].append(value)
    if not tags:
        raise _no_edits(source, n_rows, n_bad)
    import polars as pl
    import pyarrow as pa

    out["tags"] = pa.array([sorted(t) for t in tags], type=pa.list_(pa.string()))
    df = pl.DataFrame(out, schema=edit_schema())
    stats = EditStats(
        rows_read=n_rows,
        empty_dropped=n_empty,
        duplicates_merged=n_rows - n_empty - n_bad - len(tags),
        unique=len(tags),
        with_reference=int(df["reference_image"].is_not_null().sum()),
        bad_images_skipped=n_bad,
    )
    return df, stats


def check_edit_source(path: str | Path) -> None:
    """Raise the EditSourceError `load_edits` would for the source's structure and missing image files.

    Images are not decoded and no frame is built: JSON Lines and WebDataset need neither polars
    nor PIL, so a bad file fails in milliseconds; Parquet needs polars, `datasets` folders datasets.
    """
    source = str(path)
    rows, base = read_edit_rows(Path(path), source)
    n_rows = n_edits = 0
    for row in rows:
        n_rows += 1
        if not (isinstance(row.instruction, str) and row.instruction.strip()):
            continue
        n_edits += 1
        for column in ("source_image", "reference_image"):
            value = getattr(row, column)
            value = (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value
            if isinstance(value, str) and not (Path(value) if Path(value).is_absolute() else base / value).is_file():
                raise EditSourceError(
                    f"{source}: {row.where}: {column} {value} not found",
                    hint=f"image paths are relative to {base}",
                )
    if not n_edits:
        raise _no_edits(source, n_rows, 0)


def _no_edits(source: str, n_rows: int, n_bad: int) -> JanusError:
    if n_rows == 0:
        detail = "it is empty"
    elif n_bad:
        detail = f"{n_bad} of {n_rows} rows have unreadable images, the others blank instructions"
    else:
        detail = f"all {n_rows} rows have blank instructions"
    return EditSourceError(f"{source} holds no edits", hint=f"{detail}; add at least one row with an instruction")
