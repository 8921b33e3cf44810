"""Teacher forcing for the loop's equality checks: the CFG logits of every step, given the tokens.

Sampled tokens compare two paths only until the first near-tie flips; in bf16 that happens within
a few dozen steps even when both paths are right. Forcing both paths to consume the same tokens
and comparing the logits of every step gives a bound that does not depend on luck. Used by
tests/test_fast_loop.py (fp32, CPU), tests/test_gpu.py and benchmarks/gpu_janus.py (bf16, CUDA).
"""

from __future__ import annotations

import torch

from janus_data.generators.sampling import SamplerParams, cfg_logits


class ForcedSampler:
    """A `Sampler` that records each step's CFG logits and returns the given (B, N) tokens.

    Device-side only (the step may be a 0-dim device tensor), so it also runs inside a CUDA graph.
    """

    def __init__(self, tokens: torch.Tensor, vocab: int):
        self.tokens = tokens
        self.logits = torch.zeros(*tokens.shape, vocab, dtype=torch.float32, device=tokens.device)

    def __call__(self, cond, uncond, seeds, step, params: SamplerParams, want_logprobs: bool = False):
        where = torch.as_tensor(step, device=self.tokens.device).view(1)
        logits = cfg_logits(cond.float(), uncond.float(), params.cfg_weight)
        self.logits.index_copy_(1, where, logits[:, None])
        token = self.tokens.index_select(1, where)[:, 0]
        return token, (torch.zeros_like(token, dtype=torch.float32) if want_logprobs else None)


def forced_logits(loop_class, model, embeds, mask, tokens: torch.Tensor, params: SamplerParams, **loop_kwargs):
    """(B, N, V) float32 CFG logits of every step of `loop_class(model, sampler=..., **loop_kwargs)` fed `tokens`."""
    vocab = model.model.generation_head.vision_head.out_features
    sampler = ForcedSampler(tokens, vocab)
    loop = loop_class(model, sampler=sampler, **loop_kwargs)
    seeds = torch.zeros(tokens.shape[0], dtype=torch.int64)
    out, _ = loop(embeds, mask, seeds, params, tokens.shape[1])
    if not torch.equal(out, tokens):
        raise AssertionError("the loop did not emit the forced tokens")
    return sampler.logits


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| per step, the largest over steps: (B, N, V) x2 -> float."""
    diff = (a.double() - b.double()).flatten(2).norm(dim=(0, 2))
    return float((diff / b.double().flatten(2).norm(dim=(0, 2))).max())
