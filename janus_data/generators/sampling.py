"""The image-token sampling step: CFG mix -> top-k -> softmax(logits / T) -> top-p -> sample.

Randomness is counter-based: the uniform for (row seed, step, token) is a fixed integer
hash, so a row's tokens depend only on its own seed and never on its batch neighbours,
and a fused kernel can reproduce the exact same numbers (issue #6). Sampling is
Gumbel-max over the masked, tempered CFG logits: exact sampling from the same
distribution the reference code draws from with torch.multinomial.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


@dataclass(frozen=True)
class SamplerParams:
    """Sampling settings; temperature 0 means greedy."""

    cfg_weight: float = 5.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def _mul32(a: torch.Tensor, b: int) -> torch.Tensor:
    """(a * b) mod 2**32 for int64 `a` in [0, 2**32) without int64 overflow."""
    lo, hi = b & 0xFFFF, b >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def step_key(step: int | torch.Tensor) -> int | torch.Tensor:
    """The step's 32-bit counter, (step * golden + c) mod 2**32; `step` a python int or a 0-dim int64 tensor.

    A tensor step lets a captured CUDA graph advance the step on the device, with no host round trip.
    """
    if isinstance(step, torch.Tensor):
        return (_mul32(step.to(torch.int64) & _MASK32, _GOLDEN) + 0x27D4EB2F) & _MASK32
    return (step * _GOLDEN + 0x27D4EB2F) & _MASK32


def row_keys(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Per-row 32-bit keys for one decode step: (B,) int64 seeds -> (B,) int64 keys."""
    seeds = seeds.to(torch.int64)
    lo = seeds & _MASK32
    hi = (seeds >> 32) & _MASK32
    key = mix32(lo ^ mix32(hi ^ 0x85EBCA6B))
    counter = step_key(step)
    counter = counter.expand_as(key) if isinstance(counter, torch.Tensor) else torch.full_like(key, counter)
    return mix32(key ^ mix32(counter))


def counter_uniform(seeds: torch.Tensor, step: int | torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), exactly representable in fp32: (B,) seeds -> (B, vocab).

    23 bits: (k + 0.5) / 2**23 is exact in fp32 for every k, so no uniform rounds to 1.0 (which
    would make the Gumbel noise infinite).
    """
    keys = row_keys(seeds, step)
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = mix32((keys[:, None] + _mul32(idx, _GOLDEN)[None, :]) & _MASK32)
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg_weight: float) -> torch.Tensor:
    """uncond + w * (cond - uncond) in fp32: (B, V), (B, V) -> (B, V)."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + cfg_weight * (cond - uncond)


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> int64 keys in [0, 2**32) whose order is the float order (-inf lowest), as the kernel's."""
    bits = x.float().contiguous().view(torch.int32).to(torch.int64)
    flipped = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (flipped & _MASK32) ^ 0x80000000


def top_p_threshold(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, 1) key of the smallest kept scaled logit: the largest key whose at-or-above mass >= top_p.

    Sorted descending, that is the first token at which the cumulative probability reaches
    top_p: every token before it and it are kept (at least one token always is). Found bit by
    bit over the order keys, exactly as the kernel does, without a sort.
    """
    weights = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values)
    total = weights.sum(dim=-1, keepdim=True)
    keys = order_keys(scaled)
    found = torch.zeros_like(total, dtype=torch.int64)
    for bit in range(31, -1, -1):
        trial = found | (1 << bit)
        mass = torch.where(keys >= trial, weights, 0.0).sum(dim=-1, keepdim=True) / total
        found = torch.where(mass >= top_p, trial, found)
    return found


def masked_scaled_logits(logits: torch.Tensor, params: SamplerParams) -> torch.Tensor:
    """Apply top-k, temperature and top-p; masked tokens become -inf: (B, V) -> (B, V).

    top-k keeps every logit >= the k-th largest (ties included); top-p keeps the smallest set of
    most likely tokens whose mass reaches top_p (`top_p_threshold`).
    """
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    scaled = logits / params.temperature
    if params.top_p < 1.0:
        scaled = scaled.masked_fill(order_keys(scaled) < top_p_threshold(scaled, params.top_p), float("-inf"))
    return scaled


def sample_reference(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    params: SamplerParams,
    want_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain torch sampler: (B, V) cond/uncond logits, (B,) seeds -> (B,) tokens, (B,) logprobs.

    The log-probability is of the sampled token under the distribution sampled from
    (CFG logits, top-k, temperature, top-p); greedy reports it under softmax(CFG logits).
    """
    logits = cfg_logits(cond, uncond, params.cfg_weight)
    if params.temperature == 0:
        tokens = torch.argmax(logits, dim=-1)
        scaled = logits
    else:
        scaled = masked_scaled_logits(logits, params)
        gumbel = -torch.log(-torch.log(counter_uniform(seeds, step, logits.shape[-1])))
        tokens = torch.argmax(scaled + gumbel, dim=-1)
    logprobs = None
    if want_logprobs:
        logprobs = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logprobs


Sampler = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def get_sampler(device: torch.device, override: str | None = None) -> Sampler:
    """The one dispatch point: JANUS_SAMPLER=reference|kernel, else the best for `device`."""
    choice = override or os.environ.get("JANUS_SAMPLER", "auto")
    if choice not in ("auto", "reference", "kernel"):
        raise ValueError(f"JANUS_SAMPLER must be auto, reference or kernel, got {choice!r}")
    if choice == "reference" or (choice == "auto" and device.type != "cuda"):
        return sample_reference
    try:
        from janus_data.generators.sampling_kernel import sample_kernel
    except ImportError as err:
        if choice == "kernel":
            raise ValueError(f"JANUS_SAMPLER=kernel needs triton ({err}); pip install janus[triton]") from None
        return sample_reference
    return sample_kernel
