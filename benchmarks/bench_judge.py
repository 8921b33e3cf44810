"""Judge throughput, each as a ratio from one run:

- hf: images/s of HFJudge.score in process at batch 1 vs batch B; and at batch B, one shared
  prefill of the image for S and the reason vs the two separate passes used before (with the
  largest S difference between them);
- server: images/s of the lmdeploy client (ServerJudge) against an in-process JudgeServer at
  client concurrency 1 vs N. The server gathers concurrent requests into one forward batch, so
  concurrency pays off as with LMDeploy's continuous batching.

    python benchmarks/bench_judge.py                                              # tiny judge, CPU, both
    python benchmarks/bench_judge.py --only hf --arch 8b --batch 32 --size 1024   # a GPU: InternVL3-8B shapes

Each image is scored as `janus data score` does it: the yes/no question (S from the first token)
and then a greedy reason of `--reason-tokens` tokens (over HTTP: two requests). Random weights
never stop early, so the reason always runs its full length (the worst case).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch
from PIL import Image

from janus_data.arch import random_internvl
from janus_data.config import RuntimeConfig
from janus_data.judge.client import ServerJudge
from janus_data.judge.hf import HFJudge
from janus_data.judge.server import JudgeServer
from janus_data.models import resolve_device, resolve_dtype
from janus_data.progress import quiet_libraries


def noise_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random colour fields (not constant: the vision tower sees varied pixels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    return [Image.fromarray(a).resize((size, size), Image.BILINEAR) for a in small]


def rate(judge: HFJudge, images: list[Image.Image], batch: int, shared: bool = True, repeats: int = 1) -> float:
    """Images/s scoring `images` in batches of `batch` (after one warm-up batch; best of `repeats`)."""
    prompts = [f"a photo of object number {i} on a table" for i in range(len(images))]
    judge.score(prompts[:batch], images[:batch], shared_prefill=shared)
    best = 0.0
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            judge.score(prompts[start : start + batch], images[start : start + batch], shared_prefill=shared)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def prefill_table(judge: HFJudge, images: list[Image.Image], batch: int, repeats: int) -> None:
    """One shared prefill vs two passes at the same batch, interleaved so both see the same machine."""
    prompts = [f"a photo of object number {i} on a table" for i in range(batch)]
    diff = max(
        abs(a.score - b.score)
        for a, b in zip(
            judge.score(prompts, images[:batch]),
            judge.score(prompts, images[:batch], shared_prefill=False),
            strict=True,
        )
    )
    two, one = 0.0, 0.0
    for _ in range(repeats):
        two = max(two, rate(judge, images, batch, shared=False))
        one = max(one, rate(judge, images, batch, shared=True))
    print(f"{'batch ' + str(batch):>16}{'img/s':>10}")
    print(f"{'two passes':>16}{two:>10.2f}")
    print(f"{'one prefill':>16}{one:>10.2f}")
    print(f"ratio one prefill / two passes at batch {batch}: {one / two:.2f}x (max |S difference| {diff:.1e})")


def client_rate(url: str, images: list[Image.Image], concurrency: int, reason_tokens: int) -> float:
    """Images/s of one ServerJudge.score call over all `images` (after a small warm-up)."""
    client = ServerJudge([url], concurrency=concurrency, reason_tokens=reason_tokens)
    prompts = [f"a photo of object number {i} on a table" for i in range(len(images))]
    client.score(prompts[:2], images[:2])
    t0 = time.perf_counter()
    results = client.score(prompts, images)
    elapsed = time.perf_counter() - t0
    if any(r.error for r in results):
        raise SystemExit(f"error rows: {[r.error for r in results if r.error][:3]}")
    return len(images) / elapsed


def table(label: str, rows: list[tuple[int, float]]) -> None:
    print(f"{label:>12}{'img/s':>10}")
    for key, value in rows:
        print(f"{key:>12}{value:>10.2f}")
    print(f"ratio {label} {rows[1][0]} / {rows[0][0]}: {rows[1][1] / rows[0][1]:.2f}x")


def load_judge(args: argparse.Namespace) -> HFJudge:
    """The judge under test: a checkpoint, or InternVL3-{arch}'s shapes with random weights."""
    quiet_libraries()
    device = resolve_device(RuntimeConfig())
    dtype = resolve_dtype(RuntimeConfig(), device)
    loaded = random_internvl(args.arch, device, dtype) if args.arch else None
    return HFJudge(args.model, device, dtype, args.max_tiles, args.reason_tokens, loaded=loaded)


def serve(args: argparse.Namespace, urls) -> None:
    """Child process: load the judge, serve it, report the URL (as `janus serve judge` runs)."""
    server = JudgeServer(load_judge(args), max_batch=args.max_batch)
    urls.put(server.url)
    server.serve_forever()


def bench_server(args: argparse.Namespace) -> None:
    """Client concurrency 1 vs N against a JudgeServer in its own process (the judge has the GIL to itself)."""
    images = noise_images(args.images or 48, args.size, seed=1)
    ctx = multiprocessing.get_context("spawn")
    urls = ctx.Queue()
    child = ctx.Process(target=serve, args=(args, urls), daemon=True)
    child.start()
    try:
        url = urls.get(timeout=900)
        print(f"server: {len(images)} images, JudgeServer max_batch {args.max_batch} in a child process")
        rows = [(c, client_rate(url, images, c, args.reason_tokens)) for c in (1, args.concurrency)]
    finally:
        child.terminate()
        child.join()
    table("concurrency", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:internvl", help="judge checkpoint (ignored with --arch)")
    ap.add_argument("--arch", choices=["1b", "2b", "8b", "14b"], default=None, help="random-weight InternVL3 size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=None, help="images per measurement (default 2 x batch)")
    ap.add_argument("--size", type=int, default=384, help="image side in px (384: 1 tile; 1024: 9 tiles + thumbnail)")
    ap.add_argument("--max-tiles", type=int, default=12)
    ap.add_argument("--reason-tokens", type=int, default=64)
    ap.add_argument("--only", choices=["hf", "server"], default=None)
    ap.add_argument("--concurrency", type=int, default=16, help="server: client requests in flight (vs 1)")
    ap.add_argument("--max-batch", type=int, default=16, help="server: micro-batch size")
    ap.add_argument("--repeats", type=int, default=3, help="hf: interleaved repeats of the prefill comparison")
    args = ap.parse_args()

    name = f"InternVL3-{args.arch} (random)" if args.arch else args.model
    print(f"judge {name}, {args.size} px, reason {args.reason_tokens} tokens, torch {torch.__version__}")
    if args.only in (None, "hf"):
        judge = load_judge(args)
        n = args.images or 2 * args.batch
        images = noise_images(n, args.size)
        tiles = judge.preprocess(images[:1])[1][0]
        print(
            f"hf: device {judge.device}, dtype {judge.dtype}, {tiles} tile(s), {n} images, threads {torch.get_num_threads()}"
        )
        one = rate(judge, images[: max(2, n // 4)], 1)
        many = rate(judge, images, args.batch)
        table("batch", [(1, one), (args.batch, many)])
        if args.reason_tokens > 0:
            prefill_table(judge, images, args.batch, args.repeats)
        del judge
    if args.only in (None, "server"):
        bench_server(args)


if __name__ == "__main__":
    main()
