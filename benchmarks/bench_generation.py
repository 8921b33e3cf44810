"""Janus-Pro image generation: the fast loop vs the reference loop (#2) vs transformers'
generate(generation_mode="image"), image tokens/s at the same batch, same model, sampling on.

    python benchmarks/bench_generation.py                        # CPU: the tiny model, ratios
    python benchmarks/bench_generation.py --arch 7b --batch 16   # a GPU: Janus-Pro-7B shapes, random bf16

With --arch it also reports ms per decode step, (T(N tokens) - T(1 token)) / (N - 1), against
the roofline: the bytes a step must read (the LLM's layers, the generation head and aligner,
plus the KV cache at the mean context) over the GPU's HBM peak (H100 SXM 3.35 TB/s).
"""

from __future__ import annotations

import argparse

import torch
from timing import hbm_peak_bytes_per_s, timed

from janus_data.arch import random_janus_pro
from janus_data.config import JanusGenConfig, load_config
from janus_data.generators.fast_loop import ImageTokenLoop
from janus_data.generators.janus import JanusGenerator
from janus_data.generators.janus_loop import cfg_inputs, reference_image_loop
from janus_data.models import resolve_device, resolve_dtype
from janus_data.progress import quiet_libraries

PROMPTS = [
    "a photo of two red apples on a wooden table",
    "a blue bicycle to the left of a yellow fire hydrant",
    "three cats sleeping on a sofa",
    "a green umbrella above a white dog",
]


def step_bytes(model, rows: int, context: float) -> float:
    """Bytes one decode step must read: the LLM's layers, the generation head and aligner, and the KV cache.

    The text embedding table is not read while drawing image tokens, so it is left out.
    """
    lm = model.model.language_model
    text_embed = {id(p) for p in lm.embed_tokens.parameters()}
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if id(p) not in text_embed)
    for part in (model.model.generation_head, model.model.generation_aligner):
        weights += sum(p.numel() * p.element_size() for p in part.parameters())
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    elem = next(lm.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * rows * kv_heads * head_dim * context * elem
    return weights + kv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="preset for dtype/device (default: tiny, or paper with --arch)")
    ap.add_argument("--arch", choices=["1b", "7b"], default=None, help="random-weight Janus-Pro of this size")
    ap.add_argument(
        "--layers", type=int, default=None, help="with --arch: keep only this many LLM layers (a CPU smoke run)"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-generate", action="store_true", help="leave out transformers' generate")
    ap.add_argument("--peak-gbs", type=float, default=None)
    args = ap.parse_args()

    quiet_libraries()
    cfg = load_config(args.config or ("paper" if args.arch else "tiny"))
    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    loaded = random_janus_pro(args.arch, device, dtype, num_layers=args.layers) if args.arch else None
    gen = JanusGenerator(JanusGenConfig(**{**vars(cfg.synth.janus), "loop": "reference"}), device, dtype, loaded=loaded)
    model = gen.model.eval()
    prompts = [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(args.batch)]
    ids, mask = gen.encode_prompts(prompts)
    embeds, rows_mask = cfg_inputs(model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)
    embeds = embeds.detach()
    seeds = torch.arange(args.batch, dtype=torch.int64)
    n = gen.num_image_tokens
    params = gen.sampler
    fast = ImageTokenLoop(model)
    print(
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {dtype}, batch {args.batch}, "
        f"{n} image tokens, cuda graph {fast.use_graph}, torch {torch.__version__}"
    )

    def run_fast(tokens=n):
        return fast(embeds, rows_mask, seeds, params, tokens)

    def run_reference(tokens=n):
        return reference_image_loop(model, embeds, rows_mask, seeds, params, tokens)

    same = torch.equal(run_fast()[0], run_reference()[0])
    print(f"fast loop tokens == reference loop tokens: {same}")
    times = {"fast loop": timed(run_fast, args.repeats), "reference loop (#2)": timed(run_reference, args.repeats)}
    if not args.skip_generate:

        def run_generate():
            with torch.inference_mode():
                model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_mode="image",
                    do_sample=True,
                    guidance_scale=params.cfg_weight,
                    temperature=1.0,
                )

        times["transformers generate"] = timed(run_generate, args.repeats)
    print(f"{'loop':<24}{'image tok/s':>13}{'s/batch':>10}{'fast speedup':>14}")
    for name, seconds in times.items():
        print(f"{name:<24}{args.batch * n / seconds:>13,.0f}{seconds:>10.3f}{seconds / times['fast loop']:>13.2f}x")

    if args.arch and n > 1:
        per_step = {}
        for name, fn in (("fast loop", run_fast), ("reference loop (#2)", run_reference)):
            one = timed(lambda fn=fn: fn(1), args.repeats)
            per_step[name] = (times[name] - one) / (n - 1)
        context = ids.shape[1] + n / 2
        need = step_bytes(model, 2 * args.batch, context)
        peak = hbm_peak_bytes_per_s(args.peak_gbs)
        line = f"roofline: {need / 1e9:.2f} GB per step"
        roof = need / peak if peak else None
        if roof:
            line += f" / {peak / 1e12:.2f} TB/s = {roof * 1e3:.2f} ms"
        print(line)
        for name, seconds in per_step.items():
            share = f", {100 * roof / seconds:.0f}% of roofline" if roof else ""
            print(f"{name:<24} {seconds * 1e3:.2f} ms per decode step{share}")


if __name__ == "__main__":
    main()
