"""Filter selection at the paper's scale: 200K prompts x 18 scored images (manifests only, no bytes).

    python benchmarks/bench_filter.py                     # 200,000 prompts x 18 images
    python benchmarks/bench_filter.py --prompts 20000     # a quick look

Writes synthetic prompt, image and score manifests as Parquet (not timed), then times, each in
its own process so peak RSS is its own:
- baseline: a bare Polars selection of Task I/II/III over the score rows alone (good images;
  good and bad images; each bad image joined to one good image of its prompt);
- janus: what `janus data filter` computes before writing shards (janus_data.filter.select_samples):
  the selection with per-prompt caps, seeded choice and the exact yes/no balance, the joins with
  the image and prompt manifests (prompt text, reasons, where every image's bytes are), and the
  pool statistics of the summary.
Prints seconds and peak RSS for both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent


def hex_strings(rng: np.random.Generator, n: int, chars: int) -> pl.Series:
    """n random lowercase hex strings of `chars` characters."""
    raw = rng.integers(0, 256, n * chars // 2, dtype=np.uint8).tobytes().hex().encode()
    return pl.Series(np.frombuffer(raw, dtype=f"S{chars}")).cast(pl.Binary).cast(pl.Utf8)


def write_manifests(root: Path, n_prompts: int, per_prompt: int, seed: int = 0) -> None:
    """Synthetic prompts, images and scores manifests with the project's schemas."""
    rng = np.random.default_rng(seed)
    pids = hex_strings(rng, n_prompts, 16)
    prompts = pl.DataFrame({"prompt_id": pids, "prompt": pl.Series([f"prompt {i}" for i in range(n_prompts)])})
    n = n_prompts * per_prompt
    idx = np.tile(np.arange(per_prompt), n_prompts)
    generator = np.where(idx < per_prompt // 2, "flux", "janus")
    pid = pids.gather(np.repeat(np.arange(n_prompts), per_prompt))
    image_id = pl.DataFrame({"p": pid, "g": generator, "i": idx}).select(
        pl.concat_str("p", pl.lit("-"), "g", pl.lit("-"), pl.col("i").cast(pl.Utf8).str.zfill(3))
    )["p"]
    images = pl.DataFrame(
        {
            "image_id": image_id,
            "prompt_id": pid,
            "generator": generator,
            "sha256": hex_strings(rng, n, 64),
            "shard": pl.Series(["images/flux/rank00000/shard-000000.tar"] * n),
            "offset": rng.integers(0, 1 << 30, n),
            "length": rng.integers(50_000, 300_000, n),
            "format": pl.Series(["png"] * n),
        }
    )
    status = np.where(rng.random(n) < 0.995, "ok", np.where(rng.random(n) < 0.5, "error", "flagged"))
    score = np.where(status == "ok", rng.beta(2.0, 1.2, n), np.nan)
    scores = pl.DataFrame(
        {
            "image_id": image_id,
            "prompt_id": pid,
            "generator": generator,
            "score": score,
            # The judge's own answer follows its S at 0.5, so at threshold 0.8 'agree' drops 0.5 <= S < 0.8.
            "reason": np.where(score >= 0.5, "Yes, the image shows what the prompt asks for.", "No, it does not."),
            "status": status,
        }
    ).with_columns(pl.col("score").fill_nan(None))
    for name, df in (("prompts", prompts), ("images", images), ("scores", scores)):  # a run directory's layout
        (root / "manifests" / name).mkdir(parents=True, exist_ok=True)
        df.write_parquet(root / "manifests" / name / "part-0.parquet")


def run_bare(root: Path, threshold: float) -> dict[str, int]:
    s = pl.scan_parquet(root / "manifests" / "scores" / "*.parquet").filter(pl.col("status") == "ok")
    good = s.filter(pl.col("score") >= threshold)
    bad = s.filter(pl.col("score") < threshold)
    t2i = good.select("image_id", "prompt_id")
    judge = pl.concat([good.select("image_id", "prompt_id"), bad.select("image_id", "prompt_id")])
    regen = bad.join(good.group_by("prompt_id").agg(pl.col("image_id").first().alias("good")), on="prompt_id")
    out = pl.collect_all([t2i, judge, regen])
    return {name: df.height for name, df in zip(("t2i", "judge", "regen"), out, strict=True)}


def run_janus(root: Path, threshold: float) -> dict[str, int]:
    """What `janus data filter` computes before writing: the selection plus every join its shards need."""
    from janus_data.config import FilterConfig
    from janus_data.filter import select_samples

    selection = select_samples(root, FilterConfig(threshold=threshold))
    counts = {}
    for task in selection.samples:  # as the stage does: one task's lookups at a time
        counts[task] = selection.details(task).height
    return counts


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(which: str, root: str, threshold: float) -> None:
    """Child process: time one selection, print a JSON line with seconds, peak RSS and counts."""
    t0 = time.perf_counter()
    counts = (run_bare if which == "bare" else run_janus)(Path(root), threshold)
    seconds = time.perf_counter() - t0
    rss_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "counts": counts}))


def child(which: str, root: Path, threshold: float) -> dict:
    cmd = [sys.executable, __file__, "--measure", which, "--dir", str(root), "--threshold", str(threshold)]
    # Both children run with the allocator setting the `janus` CLI sets (cli.py).
    env = {**os.environ, "PYTHONPATH": str(REPO), "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200_000)
    ap.add_argument("--per-prompt", type=int, default=18)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--measure", choices=["bare", "janus"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.measure, args.dir, args.threshold)
        return

    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_manifests(root, args.prompts, args.per_prompt)
        n = args.prompts * args.per_prompt
        print(
            f"{args.prompts:,} prompts x {args.per_prompt} = {n:,} scored images ({time.perf_counter() - t0:.1f} s to write)"
        )
        print(f"polars {pl.__version__}, threads {pl.thread_pool_size()}, threshold {args.threshold}")
        best = {}
        for which in ("bare", "janus"):
            runs = [child(which, root, args.threshold) for _ in range(args.repeats)]
            best[which] = min(runs, key=lambda r: r["seconds"])
        print(f"{'selection':<10}{'seconds':>9}{'peak RSS MB':>13}   samples (t2i / judge / regen)")
        for which, r in best.items():
            c = r["counts"]
            print(
                f"{which:<10}{r['seconds']:>9.2f}{r['rss_mb']:>13.0f}   {c['t2i']:,} / {c['judge']:,} / {c['regen']:,}"
            )
        ratio = best["janus"]["seconds"] / best["bare"]["seconds"]
        print(
            f"ratio janus / bare: {ratio:.2f}x time, {best['janus']['rss_mb'] / best['bare']['rss_mb']:.2f}x peak RSS"
        )


if __name__ == "__main__":
    main()
