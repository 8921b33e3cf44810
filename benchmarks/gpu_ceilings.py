"""The two ceilings every figure of the GPU checks is read against, measured on the machine itself.

    python benchmarks/gpu_ceilings.py --json ceilings.json            # a GPU: 4 GiB copy, 8192^3 bf16 matmul
    python benchmarks/gpu_ceilings.py --json ceilings.json --dry-run  # CPU: small sizes, fp32

- Memory: a device-to-device copy of a large buffer, counting bytes read plus bytes written.
- Arithmetic: a bf16 matrix product on random data (zeros run faster and would flatter it).
Medians over repeats, timed with CUDA events after a warm-up (METHOD.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() over `repeats`, CUDA events on a GPU, the host clock elsewhere."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(dry_run: bool) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    copy_bytes = (64 if dry_run else 4096) << 20
    buffers = [torch.randn(copy_bytes // 4, device=device)]
    buffers.append(torch.empty_like(buffers[0]))
    copy_s = median_seconds(lambda: buffers[1].copy_(buffers[0]), 5 if dry_run else 20)
    buffers.clear()  # free them before the matmul's
    n = 512 if dry_run else 8192
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm_s = median_seconds(lambda: a @ b, 5 if dry_run else 20)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "copy_gbs": 2 * copy_bytes / copy_s / 1e9,
        "matmul_tflops": 2 * n**3 / mm_s / 1e12,
        "matmul": f"{n}x{n}x{n} {dtype}",
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="small sizes (CPU smoke run)")
    args = ap.parse_args()
    figures = measure(args.dry_run)
    print(f"device {figures['device']}, torch {figures['torch']}")
    print(f"device-to-device copy   {figures['copy_gbs']:>10,.0f} GB/s (read + write)")
    print(f"matmul {figures['matmul']:<16} {figures['matmul_tflops']:>7,.3g} TFLOP/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
