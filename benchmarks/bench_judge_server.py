"""Judge-server throughput: images/s of ServerJudge against an in-process JudgeServer at client
concurrency 1 and N, as a ratio from one run. The server gathers concurrent requests into one
HFJudge.chat batch, so concurrency should pay off as with LMDeploy's continuous batching.

    python benchmarks/bench_judge_server.py                          # tiny judge, CPU, 48 images
    python benchmarks/bench_judge_server.py --concurrency 32 --max-batch 32 --size 1024   # a GPU

Each image costs two requests (the yes/no question for S, then a greedy reason of
`--reason-tokens` tokens), as `janus data score` with the lmdeploy backend sends them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from janus_data.config import RuntimeConfig
from janus_data.judge.client import ServerJudge
from janus_data.judge.hf import HFJudge
from janus_data.judge.server import JudgeServer
from janus_data.models import resolve_device, resolve_dtype
from janus_data.progress import quiet_libraries


def noise_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Random-pixel images of `size` x `size`."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def rate(url: str, images: list[Image.Image], concurrency: int, reason_tokens: int) -> float:
    """Images/s scoring all `images` in one ServerJudge.score call (after a small warm-up)."""
    client = ServerJudge([url], concurrency=concurrency, reason_tokens=reason_tokens)
    prompts = [f"a photo of object number {i} on a table" for i in range(len(images))]
    client.score(prompts[:2], images[:2])
    t0 = time.perf_counter()
    results = client.score(prompts, images)
    elapsed = time.perf_counter() - t0
    if any(r.error for r in results):
        raise SystemExit(f"error rows: {[r.error for r in results if r.error][:3]}")
    return len(images) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:internvl", help="judge checkpoint")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=384, help="image side in px (384: 1 tile)")
    ap.add_argument("--concurrency", type=int, default=16, help="client requests in flight (vs 1)")
    ap.add_argument("--max-batch", type=int, default=16, help="server micro-batch size")
    ap.add_argument("--max-tiles", type=int, default=12)
    ap.add_argument("--reason-tokens", type=int, default=64)
    args = ap.parse_args()

    quiet_libraries()
    device = resolve_device(RuntimeConfig())
    dtype = resolve_dtype(RuntimeConfig(), device)
    judge = HFJudge(args.model, device, dtype, args.max_tiles, args.reason_tokens)
    images = noise_images(args.images, args.size)
    print(
        f"judge {args.model}, device {device}, dtype {dtype}, {args.images} images of {args.size} px, "
        f"reason {args.reason_tokens} tokens, server max_batch {args.max_batch}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    with JudgeServer(judge, max_batch=args.max_batch) as server:
        rows = [(c, rate(server.url, images, c, args.reason_tokens)) for c in (1, args.concurrency)]
    print(f"{'concurrency':>12}{'img/s':>10}")
    for concurrency, value in rows:
        print(f"{concurrency:>12}{value:>10.2f}")
    print(f"ratio concurrency {args.concurrency} / 1: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
