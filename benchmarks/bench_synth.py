"""Synth throughput: images/s per generator at batch 1 and batch B, as ratios from one run.
(The Janus loop against transformers' generate is benchmarks/bench_generation.py.)

    python benchmarks/bench_synth.py                       # tiny models, CPU
    python benchmarks/bench_synth.py --config paper --arch 7b --batch 16 --only janus   # a GPU, random bf16 weights
"""

from __future__ import annotations

import argparse

import torch
from timing import timed

from janus_data.arch import random_janus_pro
from janus_data.config import load_config
from janus_data.models import resolve_device, resolve_dtype
from janus_data.progress import quiet_libraries

PROMPTS = [
    "a photo of two red apples on a wooden table",
    "a blue bicycle to the left of a yellow fire hydrant",
    "three cats sleeping on a sofa",
    "a green umbrella above a white dog",
]


def prompts_for(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(n)]


def bench_generator(gen, batch: int, repeats: int) -> tuple[float, float]:
    """(images/s at batch 1, images/s at batch B)."""
    one = timed(lambda: gen.generate(prompts_for(1), [0]), repeats)
    many = timed(lambda: gen.generate(prompts_for(batch), list(range(batch))), repeats)
    return 1 / one, batch / many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["flux", "janus"], default=None)
    ap.add_argument("--arch", choices=["1b", "7b"], default=None, help="random-weight Janus-Pro of this size")
    args = ap.parse_args()

    quiet_libraries()
    cfg = load_config(args.config)
    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    print(
        f"device {device}, dtype {dtype}, batch {args.batch}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    rows = []
    if args.only in (None, "janus"):
        from janus_data.generators.janus import JanusGenerator

        loaded = random_janus_pro(args.arch, device, dtype) if args.arch else None
        if loaded:
            loaded[0].eval()
        jan = JanusGenerator(cfg.synth.janus, device, dtype, loaded=loaded)
        b1, bb = bench_generator(jan, args.batch, args.repeats)
        rows.append(("janus", b1, bb))
        del jan
    if args.only in (None, "flux"):
        from janus_data.generators.flux import FluxGenerator

        flux = FluxGenerator(cfg.synth.flux, device, dtype)
        b1, bb = bench_generator(flux, args.batch, args.repeats)
        rows.append(("flux", b1, bb))
    print(f"{'generator':<10}{'img/s @1':>12}{f'img/s @{args.batch}':>14}{'ratio':>8}")
    for name, b1, bb in rows:
        print(f"{name:<10}{b1:>12.2f}{bb:>14.2f}{bb / b1:>7.2f}x")


if __name__ == "__main__":
    main()
