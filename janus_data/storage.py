"""Image bytes at scale: growing tar shards, byte offsets in the image manifest.

3.6M images as single files would cost 3.6M inodes and metadata round-trips on the shared
filesystems clusters use. Instead each (generator, rank) appends its batches to a tar shard
of up to `shard_images` members, so the paper run makes a few thousand files. Every batch
is written and fsynced BEFORE the manifest part naming it appears (atomically), so the
manifest only ever points at durable bytes; a kill leaves at most an unreferenced tail,
which `repair_shards` cuts off at the next start before sealing the shard with the tar
end-of-archive blocks. Members are '<image_id>.<ext>', so sealed shards are valid
WebDataset tars, and a reader seeks straight to a member's data (docs/synth.md).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from janus_data.errors import RunDirError

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class StoredImage:
    """Where one image's bytes live: a shard path relative to the run, a member and a byte range."""

    shard: str
    member: str
    offset: int
    length: int


def encode_image(image: Image.Image, fmt: str, size: int, quality: int = 95) -> bytes:
    """Resize to size x size (Lanczos) if needed and encode as png, jpeg or webp."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        image.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def _pad(n: int) -> int:
    return -n % tarfile.BLOCKSIZE


def _member_bytes(name: str, data: bytes) -> tuple[bytes, int]:
    """One USTAR member (header, data, padding) and the data's offset within it."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # identical inputs give identical bytes
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header + data + b"\0" * _pad(len(data)), len(header)


class ShardWriter:
    """Appends batches to `<dir>/shard-NNNNNN.tar`, rolling over every `shard_images` members."""

    def __init__(self, run_dir: Path, rel_dir: str, shard_images: int) -> None:
        self.run_dir = Path(run_dir)
        self.rel_dir = rel_dir
        self.shard_images = shard_images
        (self.run_dir / rel_dir).mkdir(parents=True, exist_ok=True)
        existing = sorted((self.run_dir / rel_dir).glob("shard-*.tar"))
        self._next = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        self._fh = None
        self._rel = ""
        self._count = 0

    def write_batch(self, members: list[tuple[str, bytes]]) -> list[StoredImage]:
        """Append (name, bytes) members durably (fsync) and return where each landed."""
        if self._fh is None or self._count >= self.shard_images:
            self.seal()
            self._rel = f"{self.rel_dir}/shard-{self._next:06d}.tar"
            self._next += 1
            self._fh = open(self.run_dir / self._rel, "xb")  # noqa: SIM115 - held across batches
            self._count = 0
        fh = self._fh
        stored, chunks, pos = [], [], fh.tell()
        for name, data in members:
            blob, header_len = _member_bytes(name, data)
            stored.append(StoredImage(self._rel, name, pos + header_len, len(data)))
            chunks.append(blob)
            pos += len(blob)
        fh.write(b"".join(chunks))
        fh.flush()
        os.fsync(fh.fileno())
        self._count += len(members)
        return stored

    def seal(self) -> None:
        """Close the current shard with the tar end-of-archive blocks."""
        if self._fh is not None:
            self._fh.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.seal()


def repair_shards(run_dir: Path, rel_dir: str, extents: dict[str, int]) -> int:
    """Cut every shard under `rel_dir` back to its referenced extent and seal it; drop unreferenced ones.

    `extents` maps shard path (relative to the run) to the end of its last referenced member's
    data. Returns how many shards held bytes no manifest row names (an interrupted batch).
    """
    repaired = 0
    for path in sorted((Path(run_dir) / rel_dir).glob("shard-*.tar")):
        rel = f"{rel_dir}/{path.name}"
        end = extents.get(rel)
        if end is None:
            path.unlink()
            repaired += 1
            continue
        keep = end + _pad(end)
        sealed = keep + 2 * tarfile.BLOCKSIZE
        size = path.stat().st_size
        if size == sealed:
            continue
        repaired += size != keep  # an unsealed shard that merely missed its seal is not damage
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.seek(keep)
            fh.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            fh.flush()
            os.fsync(fh.fileno())
    return repaired


def read_image_bytes(run_dir: Path, shard: str, offset: int, length: int) -> bytes:
    """Bytes of one stored image, read by seeking into its shard."""
    path = (Path(run_dir) / shard).resolve()
    if not path.is_relative_to(Path(run_dir).resolve()):
        raise RunDirError(f"image shard {shard} points outside the run directory")
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise RunDirError(f"image shard {shard} is truncated at offset {offset}", hint="rerun the synth stage")
    return data


def open_image(run_dir: Path, shard: str, offset: int, length: int) -> Image.Image:
    """Decode one stored image."""
    return Image.open(io.BytesIO(read_image_bytes(run_dir, shard, offset, length)))
