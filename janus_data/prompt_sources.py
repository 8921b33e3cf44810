"""Prompt sources: the raw rows of a JSONL, text, Parquet, CSV/TSV file or a saved `datasets` directory.

Each reader yields `Row`s, before any normalisation; `janus_data.prompts` normalises, dedupes and
builds the frame. JSON Lines and text files need neither polars nor pyarrow, so a bad one fails
before any heavy import; every error is a PromptError that names the file (and the line).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janus_data.errors import PromptError, one_line

if TYPE_CHECKING:
    import polars as pl

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_CSV_TAG_SPLIT = re.compile(r"[,;]")
_MAX_ERROR_CHARS = 200

# One raw row before normalisation: (prompt text or None, user id or None, tags, JSON metadata or None).
Row = tuple[Any, Any, Any, str | None]


def read_rows(p: Path, source: str) -> Iterator[Row]:
    """The raw rows of a prompt source, by its kind (a `datasets` directory, or a file's suffix)."""
    if p.is_dir():
        return _dataset_rows(p, source)
    if not p.exists():
        raise PromptError(
            f"prompt file not found: {source}",
            hint="check the path; relative paths start from the current directory",
        )
    suffix = p.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _jsonl_rows(_read_text(p, source), source)
    if suffix == ".parquet":
        return _frame_rows(_read_parquet(p, source), source, split_str_tags=False)
    if suffix in _CSV_SEPARATORS:
        return _frame_rows(_read_csv(p, source, _CSV_SEPARATORS[suffix]), source, split_str_tags=True)
    return ((line, None, None, None) for line in _lines(_read_text(p, source)))


def _read_bytes(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise PromptError(
            f"cannot read prompt file {source}: {err.strerror or err}",
            hint="check the file's permissions",
        ) from None


def _decode_utf8(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PromptError(
            f"{source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, line {line})",
            hint=f"re-encode it, e.g. iconv -f latin1 -t utf-8 {source} > fixed{Path(source).suffix}",
        ) from None
    return text.removeprefix("\ufeff")


def _read_text(path: Path, source: str) -> str:
    return _decode_utf8(_read_bytes(path, source), source)


def _lines(text: str) -> list[str]:
    """Split on \\n, \\r\\n or \\r only (not U+2028 and friends, which may sit inside a prompt)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not open an empty one
    return lines


def _jsonl_rows(text: str, source: str) -> Iterator[Row]:
    """One row per non-blank JSON Lines line; errors name the 1-based line number.

    GenEval's metadata lines ({"tag": "counting", "include": [...], "prompt": ...}) keep their
    `tag` among the tags, and every line is kept whole, as written, as the row's JSON `metadata`.
    """
    example = 'write one object per line, e.g. {"prompt": "a red cube", "id": "p1", "tags": ["color"]}'
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError(
                f"{source}: line {n} is not valid JSON ({err.msg} at column {err.colno})", hint=example
            ) from None
        if not isinstance(obj, dict):
            raise PromptError(f"{source}: line {n} is not a JSON object", hint=example)
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise PromptError(f"{source}: line {n} has no 'prompt' string", hint=example)
        raw_id = obj.get("id")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise PromptError(f"{source}: line {n} has an 'id' that is not a string or integer", hint=example)
        tags = _clean_tags(obj.get("tags"), split_str=False)
        if tags is None:
            raise PromptError(f"{source}: line {n} has 'tags' that are not a string or a list of strings", hint=example)
        raw_tag = obj.get("tag")
        if raw_tag is not None and not isinstance(raw_tag, str):
            raise PromptError(f"{source}: line {n} has a 'tag' that is not a string", hint=example)
        tag = _clean_tags(raw_tag, split_str=False) or []
        yield prompt, None if raw_id is None else str(raw_id), [*tags, *tag], line.strip()


def _clean_tags(value: Any, split_str: bool) -> list[str] | None:
    """Tags as a list of stripped, non-empty strings; None when `value` has the wrong type."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = _CSV_TAG_SPLIT.split(value) if split_str else [value]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) or v is None for v in value):
        parts = [v for v in value if v is not None]
    else:
        return None
    return [t for t in (p.strip() for p in parts) if t]


def load_saved_split(path: Path, source: str, error: type[PromptError], example: str):
    """A `save_to_disk` folder's Dataset: its 'train' split, or its only one; `error` (one line) otherwise."""
    import datasets  # lazy: importing datasets costs about half a second

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise error(
            f"cannot load {source} as a saved dataset: {one_line(err, _MAX_ERROR_CHARS)}",
            hint="re-save it with Dataset.save_to_disk or DatasetDict.save_to_disk",
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    splits = list(loaded)
    if "train" not in loaded and len(splits) != 1:
        raise error(
            f"{source} holds splits {', '.join(splits)} and no 'train' split",
            hint=f"save the split you want on its own, e.g. dd[{splits[0]!r}].save_to_disk('{example}')",
        )
    return loaded["train" if "train" in loaded else splits[0]]


def _read_parquet(path: Path, source: str, error: type[PromptError] = PromptError) -> pl.DataFrame:
    """The Parquet file as a frame, or `error` (one line) for a file polars cannot read."""
    import polars as pl

    try:
        return pl.read_parquet(path)
    except Exception as err:
        raise error(
            f"cannot read {source} as Parquet: {one_line(err, _MAX_ERROR_CHARS)}",
            hint="check that it is a whole Parquet file (a copy cut short cannot be read)",
        ) from None


def _read_csv(path: Path, source: str, separator: str) -> pl.DataFrame:
    data = _read_bytes(path, source)
    _decode_utf8(data, source)  # the same clear message as for text files, before polars sees it
    if not data.strip():
        raise PromptError(f"{source} holds no prompts", hint="it is empty; add a 'prompt' header and rows")
    import polars as pl

    try:
        return pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False)
    except Exception as err:
        kind = "TSV" if separator == "\t" else "CSV"
        raise PromptError(
            f"cannot read {source} as {kind}: {one_line(err, _MAX_ERROR_CHARS)}",
            hint='quote fields that hold the separator or a newline with double quotes ("a, b")',
        ) from None


def _require_prompt_column(columns: list[str], source: str, rename_hint: str = "") -> None:
    if "prompt" not in columns:
        present = ", ".join(repr(c) for c in columns) or "none"
        raise PromptError(
            f"{source} has no 'prompt' column (columns: {present})",
            hint=rename_hint
            or "rename the column holding the text to 'prompt' (polars: df.rename({'text': 'prompt'}))",
        )


def _frame_rows(df: pl.DataFrame, source: str, split_str_tags: bool, rename_hint: str = "") -> Iterator[Row]:
    """Rows of a table with a 'prompt' column and optional 'id' and 'tags' columns."""
    import polars as pl

    _require_prompt_column(df.columns, source, rename_hint)
    if df.schema["prompt"] != pl.String:
        raise PromptError(
            f"column 'prompt' of {source} holds {df.schema['prompt']}, not text",
            hint="store the prompts as strings",
        )
    n = df.height
    prompts = df["prompt"].to_list()
    ids: list[Any] = [None] * n
    if "id" in df.columns:
        try:
            ids = df["id"].cast(pl.String).to_list()
        except Exception:
            raise PromptError(
                f"column 'id' of {source} holds {df.schema['id']}, which cannot be read as text",
                hint="store ids as strings or integers",
            ) from None
    tags: list[Any] = df["tags"].to_list() if "tags" in df.columns else [None] * n
    for i in range(n):
        row_tags = _clean_tags(tags[i], split_str=split_str_tags)
        if row_tags is None:
            raise PromptError(
                f"column 'tags' of {source} holds {df.schema['tags']}, not strings or lists of strings",
                hint="store tags as a list of strings per row",
            )
        yield prompts[i], ids[i], row_tags, None


def _dataset_rows(path: Path, source: str) -> Iterator[Row]:
    """Rows of a directory written by `datasets` save_to_disk (a Dataset or a DatasetDict)."""
    is_dict = (path / "dataset_dict.json").is_file()
    is_dataset = (path / "dataset_info.json").is_file() or (path / "state.json").is_file()
    if not (is_dict or is_dataset):
        raise PromptError(
            f"{source} is a directory but not a dataset saved with Hugging Face datasets",
            hint="pass a .jsonl, .txt, .parquet or .csv file, or a directory written by Dataset.save_to_disk",
        )
    loaded = load_saved_split(path, source, PromptError, "prompts_ds")
    hint = "rename the column holding the text: ds.rename_column('text', 'prompt').save_to_disk(...)"
    _require_prompt_column(loaded.column_names, source, hint)
    wanted = [c for c in ("prompt", "id", "tags") if c in loaded.column_names]
    return _frame_rows(loaded.select_columns(wanted).to_polars(), source, split_str_tags=False)
