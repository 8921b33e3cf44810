"""Image bytes at scale: tar shards with byte offsets recorded in the image manifest.

3.6M images as single files would cost 3.6M inodes and metadata round-trips on the
shared filesystems clusters use; one tar per (generator, rank, batch) keeps the file
count in the tens of thousands, streams sequentially, and still allows O(1) random
access: a reader seeks to the member's data offset. Members are named
'<image_id>.<ext>' so the shards are also valid WebDataset tars (docs/storage.md).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from janus_data.errors import RunDirError
from janus_data.manifest import atomic_write

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


def write_shard(run_dir: Path, shard: str, members: list[tuple[str, bytes]]) -> list[StoredImage]:
    """Write (name, bytes) members as one tar that appears atomically; return each member's location."""
    path = Path(run_dir) / shard

    def write(fh) -> None:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0  # deterministic bytes for identical inputs
                tar.addfile(info, io.BytesIO(data))

    atomic_write(path, write)
    with tarfile.open(path, mode="r") as tar:
        return [StoredImage(shard, m.name, m.offset_data, m.size) for m in tar.getmembers()]


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
