"""WebDataset shards for SFT samples: a deterministic, atomic writer and a safe streaming reader.

Writer: `TarShardWriter` appends samples (a key and `{extension: bytes}` members) to flat,
USTAR-format tars named `sft-000000.tar`, ... . Headers are fixed (mtime 0, uid/gid 0, no
user/group names, mode 0644), so identical inputs give byte-identical shards. Each shard is
written through one buffered handle to `.<name>.tmp` in the output directory, fsynced, and
renamed to its final name only once complete (on rollover or close): a killed writer leaves
complete shards and temp files, never a partial shard under a final name. A shard starts anew
when the next sample would push it past `max_bytes`; a sample bigger than that goes alone.
The writer raises ValueError for a bad key or extension (a caller bug, not bad data).

Reader: `iter_samples` streams tars (`tarfile` "r|": no seeks, nothing extracted, nothing
written, nothing unpickled), checks every member with `check_member` before using it, and groups
consecutive members with one key into a sample, as WebDataset does. Shard shuffling, a shuffle
buffer and the split across DDP ranks are deterministic under `seed`. Anything a shard could use
to escape (absolute or `..` names, links, devices) or to run code (pickle-ish extensions) raises
`UnsafeShardError`. The shards also load with `webdataset.WebDataset` and with Hugging Face
`datasets.load_dataset("webdataset", ...)` (docs in tests/test_wds.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import random
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from janus_data.errors import JanusError, one_line

# Extensions whose usual decoders unpickle (webdataset's "pyd"/"pickle", torch.load, joblib):
# never written, and a shard holding one is refused.
UNSAFE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# Lowercase only: webdataset lowercases suffixes, so "PNG" would read back as "png" there.
EXT_RE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
MAX_NAME = 100  # USTAR name field; our names never need the prefix field or PAX headers
HINT = "rebuild the shards with `janus data filter`"
_BLOCK = tarfile.BLOCKSIZE
_END = b"\0" * (2 * _BLOCK)  # end-of-archive marker
_ZEROS = b"\0" * _BLOCK
_BUFFER = 8 << 20
_MAX_TAIL = 2 * tarfile.RECORDSIZE  # end blocks plus record padding other tar writers add


class UnsafeShardError(JanusError):
    """A shard holds a member that could escape the reader or run code, or the shard is damaged."""


@dataclass(frozen=True)
class ShardInfo:
    """One complete shard: its file name, sample count, size, first and last keys, sha256 of the file."""

    name: str
    samples: int
    bytes: int
    first_key: str
    last_key: str
    sha256: str


class _Hasher:
    """sha256 on a background thread, so hashing overlaps the file writes (both release the GIL)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)  # bounds the samples in flight
        self._thread = threading.Thread(target=self._run, name="wds-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunks := self._queue.get()) is not None:
            for chunk in chunks:
                self._hash.update(chunk)

    def update(self, chunks: list[bytes]) -> None:
        """Hash `chunks` (immutable bytes) in order, after everything passed before."""
        self._queue.put(chunks)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()


def _unsafe_ext(ext: str) -> bool:
    return any(part in UNSAFE_EXTENSIONS for part in ext.lower().split("."))


def validate_key(key: str) -> None:
    """Raise ValueError unless `key` is a WebDataset-safe sample key."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"sample key {key!r} must be non-empty [A-Za-z0-9_-] (no dots or slashes)")
    if key.startswith("__"):
        raise ValueError(f"sample key {key!r} must not start with '__' (readers skip such members as metadata)")


def validate_extension(ext: str) -> None:
    """Raise ValueError unless `ext` is a safe lowercase member extension such as "json" or "image.png"."""
    if not isinstance(ext, str) or not EXT_RE.fullmatch(ext):
        raise ValueError(f"member extension {ext!r} must be lowercase [a-z0-9_] parts joined by dots")
    if _unsafe_ext(ext):
        raise ValueError(f"member extension {ext!r} is pickle-ish ({', '.join(sorted(UNSAFE_EXTENSIONS))})")


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class TarShardWriter:
    """Writes samples into `out_dir/<pattern % index>` shards of at most `max_bytes` each.

    Use as a context manager, or call `close()`; `close()` returns one `ShardInfo` per shard.
    An existing shard with the same final name is replaced (identical inputs rewrite it identically).
    """

    def __init__(
        self, out_dir: Path, pattern: str = "sft-%06d.tar", max_bytes: int = 1 << 30, start_index: int = 0
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        name = pattern % start_index
        if "/" in name or name.startswith("."):
            raise ValueError(f"shard pattern {pattern!r} must give plain file names")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pattern = pattern
        self.max_bytes = max_bytes
        self._index = start_index
        self._infos: list[ShardInfo] = []
        self._fh: Any = None
        self._hash: Any = None
        self._name = ""
        self._size = 0
        self._samples = 0
        self._first = self._last = ""
        self._closed = False

    # -- paths -----------------------------------------------------------------------------

    def _tmp_path(self, name: str) -> Path:
        return self.out_dir / f".{name}.tmp"

    @property
    def shards(self) -> list[ShardInfo]:
        """Shards completed so far."""
        return list(self._infos)

    # -- writing ---------------------------------------------------------------------------

    def _open(self) -> None:
        self._name = self.pattern % self._index
        self._index += 1
        self._fh = open(self._tmp_path(self._name), "wb", buffering=_BUFFER)  # noqa: SIM115 - held across samples
        self._hash = _Hasher()
        self._size = self._samples = 0

    def _put(self, chunks: list[bytes]) -> None:
        self._fh.writelines(chunks)
        self._hash.update(chunks)

    def _finish(self) -> None:
        """Seal the current shard, fsync it and rename it to its final name."""
        fh = self._fh
        self._put([_END])
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None
        os.replace(self._tmp_path(self._name), self.out_dir / self._name)
        self._fsync_dir()
        self._infos.append(
            ShardInfo(
                self._name, self._samples, self._size + len(_END), self._first, self._last, self._hash.hexdigest()
            )
        )

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.out_dir, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(fd)

    def write(self, key: str, members: dict[str, bytes]) -> str:
        """Append one sample; returns the file name of the shard it went to."""
        if self._closed:
            raise ValueError("TarShardWriter is closed")
        validate_key(key)
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        chunks: list[bytes] = []
        for ext in sorted(members):
            validate_extension(ext)
            data = members[ext]
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)  # hashed on another thread: must not change under us
            elif not isinstance(data, bytes):
                raise ValueError(f"member {key}.{ext} must be bytes, got {type(data).__name__}")
            if len(key) + 1 + len(ext) > MAX_NAME:
                raise ValueError(f"member name {key}.{ext} is longer than {MAX_NAME} characters")
            chunks += [_header(f"{key}.{ext}", len(data)), data, _ZEROS[: -len(data) % _BLOCK]]
        size = sum(len(c) for c in chunks)
        if self._fh is not None and key == self._last:
            raise ValueError(f"sample key {key!r} repeats the previous sample's key (readers would merge them)")
        if self._fh is not None and self._samples and self._size + size + len(_END) > self.max_bytes:
            self._finish()
        if self._fh is None:
            self._open()
        self._put(chunks)
        self._size += size
        if not self._samples:
            self._first = key
        self._samples += 1
        self._last = key
        return self._name

    def close(self) -> list[ShardInfo]:
        """Complete the current shard; returns every shard this writer wrote. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._fh is not None:
                self._finish()
        return list(self._infos)

    def abort(self) -> None:
        """Drop the shard being written (its temp file); complete shards stay."""
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if self._hash is not None:
                self._hash.hexdigest()  # stops its thread
                self._hash = None
            self._tmp_path(self._name).unlink(missing_ok=True)

    def __enter__(self) -> TarShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- reading ---------------------------------------------------------------------------------


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
    if _unsafe_ext(ext):
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
        if not 2 * _BLOCK <= tail <= _MAX_TAIL or raw.read(tail).count(0) != tail:
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
