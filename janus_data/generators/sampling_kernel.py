"""The fused image-token sampler: one Triton program per prompt does the whole sampling step.

It reads the prompt's conditional and unconditional logits once (the row stays in registers)
and does CFG mix -> top-k -> softmax(logits / T) -> top-p -> Gumbel-max -> the sampled
token's log-probability, in one launch. It is the same math as `sampling.sample_reference`,
which is its CPU path and its test oracle:

- the Gumbel noise comes from the same counter-based hash (`mix32` of the row's seed, the
  step and the token index), computed in the kernel with wrapping uint32 arithmetic;
- top-k keeps every logit >= the k-th largest, top-p every scaled logit >= the first one at
  which the mass of the larger-or-equal ones reaches top_p. Both thresholds are found exactly,
  without sorting: a 32-step search over the float's order-preserving integer key, one masked
  count (or sum) over the row per step;
- greedy (temperature 0) is argmax of the CFG logits; ties go to the lowest index, as
  torch.argmax does.

The row is held whole in registers (BLOCK = next power of two of the vocabulary: 16384 for
Janus-Pro), so any vocabulary works and the image vocabulary runs from registers. Tests run
it on CPU tensors with TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from janus_data.generators.sampling import SamplerParams, step_key


@triton.jit
def _mix32(x):
    """lowbias32 on uint32 (multiplications wrap mod 2**32, as in `sampling.mix32`)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _order_key(x):
    """Float32 -> uint32 whose unsigned order is the float order (-inf lowest)."""
    bits = x.to(tl.int32, bitcast=True)
    flipped = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order
    return flipped.to(tl.uint32, bitcast=True) ^ 0x80000000


@triton.jit
def _sample_row(
    cond_ptr,
    uncond_ptr,
    seeds_ptr,
    tokens_ptr,
    logprobs_ptr,
    stride_cond,
    stride_uncond,
    vocab,
    cfg_weight,
    temperature,
    top_k,
    top_p,
    step_key,
    step_ptr,
    BLOCK: tl.constexpr,
    STEP_FROM_PTR: tl.constexpr,
    GREEDY: tl.constexpr,
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    WANT_LOGPROBS: tl.constexpr,
):
    row = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    valid = idx < vocab
    cond = tl.load(cond_ptr + row * stride_cond + idx, mask=valid, other=0.0).to(tl.float32)
    uncond = tl.load(uncond_ptr + row * stride_uncond + idx, mask=valid, other=0.0).to(tl.float32)
    logits = uncond + cfg_weight * (cond - uncond)
    logits = tl.where(valid, logits, float("-inf"))

    if GREEDY:
        token = tl.argmax(logits, axis=0, tie_break_left=True)
        scaled = logits
    else:
        if USE_TOP_K:
            # The k-th largest logit, bit by bit: the largest key with >= k keys at or above it.
            keys = _order_key(logits)
            found = tl.zeros((), dtype=tl.uint32)
            for bit in range(31, -1, -1):
                trial = found | (tl.full((), 1, tl.uint32) << bit)
                count = tl.sum((keys >= trial).to(tl.int32), axis=0)
                found = tl.where(count >= top_k, trial, found)
            logits = tl.where(keys >= found, logits, float("-inf"))
        scaled = logits / temperature  # division, as the reference (bit-identical)
        if USE_TOP_P:
            peak = tl.max(scaled, axis=0)
            weights = tl.exp(scaled - peak)
            total = tl.sum(weights, axis=0)
            keys = _order_key(scaled)
            found = tl.zeros((), dtype=tl.uint32)
            for bit in range(31, -1, -1):
                trial = found | (tl.full((), 1, tl.uint32) << bit)
                mass = tl.sum(tl.where(keys >= trial, weights, 0.0), axis=0) / total
                found = tl.where(mass >= top_p, trial, found)
            scaled = tl.where(keys >= found, scaled, float("-inf"))
        # Gumbel-max with the reference's counter-based uniforms.
        seed = tl.load(seeds_ptr + row)
        lo = (seed & 0xFFFFFFFF).to(tl.uint32)
        hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
        key = _mix32(lo ^ _mix32(hi ^ 0x85EBCA6B))
        if STEP_FROM_PTR:  # the step lives on the device (a captured CUDA graph advances it)
            counter = tl.load(step_ptr).to(tl.uint32) * 0x9E3779B9 + 0x27D4EB2F
        else:
            counter = tl.full((), 0, tl.uint32) + step_key.to(tl.uint32)
        key = _mix32(key ^ _mix32(counter))
        bits = _mix32(key + idx.to(tl.uint32) * 0x9E3779B9)
        uniform = ((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
        gumbel = -tl.log(-tl.log(uniform))
        token = tl.argmax(tl.where(valid, scaled + gumbel, float("-inf")), axis=0, tie_break_left=True)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    if WANT_LOGPROBS:
        peak = tl.max(scaled, axis=0)
        lse = peak + tl.log(tl.sum(tl.exp(scaled - peak), axis=0))
        chosen = tl.sum(tl.where(idx == token, scaled, 0.0), axis=0)
        tl.store(logprobs_ptr + row, chosen - lse)


def sample_kernel(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    seeds: torch.Tensor,
    step: int | torch.Tensor,
    params: SamplerParams,
    want_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as `sampling.sample_reference`, in one kernel launch: (B,) tokens, (B,) logprobs.

    `step` may be a 0-dim int64 tensor on the logits' device: the kernel then reads it there.
    """
    if cond.shape != uncond.shape or cond.dim() != 2:
        raise ValueError(f"cond and uncond must be (B, V) alike, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    if cond.stride(-1) != 1 or uncond.stride(-1) != 1:
        cond, uncond = cond.contiguous(), uncond.contiguous()
    batch, vocab = cond.shape
    tokens = torch.empty(batch, dtype=torch.int64, device=cond.device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=cond.device) if want_logprobs else tokens
    greedy = params.temperature == 0
    use_top_k = 0 < params.top_k < vocab
    block = triton.next_power_of_2(vocab)
    from_ptr = isinstance(step, torch.Tensor)
    _sample_row[(batch,)](
        cond,
        uncond,
        seeds.to(device=cond.device, dtype=torch.int64).contiguous(),
        tokens,
        logprobs,
        cond.stride(0),
        uncond.stride(0),
        vocab,
        float(params.cfg_weight),
        1.0 if greedy else float(params.temperature),
        int(params.top_k),
        float(params.top_p),
        0 if from_ptr else step_key(step),
        step if from_ptr else tokens,
        BLOCK=block,
        STEP_FROM_PTR=from_ptr,
        GREEDY=greedy,
        USE_TOP_K=use_top_k and not greedy,
        USE_TOP_P=params.top_p < 1.0 and not greedy,
        WANT_LOGPROBS=want_logprobs,
        num_warps=16 if block >= 8192 else 4,
    )
    return tokens, (logprobs if want_logprobs else None)
