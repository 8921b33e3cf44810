"""The sampler at the shape the loop calls it with: GPU time per call, fused kernel vs torch reference.

    python benchmarks/gpu_sampler.py --json sampler.json           # a GPU: [32 x 16384] bf16 (16 prompts)
    python benchmarks/gpu_sampler.py --json sampler.json --dry-run # CPU: the reference only, fewer calls

Both samplers are timed as the loop runs them: `--calls` calls captured in one CUDA graph (the
step a device tensor, as in the loop), the graph replayed, CUDA events around the replays, so
launch overhead on the host is out of both figures. First the kernel's tokens are checked
against the reference's on the same logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from janus_data.generators.sampling import SamplerParams, sample_reference

SETTINGS = {"t1": SamplerParams(cfg_weight=5.0), "topk_topp": SamplerParams(cfg_weight=5.0, top_k=50, top_p=0.9)}


def graph_us_per_call(fn, calls: int, replays: int) -> float:
    """Median microseconds per call of fn() over `replays` replays of a graph holding `calls` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def eager_us_per_call(fn, calls: int, replays: int) -> float:
    """Median microseconds per call of `calls` back-to-back eager calls (CUDA events): the fallback
    for a sampler that cannot be captured."""
    fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def host_us_per_call(fn, calls: int, replays: int) -> float:
    fn()
    times = []
    for _ in range(replays):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="CFG rows (2 per prompt)")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="fewer calls (CPU smoke run)")
    args = ap.parse_args()
    if args.dry_run:
        args.calls, args.replays = 3, 3

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batch = args.rows // 2
    torch.manual_seed(0)
    logits = torch.randn(args.rows, args.vocab, device=device).mul_(3).to(dtype)
    cond, uncond = logits[:batch], logits[batch:]
    seeds = torch.arange(batch, device=device, dtype=torch.int64) * 7919
    step = torch.tensor(11, device=device)
    samplers = {"reference": sample_reference}
    if cuda:
        from janus_data.generators.sampling_kernel import sample_kernel

        samplers = {"kernel": sample_kernel, **samplers}
    timer = graph_us_per_call if cuda else host_us_per_call
    name = torch.cuda.get_device_name() if cuda else "cpu"
    figures = {"device": name, "shape": [args.rows, args.vocab], "dtype": str(dtype), "settings": {}}
    print(f"device {name}, [{args.rows} x {args.vocab}] {dtype}, {'graph replay' if cuda else 'host clock'}")
    print(f"{'setting':<11}{'sampler':<11}{'us/call':>10}{'vs reference':>14}")
    for label, params in SETTINGS.items():
        row = {}
        if "kernel" in samplers:
            ref = sample_reference(cond, uncond, seeds, step, params, True)
            out = samplers["kernel"](cond, uncond, seeds, step, params, True)
            row["tokens_equal"] = bool(torch.equal(out[0], ref[0]))
            row["max_logprob_diff"] = float((out[1] - ref[1]).abs().max())
        for sampler_name, fn in samplers.items():
            call = lambda fn=fn, params=params: fn(cond, uncond, seeds, step, params, True)  # noqa: E731
            try:
                row[f"{sampler_name}_us"] = timer(call, args.calls, args.replays)
            except RuntimeError as err:  # capture failed: time it eagerly, and say so
                print(f"{sampler_name}: graph capture failed ({str(err).splitlines()[0]}); timing eager calls")
                torch.cuda.synchronize()
                row[f"{sampler_name}_us"] = eager_us_per_call(call, args.calls, args.replays)
                row[f"{sampler_name}_eager"] = True
        if "kernel_us" in row:
            row["speedup"] = row["reference_us"] / row["kernel_us"]
        figures["settings"][label] = row
        for sampler_name in samplers:
            us = row[f"{sampler_name}_us"]
            print(f"{label:<11}{sampler_name:<11}{us:>10.1f}{row['reference_us'] / us:>13.2f}x")
        if "tokens_equal" in row:
            print(f"{label:<11}kernel tokens == reference tokens: {row['tokens_equal']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
