"""Prompt sets: load JSONL/TXT/Parquet/CSV/`datasets` sources, normalise, dedupe, write the manifest.

A prompt's id is a hash of its normalised text, so the same prompt gets the same id whatever
file or format it came from, and every later record (image, score, sample) joins on it.

polars and pyarrow are imported only to build or read a frame (and to read Parquet/CSV), so
`check_prompt_file` finds a missing or malformed JSONL/text file before any heavy import.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from janus_data.errors import PromptError
from janus_data.manifest import PROMPTS_KIND, manifest_dir, part_files, read_manifest, write_parquet_atomic
from janus_data.prompt_sources import Row, read_rows

if TYPE_CHECKING:
    import polars as pl

PROMPTS_FILE = "prompts.parquet"


@functools.cache
def prompt_schema() -> dict[str, pl.DataType]:
    """The prompts manifest's columns (`PROMPT_SCHEMA`), built on first use so reading rows needs no polars."""
    import polars as pl

    return {
        "prompt_id": pl.String(),
        "prompt": pl.String(),
        "source": pl.String(),
        "source_id": pl.String(),
        "tags": pl.List(pl.String()),
        "n_occurrences": pl.Int32(),
        "metadata": pl.String(),
    }


def __getattr__(name: str) -> Any:
    if name == "PROMPT_SCHEMA":
        return prompt_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PromptStats:
    """Counts from one `load_prompts` call; unique = rows_read - empty_dropped - duplicates_merged."""

    rows_read: int
    empty_dropped: int
    duplicates_merged: int
    unique: int


def normalise_prompt(text: str) -> str:
    """Unicode NFC, every whitespace run (newlines and tabs included) to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id_for(text: str) -> str:
    """Stable id of the normalised text: the first 16 hex chars of its UTF-8 sha256."""
    return _hash(normalise_prompt(text))


def _hash(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def load_prompts(path: str | Path) -> tuple[pl.DataFrame, PromptStats]:
    """Read a prompt source into PROMPT_SCHEMA rows, one per unique prompt, in first-seen order."""
    return _merge_rows(read_rows(Path(path), str(path)), str(path))


def check_prompt_file(path: str | Path) -> None:
    """Raise the PromptError `load_prompts` would, without deduplicating or building a frame.

    JSON Lines and text files need neither polars nor pyarrow here, so a bad one fails in
    milliseconds; Parquet and CSV files are read with polars, `datasets` directories with datasets.
    """
    source = str(path)
    n_rows = n_prompts = 0
    for text, *_ in read_rows(Path(path), source):
        n_rows += 1
        n_prompts += bool(text is not None and text.strip())  # what normalise_prompt leaves empty
    if not n_prompts:
        raise _no_prompts(source, n_rows)


def require_prompts(run_dir: Path) -> None:
    """The run holds a prompts manifest, or a PromptError that says how to give it one."""
    if not part_files(Path(run_dir), PROMPTS_KIND):
        raise PromptError(f"run {run_dir} has no prompts", hint="pass --prompts FILE")


def _no_prompts(source: str, n_rows: int) -> PromptError:
    detail = "it is empty" if n_rows == 0 else f"all {n_rows} rows are blank after whitespace normalisation"
    return PromptError(f"{source} holds no prompts", hint=f"{detail}; add at least one non-empty prompt")


def _merge_rows(rows: Iterable[Row], source: str) -> tuple[pl.DataFrame, PromptStats]:
    """Normalise, drop empties, merge duplicates by prompt_id keeping first-seen order."""
    index: dict[str, int] = {}  # normalised text -> row, so duplicates are never rehashed
    texts: list[str] = []
    ids: list[str | None] = []
    tags: list[set[str]] = []
    metadata: list[str | None] = []
    counts: list[int] = []
    n_rows = n_empty = 0
    for text, source_id, row_tags, meta in rows:
        n_rows += 1
        norm = normalise_prompt(text) if text is not None else ""
        if not norm:
            n_empty += 1
            continue
        i = index.get(norm)
        if i is None:
            index[norm] = len(texts)
            texts.append(norm)
            ids.append(source_id)
            tags.append(set(row_tags or ()))
            metadata.append(meta)
            counts.append(1)
        else:
            counts[i] += 1
            tags[i].update(row_tags or ())
            if ids[i] is None:
                ids[i] = source_id
            if metadata[i] is None:
                metadata[i] = meta
    if not texts:
        raise _no_prompts(source, n_rows)
    import polars as pl
    import pyarrow as pa

    df = pl.DataFrame(
        {
            "prompt_id": [_hash(t) for t in texts],
            "prompt": texts,
            "source": [source] * len(texts),
            "source_id": ids,
            # through Arrow: polars builds a list column from Python lists ~5x slower
            "tags": pa.array([sorted(t) for t in tags], type=pa.list_(pa.string())),
            "n_occurrences": counts,
            "metadata": metadata,
        },
        schema=prompt_schema(),
    )
    n_dup = n_rows - n_empty - len(texts)
    return df, PromptStats(rows_read=n_rows, empty_dropped=n_empty, duplicates_merged=n_dup, unique=len(texts))


def read_prompts_manifest(run_dir: Path) -> pl.DataFrame:
    """The run's prompts manifest; an empty PROMPT_SCHEMA frame when none was written yet."""
    return _conform(read_manifest(Path(run_dir), PROMPTS_KIND, prompt_schema()))


def _conform(df: pl.DataFrame) -> pl.DataFrame:
    """PROMPT_SCHEMA's columns in order; one a frame lacks (`metadata` before it existed) is null."""
    import polars as pl

    schema = prompt_schema()
    missing = [c for c in schema if c not in df.columns]
    df = df.with_columns(pl.lit(None, dtype=schema[c]).alias(c) for c in missing)
    return df.select(list(schema)).cast(schema)


def write_prompts_manifest(run_dir: Path, df: pl.DataFrame) -> Path:
    """Merge `df` into the run's prompts manifest (existing rows first) and write it atomically."""
    import polars as pl

    schema = prompt_schema()
    existing = read_prompts_manifest(run_dir)
    new = _conform(df)
    # Existing rows keep their place and text; a prompt seen again only gains tags, and its
    # count is the max (summing would double-count when the same file is loaded twice).
    merged = (
        pl.concat([existing, new], how="vertical")
        .group_by("prompt_id", maintain_order=True)
        .agg(
            pl.col("prompt").first(),
            pl.col("source").first(),
            pl.col("source_id").drop_nulls().first(),
            pl.col("tags").explode().drop_nulls().unique().sort(),
            pl.col("n_occurrences").max(),
            pl.col("metadata").drop_nulls().first(),
        )
        .select(list(schema))
        .cast(schema)
    )
    path = manifest_dir(Path(run_dir), PROMPTS_KIND) / PROMPTS_FILE
    return write_parquet_atomic(merged, path)
