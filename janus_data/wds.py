"""WebDataset shards for SFT samples: a deterministic, atomic writer and a safe streaming reader.

Writer: `TarShardWriter` (janus_data.wds_writer, importable from here) writes flat USTAR tars
`sft-000000.tar`, ... byte-identically for identical inputs, each shard appearing atomically
once complete.

Reader: `iter_samples` streams tars (`tarfile` "r|": no seeks, nothing extracted, nothing
written, nothing unpickled), checks every member with `check_member` before using it, and groups
consecutive members with one key into a sample, as WebDataset does. Shard shuffling, a shuffle
buffer and the split across DDP ranks are deterministic under `seed`. Anything a shard could use
to escape (absolute or `..` names, links, devices) or to run code (pickle-ish extensions) raises
`UnsafeShardError`. The shards also load with `webdataset.WebDataset` and with Hugging Face
`datasets.load_dataset("webdataset", ...)` (docs in tests/test_wds.py).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from janus_data.errors import JanusError, one_line
from janus_data.wds_writer import (
    BLOCK,
    EXT_RE,
    KEY_RE,
    MAX_NAME,
    UNSAFE_EXTENSIONS,
    ShardInfo,
    TarShardWriter,
    unsafe_ext,
    validate_extension,
    validate_key,
)

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})
HINT = "rebuild the shards with `janus data filter`"
_MAX_TAIL = 2 * tarfile.RECORDSIZE  # end blocks plus record padding other tar writers add


class UnsafeShardError(JanusError):
    """A shard holds a member that could escape the reader or run code, or the shard is damaged."""


def _refuse(shard: str, name: str, why: str) -> UnsafeShardError:
    return UnsafeShardError(f"unsafe member {name!r} in shard {shard}: {why}", hint=HINT)


def check_member(info: tarfile.TarInfo, shard: str) -> tuple[str, str]:
    """(key, extension) of a safe member; raises UnsafeShardError naming the shard and member otherwise."""
    name = info.name
    if not info.isreg():
        kind = (
            "symlink"
            if info.issym()
            else "hardlink"
            if info.islnk()
            else "directory"
            if info.isdir()
            else "device or fifo"
            if (info.ischr() or info.isblk() or info.isfifo())
            else "not a regular file"
        )
        raise _refuse(shard, name, f"{kind} (only regular files are allowed)")
    if name.startswith("/") or name.startswith("\\"):
        raise _refuse(shard, name, "absolute path")
    if not name.isprintable():
        raise _refuse(shard, name, "control characters in the name")
    if ".." in re.split(r"[/\\]", name):
        raise _refuse(shard, name, "'..' path component")
    if "/" in name or "\\" in name:
        raise _refuse(shard, name, "directory component (shards are flat)")
    key, dot, ext = name.partition(".")
    if not dot or not key or not ext:
        raise _refuse(shard, name, "no '<key>.<extension>' name")
    if unsafe_ext(ext):
        raise _refuse(shard, name, f"pickle-ish extension .{ext}")
    if ext.startswith("__"):
        raise _refuse(shard, name, "reserved extension")
    return key, ext


def _damaged(shard: str, why: str) -> UnsafeShardError:
    return UnsafeShardError(f"shard {shard} is damaged: {why}", hint=HINT)


def _shard_samples(path: Path) -> Iterator[dict[str, bytes | str]]:
    shard = path.name
    sample: dict[str, bytes | str] | None = None
    last = "(start)"
    with open(path, "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|") as tf:
                for info in tf:
                    key, ext = check_member(info, shard)
                    if sample is not None and sample["__key__"] != key:
                        yield sample
                        sample = None
                    if sample is None:
                        sample = {"__key__": key, "__shard__": shard}
                    elif ext in sample:
                        raise _refuse(shard, info.name, "duplicate member in one sample")
                    fh = tf.extractfile(info)
                    assert fh is not None  # regular file, checked above
                    sample[ext] = fh.read()
                    last = info.name
                    tf.members = []  # streaming: don't keep every TarInfo of the shard
                end = tf.offset
        except tarfile.TarError as err:
            raise _damaged(shard, f"{one_line(err)} after member {last!r}") from None
        # tarfile ends quietly at a cut or garbled header: require the zero end-of-archive blocks
        tail = os.fstat(raw.fileno()).st_size - end
        raw.seek(end)
        if not 2 * BLOCK <= tail <= _MAX_TAIL or raw.read(tail).count(0) != tail:
            raise _damaged(shard, f"truncated or garbled after member {last!r}")
    if sample is not None:
        yield sample


def iter_samples(
    shards: list[str | Path],
    shuffle_shards: bool = False,
    shuffle_buffer: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, bytes | str]]:
    """Stream samples ({"__key__", "__shard__", ext: bytes}) from `shards`, deterministically under `seed`.

    Shards are shuffled (when asked) before the rank split, so every rank must pass the same
    seed; rank r reads shards r, r + world_size, ... of that order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    rng = random.Random(seed)
    order = [Path(s) for s in shards]
    if shuffle_shards:
        rng.shuffle(order)
    mine = order[rank::world_size]
    samples = (s for path in mine for s in _shard_samples(path))
    if shuffle_buffer <= 1:
        yield from samples
        return
    buf: list[dict[str, bytes | str]] = []
    for s in samples:
        if len(buf) < shuffle_buffer:
            buf.append(s)
            continue
        k = rng.randrange(shuffle_buffer)
        yield buf[k]
        buf[k] = s
    rng.shuffle(buf)
    yield from buf


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """json -> object, *.npy -> numpy array (no pickles), png/jpg/jpeg/webp -> loaded PIL image, rest as is."""
    out: dict[str, Any] = {}
    for field, value in sample.items():
        last = field.rsplit(".", 1)[-1].lower()
        if field.startswith("__") or not isinstance(value, (bytes, bytearray)):
            out[field] = value
        elif last == "json":
            out[field] = json.loads(value)
        elif last == "npy":
            import numpy as np

            out[field] = np.load(io.BytesIO(value), allow_pickle=False)
        elif last in IMAGE_EXTENSIONS:
            from PIL import Image

            image = Image.open(io.BytesIO(value))
            image.load()
            out[field] = image
        else:
            out[field] = value
    return out


def list_shards(directory: Path, pattern_glob: str = "sft-*.tar") -> list[Path]:
    """Complete shards in `directory` matching `pattern_glob`, sorted by name; temp files are ignored."""
    return sorted(
        (p for p in Path(directory).glob(pattern_glob) if not p.name.startswith(".") and not p.name.endswith(".tmp")),
        key=lambda p: p.name,
    )


__all__ = [  # the writer lives in janus_data.wds_writer; importable from here as before
    "EXT_RE",
    "HINT",
    "IMAGE_EXTENSIONS",
    "KEY_RE",
    "MAX_NAME",
    "UNSAFE_EXTENSIONS",
    "ShardInfo",
    "TarShardWriter",
    "UnsafeShardError",
    "check_member",
    "decode_sample",
    "iter_samples",
    "list_shards",
    "validate_extension",
    "validate_key",
]
