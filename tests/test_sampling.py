"""The reference sampler: counter-based randomness, masks, greedy, distribution."""

from __future__ import annotations

import math

import pytest
import torch

from janus_data.generators.sampling import (
    SamplerParams,
    cfg_logits,
    counter_uniform,
    masked_scaled_logits,
    mix32,
    sample_reference,
)


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_matches_python_uint32_arithmetic():
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 2**32, (2000,), dtype=torch.int64, generator=g)
    assert [int(v) for v in mix32(xs)] == [_lowbias32(int(x)) for x in xs]


def test_uniforms_are_open_interval_and_depend_only_on_seed_and_step():
    seeds = torch.tensor([0, 1, 2**62 + 7], dtype=torch.int64)
    u = counter_uniform(seeds, step=3, vocab=16384)
    assert u.dtype == torch.float32 and u.shape == (3, 16384)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    alone = counter_uniform(seeds[1:2], step=3, vocab=16384)
    assert torch.equal(alone[0], u[1])
    assert not torch.equal(counter_uniform(seeds, step=4, vocab=16384), u)


def test_greedy_is_argmax_of_cfg_logits():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(4, 37, generator=g), torch.randn(4, 37, generator=g)
    tokens, logp = sample_reference(cond, uncond, torch.arange(4), 0, SamplerParams(5.0, 0.0), want_logprobs=True)
    mixed = uncond + 5.0 * (cond - uncond)
    assert torch.equal(tokens, mixed.argmax(-1))
    assert torch.allclose(logp, torch.log_softmax(mixed, -1).gather(-1, tokens[:, None]).squeeze(-1))


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(8, 101, generator=g), torch.randn(8, 101, generator=g)
    greedy, _ = sample_reference(cond, uncond, torch.arange(8), 0, SamplerParams(5.0, 0.0))
    for step in range(5):
        topk1, _ = sample_reference(cond, uncond, torch.arange(8), step, SamplerParams(5.0, 1.0, top_k=1))
        assert torch.equal(topk1, greedy)
    params = SamplerParams(5.0, 1.0, top_p=0.5)
    scaled = masked_scaled_logits(cfg_logits(cond, uncond, 5.0), params)
    probs = torch.softmax(cfg_logits(cond, uncond, 5.0), -1)
    kept = torch.isfinite(scaled)
    # The kept set is the smallest prefix of the sorted distribution reaching 0.5.
    for row in range(8):
        p_kept = probs[row][kept[row]]
        assert p_kept.sum() >= 0.5 - 1e-6
        assert (p_kept.sum() - p_kept.min()) < 0.5
    for step in range(20):
        tok, _ = sample_reference(cond, uncond, torch.arange(8), step, params)
        assert kept.gather(-1, tok[:, None]).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_frequencies_match_softmax_chi_square(temperature):
    """Many draws of one row: counts match softmax(CFG logits / T) (chi-square, p > 1e-3)."""
    g = torch.Generator().manual_seed(3)
    vocab, draws = 12, 20000
    cond, uncond = torch.randn(1, vocab, generator=g), torch.randn(1, vocab, generator=g) * 0.5
    params = SamplerParams(2.0, temperature)
    seeds = torch.arange(draws, dtype=torch.int64)  # one draw per seed: independent streams
    tokens, _ = sample_reference(cond.expand(draws, -1), uncond.expand(draws, -1), seeds, 0, params)
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = torch.softmax(cfg_logits(cond, uncond, 2.0)[0] / temperature, -1).double() * draws
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    # Critical value of chi-square with 11 degrees of freedom at p = 1e-3 is 31.26.
    assert chi2 < 31.26, chi2
    assert math.isfinite(chi2)
