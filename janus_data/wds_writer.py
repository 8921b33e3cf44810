"""WebDataset shards, the writing half: `TarShardWriter`, deterministic and atomic.

`TarShardWriter` appends samples (a key and `{extension: bytes}` members) to flat,
USTAR-format tars named `sft-000000.tar`, ... . Headers are fixed (mtime 0, uid/gid 0, no
user/group names, mode 0644), so identical inputs give byte-identical shards. Each shard is
written through one buffered handle to `.<name>.tmp` in the output directory, fsynced, and
renamed to its final name only once complete (on rollover or close): a killed writer leaves
complete shards and temp files, never a partial shard under a final name. A shard starts anew
when the next sample would push it past `max_bytes`; a sample bigger than that goes alone.
The writer raises ValueError for a bad key or extension (a caller bug, not bad data).
The reading half, and the names of both, are in `janus_data.wds`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Extensions whose usual decoders unpickle (webdataset's "pyd"/"pickle", torch.load, joblib):
# never written, and a shard holding one is refused.
UNSAFE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# Lowercase only: webdataset lowercases suffixes, so "PNG" would read back as "png" there.
EXT_RE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
MAX_NAME = 100  # USTAR name field; our names never need the prefix field or PAX headers
BLOCK = tarfile.BLOCKSIZE
_END = b"\0" * (2 * BLOCK)  # end-of-archive marker
_ZEROS = b"\0" * BLOCK
_BUFFER = 8 << 20


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


def unsafe_ext(ext: str) -> bool:
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
    if unsafe_ext(ext):
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
            chunks += [_header(f"{key}.{ext}", len(data)), data, _ZEROS[: -len(data) % BLOCK]]
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
