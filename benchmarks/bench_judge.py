"""In-process judge throughput: images/s of HFJudge.score at batch 1 and batch B, as a ratio from one run.

    python benchmarks/bench_judge.py                                    # tiny judge, CPU
    python benchmarks/bench_judge.py --arch 8b --batch 32 --size 1024   # a GPU: InternVL3-8B shapes, random bf16

Each image is scored as `janus data score` does it: the yes/no question (S from the first token)
and then a greedy reason of `--reason-tokens` tokens. Random weights never stop early, so the
reason always runs its full length (the worst case).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from janus_data.config import RuntimeConfig
from janus_data.judge.hf import HFJudge
from janus_data.models import resolve_device, resolve_dtype, tiny_model_path
from janus_data.progress import quiet_libraries


def noise_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random colour fields (not constant: the vision tower sees varied pixels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    return [Image.fromarray(a).resize((size, size), Image.BILINEAR) for a in small]


def random_internvl(size: str, device: torch.device, dtype: torch.dtype):
    """InternVL3-{size}'s real architecture with random weights, with the tiny judge's tokenizer and processor."""
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

    from janus_data.arch import internvl3_config

    path = tiny_model_path("internvl")
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    cfg = internvl3_config(size, image_token_id=tokenizer.context_image_token_id)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = InternVLForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer, processor


def rate(judge: HFJudge, images: list[Image.Image], batch: int) -> float:
    """Images/s scoring `images` in batches of `batch` (after one warm-up batch)."""
    prompts = [f"a photo of object number {i} on a table" for i in range(len(images))]
    judge.score(prompts[:batch], images[:batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(images), batch):
        judge.score(prompts[start : start + batch], images[start : start + batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:internvl", help="judge checkpoint (ignored with --arch)")
    ap.add_argument("--arch", choices=["1b", "2b", "8b", "14b"], default=None, help="random-weight InternVL3 size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=None, help="images per measurement (default 2 x batch)")
    ap.add_argument("--size", type=int, default=384, help="image side in px (384: 1 tile; 1024: 9 tiles + thumbnail)")
    ap.add_argument("--max-tiles", type=int, default=12)
    ap.add_argument("--reason-tokens", type=int, default=64)
    args = ap.parse_args()

    quiet_libraries()
    device = resolve_device(RuntimeConfig())
    dtype = resolve_dtype(RuntimeConfig(), device)
    loaded = random_internvl(args.arch, device, dtype) if args.arch else None
    judge = HFJudge(args.model, device, dtype, args.max_tiles, args.reason_tokens, loaded=loaded)
    n = args.images or 2 * args.batch
    images = noise_images(n, args.size)
    tiles = judge.preprocess(images[:1])[1][0]
    name = f"InternVL3-{args.arch} (random)" if args.arch else args.model
    print(
        f"judge {name}, device {device}, dtype {dtype}, {args.size} px = {tiles} tiles, "
        f"reason {args.reason_tokens} tokens, {n} images, torch {torch.__version__}"
    )
    one = rate(judge, images[: max(2, n // 4)], 1)
    many = rate(judge, images, args.batch)
    print(f"{'batch':>6}{'img/s':>10}")
    print(f"{1:>6}{one:>10.2f}")
    print(f"{args.batch:>6}{many:>10.2f}")
    print(f"ratio batch {args.batch} / batch 1: {many / one:.2f}x")


if __name__ == "__main__":
    main()
