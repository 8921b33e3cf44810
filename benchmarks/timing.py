"""Timing shared by the benchmarks: best-of-N wall time, synchronised on CUDA."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best-of-`repeats` wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def per_call(fn: Callable[[], object], calls: int, repeats: int = 3) -> float:
    """Best-of-`repeats` mean seconds per call over `calls` back-to-back calls (launch-bound ops)."""

    def many():
        for _ in range(calls):
            fn()

    return timed(many, repeats) / calls


def hbm_peak_bytes_per_s(override_gbs: float | None = None) -> float | None:
    """Peak memory bandwidth of this GPU (H100 SXM 3.35 TB/s, H200 4.8 TB/s), or the override; None on CPU."""
    if override_gbs:
        return override_gbs * 1e9
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    if "H200" in name:
        return 4.8e12
    if "H100" in name:
        return 3.35e12 if "PCIe" not in name else 2.0e12
    return None
