"""The raw rows of an edit source: JSON Lines, Parquet, WebDataset shards or a saved `datasets` folder.

Each reader yields `RawEdit`s, their fields' types checked but nothing normalised, no image read;
janus_data.edit_sources reads and decodes the images, normalises, dedupes and builds the frame.
JSON Lines and shards need neither polars nor PIL; every error is an EditSourceError that names
the file and the line (JSON Lines, 1-based), row (tables, 0-based) or sample (shards).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janus_data.errors import PromptError
from janus_data.prompt_sources import _clean_tags, _decode_utf8, _lines, _read_parquet, load_saved_split

if TYPE_CHECKING:
    import polars as pl

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_COLUMNS = ("source_image", "instruction", "reference_image", "id", "tags")
_EXAMPLE = (
    'e.g. {"source_image": "images/0.png", "instruction": "make the car red", "reference_image": "images/0_edited.png"}'
)
_RENAME = "rename the columns: df.rename({'input': 'source_image', 'text': 'instruction', 'output': 'reference_image'})"
_SHARD_HINT = "a shard holds flat <key>.<ext> files: <key>.png (source), <key>.reference.png, <key>.json or <key>.txt"


class EditSourceError(PromptError):
    """An edit source is missing, malformed, names an unreadable image, or holds no usable edit."""


@dataclass
class RawEdit:
    """One row as its source holds it: images as bytes, paths or {bytes, path}; `where` names it in errors."""

    where: str
    instruction: Any
    source_image: Any
    reference_image: Any = None
    source_id: str | None = None
    tags: list[str] = field(default_factory=list)


def read_edit_rows(path: Path, source: str) -> tuple[Iterator[RawEdit], Path]:
    """(the raw rows of an edit source, the folder its relative image paths start from)."""
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return _dataset_rows(path, source), path
        shards = sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))
        if not shards:
            raise EditSourceError(
                f"{source} is a folder but neither a saved `datasets` dataset nor one holding .tar shards",
                hint="pass a .jsonl, .parquet or .tar file, a folder of .tar shards, or a Dataset.save_to_disk folder",
            )
        return _shard_rows(shards, source, single=False), path
    if not path.is_file():
        raise EditSourceError(f"edit source not found: {source}", hint="check the path")
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _jsonl_rows(_read_bytes(path, source), source), path.parent
    if suffix == ".parquet":
        return _table_rows(_read_parquet(path, source, EditSourceError), source, _RENAME), path.parent
    if suffix == ".tar":
        return _shard_rows([path], source, single=True), path.parent
    raise EditSourceError(
        f"{source}: unknown edit source kind {suffix or '(no suffix)'}",
        hint="use .jsonl, .parquet, .tar, a folder of .tar shards, or a Dataset.save_to_disk folder",
    )


def _read_bytes(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise EditSourceError(
            f"cannot read edit source {source}: {err.strerror or err}", "check its permissions"
        ) from None


def _jsonl_rows(data: bytes, source: str) -> Iterator[RawEdit]:
    try:
        text = _decode_utf8(data, source)
    except PromptError as err:
        raise EditSourceError(err.message, err.hint) from None
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{source}: line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise EditSourceError(f"{where} is not valid JSON ({err.msg} at column {err.colno})", _EXAMPLE) from None
        if not isinstance(obj, dict):
            raise EditSourceError(f"{where} is not a JSON object", hint=_EXAMPLE)
        yield _checked(where, obj, _EXAMPLE, f"line {n}")


def _checked(where: str, obj: dict, hint: str, label: str) -> RawEdit:
    """A RawEdit from one JSON object or table row, its fields' types checked."""
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise EditSourceError(f"{where} has an 'instruction' that is not a string", hint=hint)
    if "instruction" not in obj:
        raise EditSourceError(f"{where} has no 'instruction'", hint=hint)
    images = {}
    for key in ("source_image", "reference_image"):
        value = obj.get(key)
        ok = value is None or (isinstance(value, str) and value) or isinstance(value, (bytes, bytearray, dict))
        if not ok:
            raise EditSourceError(f"{where} has a '{key}' that is not an image path or bytes", hint=hint)
        images[key] = value
    if images["source_image"] is None:
        raise EditSourceError(f"{where} has no 'source_image'", hint=hint)
    raw_id = obj.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise EditSourceError(f"{where} has an 'id' that is not a string or integer", hint=hint)
    tags = _clean_tags(obj.get("tags"), split_str=False)
    if tags is None:
        raise EditSourceError(f"{where} has 'tags' that are not a string or a list of strings", hint=hint)
    return RawEdit(label, instruction, images["source_image"], images["reference_image"], _text_id(raw_id), tags)


def _text_id(raw: Any) -> str | None:
    return None if raw is None else str(raw)


def _table_rows(df: pl.DataFrame, source: str, hint: str) -> Iterator[RawEdit]:
    """Rows of a table with 'source_image' and 'instruction' columns (images as bytes, paths or {bytes, path})."""
    import polars as pl

    missing = [c for c in ("source_image", "instruction") if c not in df.columns]
    if missing:
        present = ", ".join(repr(c) for c in df.columns) or "none"
        raise EditSourceError(f"{source} has no {' or '.join(map(repr, missing))} column (columns: {present})", hint)
    if df.schema["instruction"] not in (pl.String, pl.Null):
        raise EditSourceError(f"column 'instruction' of {source} holds {df.schema['instruction']}, not text", hint=hint)
    if "id" in df.columns:
        df = df.with_columns(pl.col("id").cast(pl.String, strict=False))
    columns = {c: df[c].to_list() if c in df.columns else [None] * df.height for c in _COLUMNS}
    for i in range(df.height):
        row = {c: values[i] for c, values in columns.items()}
        yield _checked(f"{source}: row {i}", row, hint, f"row {i}")


def _dataset_rows(path: Path, source: str) -> Iterator[RawEdit]:
    """Rows of a `datasets` save_to_disk folder (its 'train' split, or its only one); Image features as {bytes, path}."""
    import datasets

    loaded = load_saved_split(path, source, EditSourceError, "edits_ds")
    wanted = [c for c in _COLUMNS if c in loaded.column_names]
    loaded = loaded.select_columns(wanted)
    for column, feature in loaded.features.items():
        if isinstance(feature, datasets.Image):  # the encoded bytes as stored, not a decoded PIL image
            loaded = loaded.cast_column(column, datasets.Image(decode=False))
    hint = "ds.rename_columns({'input': 'source_image', 'text': 'instruction'}).save_to_disk(...)"
    yield from _table_rows(loaded.to_polars(), source, hint)


def _shard_rows(shards: list[Path], source: str, single: bool) -> Iterator[RawEdit]:
    """Samples of WebDataset shards: `<key>.<image ext>`, `<key>.reference.<ext>`, `<key>.json` and/or `<key>.txt`."""
    from janus_data.wds import UnsafeShardError, iter_samples

    samples = iter_samples(shards)
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except UnsafeShardError as err:
            raise EditSourceError(err.message, hint=_SHARD_HINT) from None
        yield _sample_row(sample, source, single)


def _sample_row(sample: dict, source: str, single: bool) -> RawEdit:
    key, shard = sample["__key__"], sample["__shard__"]
    label = f"sample {key!r}" if single else f"sample {key!r} of {shard}"
    where = f"{source}: {label}"
    found = {ext: sample[ext] for ext in _IMAGE_EXTS if ext in sample}
    refs = {ext: sample[f"reference.{ext}"] for ext in _IMAGE_EXTS if f"reference.{ext}" in sample}
    if len(found) != 1 or len(refs) > 1:
        raise EditSourceError(f"{where} has {len(found)} source images and {len(refs)} references", _SHARD_HINT)
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EditSourceError(f"{where}: its .json is not valid JSON ({err})", hint=_SHARD_HINT) from None
        if not isinstance(meta, dict):
            raise EditSourceError(f"{where}: its .json is not a JSON object", hint=_SHARD_HINT)
    if "instruction" not in meta and "txt" in sample:
        try:
            meta = {**meta, "instruction": sample["txt"].decode("utf-8")}
        except UnicodeDecodeError:
            raise EditSourceError(f"{where}: its .txt is not UTF-8 text", hint=_SHARD_HINT) from None
    row = {**meta, "source_image": next(iter(found.values())), "reference_image": next(iter(refs.values()), None)}
    row.setdefault("id", key)
    return _checked(where, row, _SHARD_HINT, label)
