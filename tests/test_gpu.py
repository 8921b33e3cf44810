"""CUDA checks of #17 (`gpu` marker: skipped where torch sees no GPU; benchmarks/gpu_checks.sh runs them).

Each check runs in a child process with TRITON_INTERPRET=0: conftest puts Triton in interpreter
mode for the CPU tests, and the fused sampler must be compiled to run inside a CUDA graph. The
checks are plain functions below, run as `python tests/test_gpu.py CHECK [ARGS]`.

Bounds (docs/kernels.md):
- fp32: the CUDA-graph loop (fused decoder, compiled sampler) draws the reference loop's tokens.
- bf16, Janus-Pro-1B shapes with 2 layers, 64 steps: the graphed loop draws the eager loop's
  tokens exactly (same kernels). Teacher-forced on those tokens, the fused and the compiled
  decoder's CFG logits are no further from an fp32 run of transformers' layers than 1.5x
  transformers' own bf16 layers are (relative L2 per step, the largest step; + 1e-3).
- the Triton sampler equals its torch reference on CUDA: tokens exact, log-probs within 2e-5.
- FLUX: fused QKV + channels-last VAE + compiled blocks stay within PSNR 30 dB of the plain
  pipeline (uint8 images, same seeds, bf16).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BF16_LOGITS_FACTOR = 1.5
PSNR_BOUND_DB = 30.0
PROMPTS = ["a red cube", "two birds on the left of a very large green apple tree at sunset", "a cat", "a bench"]


def child(check: str, *args: str) -> None:
    """Run `check` in a child process (compiled Triton) and fail with its output if it fails."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, check, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=repo)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), (res.stdout[-2000:], res.stderr[-4000:])


@pytest.mark.gpu
def test_cuda_graph_loop_equals_the_reference_loop_fp32(tiny_janus):
    child("graph_loop", str(tiny_janus))


@pytest.mark.gpu
def test_bf16_graphed_loop_64_steps_and_logits_within_bound(tiny_janus):
    child("bf16_loop", str(tiny_janus))


@pytest.mark.gpu
def test_triton_sampler_equals_its_reference_on_cuda():
    child("sampler")


@pytest.mark.gpu
def test_flux_speed_settings_within_the_bound_on_cuda(tiny_flux):
    child("flux", str(tiny_flux))


# -- the checks (child side) ------------------------------------------------------------------------


def check_graph_loop(path: str) -> None:
    import torch

    from janus_data.config import JanusGenConfig
    from janus_data.generators.fast_loop import ImageTokenLoop
    from janus_data.generators.janus import JanusGenerator
    from janus_data.generators.janus_loop import cfg_inputs, reference_image_loop
    from janus_data.generators.sampling import SamplerParams

    gen = JanusGenerator(JanusGenConfig(model=path, loop="reference"), torch.device("cuda"), torch.float32)
    ids, mask = gen.encode_prompts(PROMPTS)
    embeds, mask = cfg_inputs(gen.model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)
    seeds = torch.arange(len(PROMPTS), dtype=torch.int64) * 1009
    n = gen.num_image_tokens
    for fused in (True, False):
        loop = ImageTokenLoop(gen.model, cuda_graph=True, fused=fused)
        for params in (SamplerParams(), SamplerParams(cfg_weight=3.0, temperature=0.8, top_k=50, top_p=0.9)):
            ref, ref_lp = reference_image_loop(gen.model, embeds, mask, seeds, params, n, True)
            first, first_lp = loop(embeds, mask, seeds, params, n, True)  # captures
            again, _ = loop(embeds, mask, seeds, params, n, True)  # replays
            assert loop.use_graph and (loop.decoder is not None) == fused
            assert torch.equal(first, ref) and torch.equal(again, ref), (fused, params)
            torch.testing.assert_close(first_lp, ref_lp, rtol=1e-4, atol=1e-4)


def check_bf16_loop(path: str) -> None:
    import copy

    import torch

    from janus_data.arch import random_janus_pro
    from janus_data.generators.fast_loop import ImageTokenLoop
    from janus_data.generators.fused_checks import forced_logits, relative_error
    from janus_data.generators.sampling import SamplerParams

    device, n, batch = torch.device("cuda"), 64, 4
    model, _ = random_janus_pro("1b", device, torch.bfloat16, num_layers=2)
    model.eval()
    torch.manual_seed(0)
    embeds = torch.randn(2 * batch, 40, model.config.text_config.hidden_size, device=device, dtype=torch.bfloat16)
    mask = torch.ones(2 * batch, 40, dtype=torch.long, device=device)
    mask[[0, batch], :9] = 0
    seeds, params = torch.arange(batch) + 17, SamplerParams()
    # Same padding for both (the eager loop would pad to 1): the same shapes, so the same kernels.
    graphed, _ = ImageTokenLoop(model, cuda_graph=True, pad_multiple=64)(embeds, mask, seeds, params, n)
    eager, _ = ImageTokenLoop(model, cuda_graph=False, pad_multiple=64)(embeds, mask, seeds, params, n)
    truth = forced_logits(
        ImageTokenLoop, copy.deepcopy(model).float(), embeds.float(), mask, graphed, params, fused=False
    )
    err = {
        name: relative_error(forced_logits(ImageTokenLoop, model, embeds, mask, graphed, params, **kw), truth)
        for name, kw in {
            "transformers' layers": {"cuda_graph": False, "fused": False},
            "fused": {"cuda_graph": True, "fused": True},
            "compiled": {"cuda_graph": True, "fused": True, "compile": True},
        }.items()
    }
    print(", ".join(f"{name} {e:.2e}" for name, e in err.items()), "(relative L2 of the CFG logits to fp32)")
    bound = BF16_LOGITS_FACTOR * err["transformers' layers"] + 1e-3
    differ = (graphed != eager).any(dim=0).nonzero().flatten().tolist()
    assert not differ and err["fused"] <= bound and err["compiled"] <= bound, (err, f"steps that differ: {differ}")


def check_sampler() -> None:
    import torch

    from janus_data.generators.sampling import SamplerParams, sample_reference
    from janus_data.generators.sampling_kernel import sample_kernel

    settings = [
        SamplerParams(cfg_weight=5.0, temperature=0.0),
        SamplerParams(cfg_weight=5.0, temperature=1.0),
        SamplerParams(cfg_weight=3.0, temperature=1.3, top_k=200, top_p=0.8),
        SamplerParams(cfg_weight=5.0, temperature=1.0, top_p=0.9),
    ]
    for batch in (1, 16, 64):
        torch.manual_seed(batch)
        both = (torch.randn(2 * batch, 16384, device="cuda") * 3).to(torch.bfloat16)
        seeds = torch.arange(batch, device="cuda") * 7919 + (1 << 40)
        for i, params in enumerate(settings):
            step = torch.tensor(i * 97, device="cuda")
            ref, ref_lp = sample_reference(both[:batch], both[batch:], seeds, step, params, True)
            out, lp = sample_kernel(both[:batch], both[batch:], seeds, step, params, True)
            assert torch.equal(out, ref), (batch, params)
            torch.testing.assert_close(lp, ref_lp, rtol=2e-5, atol=2e-5)
    # Inside a CUDA graph, the step advanced on the device, as the loop runs it.
    step = torch.zeros((), dtype=torch.long, device="cuda")
    tokens = torch.zeros(8, dtype=torch.long, device="cuda")
    sample_kernel(both[:batch], both[batch:], seeds, step, settings[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens.copy_(sample_kernel(both[:batch], both[batch:], seeds, step, settings[1])[0][:8])
        step.add_(1)
    for k in range(3):
        graph.replay()
        want = sample_reference(both[:batch], both[batch:], seeds, k, settings[1])[0][:8]
        assert torch.equal(tokens, want), k


def check_flux(path: str) -> None:
    import numpy as np
    import torch

    from janus_data.generators.flux import load_flux, speed_up

    def draw(pipe):
        gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
        with torch.inference_mode():
            return pipe(
                prompt=PROMPTS, height=64, width=64, num_inference_steps=8, generator=gens, output_type="np"
            ).images

    plain = draw(load_flux(path, torch.device("cuda"), torch.bfloat16))
    ours = draw(
        speed_up(
            load_flux(path, torch.device("cuda"), torch.bfloat16), fuse_qkv=True, compile=True, channels_last_vae=True
        )
    )
    a, b = (np.round(x * 255).astype(np.float64) for x in (plain, ours))
    mse = ((a - b) ** 2).mean()
    db = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    print(f"PSNR {db:.1f} dB, max abs {np.abs(a - b).max():.0f}")
    assert db >= PSNR_BOUND_DB


if __name__ == "__main__":
    globals()[f"check_{sys.argv[1]}"](*sys.argv[2:])
    print("ok")
