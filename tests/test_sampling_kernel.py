"""The fused Triton sampler equals the torch reference exactly (TRITON_INTERPRET=1, set in conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from janus_data.generators.sampling import SamplerParams, get_sampler, sample_reference
from janus_data.generators.sampling_kernel import sample_kernel

SETTINGS = [
    SamplerParams(cfg_weight=5.0, temperature=0.0),
    SamplerParams(cfg_weight=5.0, temperature=1.0),
    SamplerParams(cfg_weight=1.0, temperature=0.7, top_k=50),
    SamplerParams(cfg_weight=5.0, temperature=1.0, top_p=0.9),
    SamplerParams(cfg_weight=3.0, temperature=1.3, top_k=200, top_p=0.8),
    SamplerParams(cfg_weight=5.0, temperature=1.0, top_k=1),
]


def logits(batch: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, vocab, generator=g) * 2
    uncond = cond + torch.randn(batch, vocab, generator=g) * 0.5
    return cond, uncond


@pytest.mark.parametrize("vocab", [16384, 997])
@pytest.mark.parametrize("batch", [1, 7, pytest.param(64, marks=pytest.mark.slow)])
def test_kernel_equals_reference(vocab, batch):
    cond, uncond = logits(batch, vocab, seed=vocab + batch)
    seeds = torch.arange(batch, dtype=torch.int64) * 7919 + (1 << 40)
    for step, params in enumerate(SETTINGS):
        ref_tok, ref_lp = sample_reference(cond, uncond, seeds, step, params, want_logprobs=True)
        ker_tok, ker_lp = sample_kernel(cond, uncond, seeds, step, params, want_logprobs=True)
        assert torch.equal(ker_tok, ref_tok), (params, (ker_tok != ref_tok).nonzero().flatten().tolist())
        torch.testing.assert_close(ker_lp, ref_lp, rtol=2e-5, atol=2e-5)


def test_strided_rows_of_one_logits_tensor_and_bf16():
    """The generation loop passes cond and uncond as the two halves of one (2B, V) tensor."""
    both = torch.randn(8, 512).to(torch.bfloat16)
    seeds = torch.arange(4, dtype=torch.int64)
    params = SamplerParams(cfg_weight=5.0, temperature=1.0, top_k=40)
    ref, _ = sample_reference(both[:4], both[4:], seeds, 3, params)
    ker, lp = sample_kernel(both[:4], both[4:], seeds, 3, params)
    assert torch.equal(ker, ref) and lp is None


@pytest.mark.parametrize("step", [0, 5, 575, (1 << 32) + 3])
def test_step_as_device_tensor_equals_int_step(step):
    """A captured CUDA graph passes the step as a 0-dim tensor: same numbers as the python int."""
    cond, uncond = logits(3, 300, seed=step % 1000)
    seeds = torch.tensor([0, 1, (1 << 40) + 5])
    params = SamplerParams(cfg_weight=5.0, temperature=1.0)
    want, _ = sample_reference(cond, uncond, seeds, step, params)
    as_tensor = torch.tensor(step, dtype=torch.int64)
    assert torch.equal(sample_reference(cond, uncond, seeds, as_tensor, params)[0], want)
    assert torch.equal(sample_kernel(cond, uncond, seeds, as_tensor, params)[0], want)


@pytest.mark.slow
def test_kernel_frequencies_match_softmax_chi_square():
    """1,500 draws over 8 tokens: frequencies follow softmax(CFG logits / T) (chi-square, p > 1e-3)."""
    vocab, draws, temperature = 8, 1500, 1.5
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, vocab, generator=g)
    uncond = torch.randn(1, vocab, generator=g)
    params = SamplerParams(cfg_weight=2.0, temperature=temperature)
    tokens, _ = sample_kernel(cond.expand(draws, vocab), uncond.expand(draws, vocab), torch.arange(draws), 0, params)
    expected = torch.softmax((uncond + 2.0 * (cond - uncond)) / temperature, dim=-1)[0].double().numpy() * draws
    observed = np.bincount(tokens.numpy(), minlength=vocab)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    # Critical value of chi-square with 7 degrees of freedom at p = 1e-3 is 24.32.
    assert chi2 < 24.32, chi2


def test_dispatch():
    cpu = torch.device("cpu")
    assert get_sampler(cpu) is sample_reference
    assert get_sampler(cpu, "kernel") is sample_kernel
    assert get_sampler(torch.device("cuda"), "reference") is sample_reference
    with pytest.raises(ValueError, match="JANUS_SAMPLER"):
        get_sampler(cpu, "fast")
