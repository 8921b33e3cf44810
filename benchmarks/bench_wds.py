"""Shard writing throughput: TarShardWriter vs a bare tarfile copy of the same bytes, as a ratio
from one run, both writing to the same directory (best of --repeats, runs interleaved).

    python benchmarks/bench_wds.py                                  # 2,000 samples, ~210 MB, under /tmp
    python benchmarks/bench_wds.py --samples 5000 --dir /scratch/me  # the disk the shards will live on

The writer also hashes every shard (sha256) and fsyncs it before the atomic rename; the
baseline does neither, so the ratio prices both. `--fsync-baseline` fsyncs the baseline too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from janus_data.wds import TarShardWriter


def make_samples(n: int, image_kb: int, seed: int) -> list[tuple[str, dict[str, bytes]]]:
    """n samples: a random png-like blob, a ~5 KB float32 .npy and a ~300 B json, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        blob = b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, image_kb * 1024 - 8, dtype=np.uint8).tobytes()
        buf = io.BytesIO()
        np.save(buf, rng.standard_normal(1248).astype(np.float32), allow_pickle=False)
        meta = {"prompt": f"a blue bicycle to the left of a yellow fire hydrant #{i}", "score": float(rng.random())}
        meta["tags"] = [f"tag{j}" for j in range(24)]
        members = {"image.png": blob, "image.npy": buf.getvalue(), "json": json.dumps(meta).encode()}
        out.append((f"task-{i:08d}", members))
    return out


def write_ours(out_dir: Path, samples, max_bytes: int) -> int:
    with TarShardWriter(out_dir, max_bytes=max_bytes) as writer:
        for key, members in samples:
            writer.write(key, members)
    return sum(s.bytes for s in writer.close())


def write_baseline(out_dir: Path, samples, max_bytes: int, fsync: bool) -> int:
    """One plain tarfile (same sorted members), rolled over at the same size; fsynced only if asked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total, index, size, tf, fh = 0, 0, 0, None, None

    def finish() -> int:
        tf.close()
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
        n = fh.tell()
        fh.close()
        return n

    for key, members in samples:
        need = sum(512 + len(b) + (-len(b) % 512) for b in members.values())
        if tf is not None and size and size + need + 1024 > max_bytes:
            total += finish()
            tf = None
        if tf is None:
            fh = open(out_dir / f"base-{index:06d}.tar", "wb")  # noqa: SIM115 - closed in finish()
            tf = tarfile.open(fileobj=fh, mode="w")  # noqa: SIM115 - closed in finish()
            index, size = index + 1, 0
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(members[ext])
            tf.addfile(info, io.BytesIO(members[ext]))
        size += need
    if tf is not None:
        total += finish()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--image-kb", type=int, default=100)
    ap.add_argument("--max-mb", type=int, default=256, help="shard size bound")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--fsync-baseline", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    samples = make_samples(args.samples, args.image_kb, args.seed)
    payload = sum(len(b) for _, m in samples for b in m.values())
    root = Path(tempfile.mkdtemp(prefix="bench-wds-", dir=args.dir))
    max_bytes = args.max_mb << 20
    print(
        f"{args.samples} samples, {payload / 1e6:,.1f} MB payload, shards <= {args.max_mb} MB, "
        f"dir {root}, best of {args.repeats}"
    )
    best = {"tarfile": float("inf"), "TarShardWriter": float("inf")}
    written = {}
    try:
        for r in range(args.repeats):
            for name in best:
                out = root / f"{name}-{r}"
                t0 = time.perf_counter()
                if name == "tarfile":
                    written[name] = write_baseline(out, samples, max_bytes, args.fsync_baseline)
                else:
                    written[name] = write_ours(out, samples, max_bytes)
                best[name] = min(best[name], time.perf_counter() - t0)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'writer':<18}{'MB written':>12}{'best s':>10}{'MB/s':>10}")
    rate = {}
    for name, secs in best.items():
        rate[name] = written[name] / 1e6 / secs
        print(f"{name:<18}{written[name] / 1e6:>12,.1f}{secs:>10.3f}{rate[name]:>10,.0f}")
    baseline = "tarfile" + (" + fsync" if args.fsync_baseline else "")
    print(f"TarShardWriter / {baseline}: {rate['TarShardWriter'] / rate['tarfile']:.2f}x (target >= 0.8)")


if __name__ == "__main__":
    main()
