"""Janus-Pro image generation: the fast loop vs the reference loop (#2) vs transformers'
generate(generation_mode="image"), image tokens/s at the same batch, same model, sampling on.

    python benchmarks/bench_generation.py                                  # CPU: the tiny model, ratios
    python benchmarks/bench_generation.py --arch 7b --batch 16,64,128      # a GPU: Janus-Pro-7B shapes, random bf16
    python benchmarks/bench_generation.py --arch 7b --batch 16 --loops fast,modules,compiled --kernels

Loops (`--loops`): `fast` (the fast loop as synth runs it: the fused decoder and CUDA graphs on
a GPU), `fused` (the fused decoder also on CPU), `modules` (the fast loop driving transformers'
decoder layers, the path before #17),
`compiled` (the fused decoder with its regional torch.compile), `reference` (#2's loop) and
`generate` (transformers). The reference loop and generate run only at batches up to
`--baseline-max-batch` (their dynamic caches do not fit beside ours at 128 prompts of 7B).

It also reports ms per decode step, (T(N tokens) - T(1 token)) / (N - 1), against the roofline: the bytes a step must read (the LLM's layers, the generation head and aligner,
plus the KV cache at the mean context) over the memory bandwidth (`--peak-gbs`, else the HBM
peak of an H100 or H200). `--kernels` counts the kernels one eager decode step launches (the
torch profiler; on CPU, the aten operators that launch no others). `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
FAST_LOOPS = {
    "fast": {},
    "fused": {"fused": True},
    "modules": {"fused": False},
    "compiled": {"fused": True, "compile": True},
}


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


VIEW_OPS = set(
    [
        "view",
        "reshape",
        "_unsafe_view",
        "slice",
        "select",
        "transpose",
        "unsqueeze",
        "squeeze",
        "split",
        "split_with_sizes",
        "chunk",
        "alias",
        "as_strided",
        "expand",
        "permute",
        "t",
        "unflatten",
        "flatten",
        "narrow",
        "detach",
    ]
)


def count_step_kernels(loop: ImageTokenLoop, params) -> int:
    """Kernels one eager decode step launches, on the loop's current buffers (after a call)."""
    from torch.profiler import ProfilerActivity, profile

    (buf,) = loop._buffers.values()
    cuda = loop.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode():
        for t in (buf.step, buf.cache.slot, buf.positions):
            t.sub_(1)  # step back: the profiled step redoes the last one, at the last window
        loop._decode(buf, False, params)  # once unprofiled (a compiled region's first call compiles)
        for t in (buf.step, buf.cache.slot, buf.positions):
            t.sub_(1)
        with profile(activities=activities) as prof:
            loop._decode(buf, False, params)
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda:
        kinds = (torch.autograd.DeviceType.CUDA,)
        return sum(1 for e in events if e.device_type in kinds and not e.name.startswith(("Memcpy", "Memset")))

    # CPU: the operators called from Python that do work (views and no-op casts launch nothing).
    def works(e) -> bool:
        op = e.name.removeprefix("aten::")
        if op == "to":
            return any(c.name == "aten::_to_copy" for c in e.cpu_children)
        return op not in VIEW_OPS

    top = [
        e
        for e in events
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
    ]
    return sum(1 for e in top if works(e))


def make_runners(loops, model, gen, ids, mask, embeds, rows_mask, seeds, batch: int, baseline_max_batch: int) -> dict:
    """name -> (fast loop or None, fn(tokens=N)) for one batch's inputs."""
    n, params = gen.num_image_tokens, gen.sampler
    runners = {}
    for name in loops:
        if name in FAST_LOOPS:
            loop = ImageTokenLoop(model, **FAST_LOOPS[name])
            runners[name] = (loop, lambda tokens=n, loop=loop: loop(embeds, rows_mask, seeds, params, tokens))
        elif batch > baseline_max_batch:
            continue
        elif name == "reference":
            runners[name] = (
                None,
                lambda tokens=n: reference_image_loop(model, embeds, rows_mask, seeds, params, tokens),
            )
        elif name == "generate":

            def run_generate(tokens=n):
                with torch.inference_mode():
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        generation_mode="image",
                        do_sample=True,
                        guidance_scale=params.cfg_weight,
                        temperature=1.0,
                    )

            runners[name] = (None, run_generate)
    return runners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="preset for dtype/device (default: tiny, or paper with --arch)")
    ap.add_argument("--arch", choices=["1b", "7b"], default=None, help="random-weight Janus-Pro of this size")
    ap.add_argument(
        "--layers", type=int, default=None, help="with --arch: keep only this many LLM layers (a CPU smoke run)"
    )
    ap.add_argument("--batch", default="8", help="prompts per batch, comma-separated (e.g. 16,64,128)")
    ap.add_argument(
        "--loops", default="fast,reference,generate", help=f"of {','.join([*FAST_LOOPS, 'reference', 'generate'])}"
    )
    ap.add_argument("--baseline-max-batch", type=int, default=64, help="run reference and generate up to this batch")
    ap.add_argument("--modules-max-batch", type=int, default=None, help="run the modules loop up to this batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-generate", action="store_true", help="leave out transformers' generate")
    ap.add_argument("--no-check", action="store_true", help="skip the fast == reference token check")
    ap.add_argument("--kernels", action="store_true", help="count the kernels of one decode step")
    ap.add_argument("--peak-gbs", type=float, default=None, help="memory bandwidth for the roofline, GB/s")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (rewritten after each batch)")
    args = ap.parse_args()

    quiet_libraries()
    cfg = load_config(args.config or ("paper" if args.arch else "tiny"))
    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    loaded = random_janus_pro(args.arch, device, dtype, num_layers=args.layers) if args.arch else None
    gen = JanusGenerator(JanusGenConfig(**{**vars(cfg.synth.janus), "loop": "reference"}), device, dtype, loaded=loaded)
    model = gen.model.eval()
    loops = [x for x in args.loops.split(",") if x and not (x == "generate" and args.skip_generate)]
    n = gen.num_image_tokens
    params = gen.sampler
    peak = hbm_peak_bytes_per_s(args.peak_gbs)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report = {"device": name, "dtype": str(dtype), "arch": args.arch, "image_tokens": n, "batches": {}}
    if peak:
        report["peak_gbs"] = peak / 1e9
    print(f"device {name}, {dtype}, {n} image tokens, torch {torch.__version__}, loops {','.join(loops)}")

    for batch in [int(b) for b in args.batch.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(batch)]
        ids, mask = gen.encode_prompts(prompts)
        embeds, rows_mask = cfg_inputs(model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)
        embeds = embeds.detach()
        seeds = torch.arange(batch, dtype=torch.int64)
        here = [x for x in loops if not (x == "modules" and batch > (args.modules_max_batch or batch))]
        runners = make_runners(here, model, gen, ids, mask, embeds, rows_mask, seeds, batch, args.baseline_max_batch)
        figures = {}
        if "fast" in runners and "reference" in runners and not args.no_check:
            same = torch.equal(runners["fast"][1]()[0], runners["reference"][1]()[0])
            figures["fast_equals_reference"] = same
            print(f"batch {batch}: fast loop tokens == reference loop tokens: {same}")
        for loop_name, (loop, fn) in runners.items():
            # generate always draws every image token: its one warm-up is a whole run, so none (the
            # other loops warmed the shared kernels and handles first).
            warmup = 0 if loop_name == "generate" else 1
            seconds = timed(fn, args.repeats, warmup=warmup)
            row = {"s_per_batch": seconds, "tokens_per_s": batch * n / seconds}
            if loop is not None and n > 1:
                one = timed(lambda fn=fn: fn(1), args.repeats)
                row["ms_per_step"] = 1e3 * (seconds - one) / (n - 1)
            if loop is not None and args.kernels:
                fn()  # leaves the buffers at the last window
                row["kernels_per_step"] = count_step_kernels(loop, params)
            figures[loop_name] = row
            if loop is not None:
                loop._buffers.clear()  # the KV cache and graphs of this batch: free them for the next loop
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # The roofline means something for --arch; the tiny model's is computed too, as a smoke test.
        need = step_bytes(model, 2 * batch, ids.shape[1] + n / 2)
        figures["gb_per_step"] = need / 1e9
        if peak:
            figures["roofline_ms"] = 1e3 * need / peak
            for row in figures.values():
                if isinstance(row, dict) and "ms_per_step" in row:
                    row["roofline_pct"] = 100 * figures["roofline_ms"] / row["ms_per_step"]
        report["batches"][str(batch)] = figures
        print_batch(batch, figures)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))


def print_batch(batch: int, figures: dict) -> None:
    rows = {k: v for k, v in figures.items() if isinstance(v, dict)}
    base = rows.get("fast") or next(iter(rows.values()))
    print(f"\nbatch {batch}")
    print(
        f"{'loop':<12}{'image tok/s':>13}{'s/batch':>10}{'fast speedup':>14}{'ms/step':>10}{'%roof':>7}{'kernels':>9}"
    )
    for name, row in rows.items():
        ms = f"{row['ms_per_step']:>10.2f}" if "ms_per_step" in row else f"{'-':>10}"
        roof = f"{row['roofline_pct']:>7.0f}" if "roofline_pct" in row else f"{'-':>7}"
        kernels = f"{row['kernels_per_step']:>9}" if "kernels_per_step" in row else f"{'-':>9}"
        speedup = row["s_per_batch"] / base["s_per_batch"]
        print(f"{name:<12}{row['tokens_per_s']:>13,.0f}{row['s_per_batch']:>10.3f}{speedup:>13.2f}x{ms}{roof}{kernels}")
    if "roofline_ms" in figures:
        print(f"roofline: {figures['gb_per_step']:.2f} GB per step = {figures['roofline_ms']:.2f} ms")


if __name__ == "__main__":
    main()
