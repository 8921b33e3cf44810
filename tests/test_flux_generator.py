"""FluxGenerator on the tiny FLUX: sizes, per-image seeding, batch independence, load errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from janus_data.config import FluxGenConfig
from janus_data.errors import ModelError
from janus_data.generators.flux import FluxGenerator

CPU = torch.device("cpu")
CFG = FluxGenConfig(
    model="tiny:flux", height=64, width=64, num_inference_steps=2, guidance_scale=3.5, max_sequence_length=32
)
PROMPTS = ["a photo of a red cube", "a cat", "an oil painting of a city at night", "two birds"]
# Largest uint8 difference allowed between an image drawn alone and the same prompt and seed
# drawn in a batch of 4. The initial noise is identical (one generator per image); only float
# rounding differs, because CPU matmul kernels block a (4*L, d) input differently from (L, d).
# Measured on the tiny model: max 1, on ~0.005% of pixels (float max abs diff ~1e-6).
BATCH_TOLERANCE = 2


def px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def gen(tiny_flux) -> FluxGenerator:
    return FluxGenerator(CFG, CPU, torch.float32)


def test_rgb_images_of_the_configured_size(gen, tiny_flux):
    images = gen.generate(PROMPTS[:2], [0, 1])
    assert [(im.mode, im.size) for im in images] == [("RGB", (64, 64))] * 2
    wide = FluxGenerator(replace(CFG, height=48, width=96), CPU, torch.float32)
    (image,) = wide.generate(PROMPTS[:1], [0])
    assert (image.mode, image.size) == ("RGB", (96, 48))  # PIL size is (width, height)


def test_identity_attributes_and_params(gen):
    assert gen.name == "flux" and gen.model_id == "tiny:flux"
    assert gen.params() == {
        "num_inference_steps": 2,
        "guidance_scale": 3.5,
        "height": 64,
        "width": 64,
        "max_sequence_length": 32,
    }


def test_same_seed_same_pixels_other_seed_other_pixels(gen):
    a = gen.generate([PROMPTS[0], PROMPTS[0]], [7, 8])
    b = gen.generate([PROMPTS[0]], [7])
    again = gen.generate([PROMPTS[0], PROMPTS[0]], [7, 8])
    assert all(np.array_equal(px(x), px(y)) for x, y in zip(a, again, strict=True))
    assert np.abs(px(a[0]) - px(b[0])).max() <= BATCH_TOLERANCE
    assert np.abs(px(a[0]) - px(a[1])).mean() > 5  # a different seed gives a different image


def test_image_depends_on_its_seed_not_its_batch(gen):
    seeds = [11, 12, 13, 14]
    batch = gen.generate(PROMPTS, seeds)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds, strict=True)):
        (alone,) = gen.generate([prompt], [seed])
        diff = np.abs(px(alone) - px(batch[i]))
        assert diff.max() <= BATCH_TOLERANCE, (i, int(diff.max()))
        assert (diff > 0).mean() < 0.01
    # Reordering the batch moves the images with their seeds.
    flipped = gen.generate(PROMPTS[::-1], seeds[::-1])
    for x, y in zip(batch, flipped[::-1], strict=True):
        assert np.abs(px(x) - px(y)).max() <= BATCH_TOLERANCE


def test_prompt_count_must_match_seed_count(gen):
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(PROMPTS[:2], [0])
    assert gen.generate([], []) == []


def test_missing_checkpoint_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        FluxGenerator(replace(CFG, model=str(tmp_path / "nope")), CPU, torch.float32)
    with pytest.raises(ModelError, match=r"model_index\.json"):
        FluxGenerator(replace(CFG, model=str(tmp_path)), CPU, torch.float32)


def test_incomplete_checkpoint_is_a_model_error(tiny_flux, tmp_path):
    only_index = tmp_path / "only-index"
    only_index.mkdir()
    shutil.copy(tiny_flux / "model_index.json", only_index)
    with pytest.raises(ModelError, match="cannot load FLUX checkpoint") as err:
        FluxGenerator(replace(CFG, model=str(only_index)), CPU, torch.float32)
    assert "\n" not in str(err.value) and err.value.hint

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_flux, corrupt)
    (corrupt / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot load FLUX checkpoint"):
        FluxGenerator(replace(CFG, model=str(corrupt)), CPU, torch.float32)


def test_uncached_hub_id_offline_is_a_model_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="cannot load FLUX checkpoint 'janus-test/no-such-flux'"):
        FluxGenerator(replace(CFG, model="janus-test/no-such-flux"), CPU, torch.float32)


def test_model_index_records_real_classes(tiny_flux):
    index = json.loads((tiny_flux / "model_index.json").read_text())
    assert index["transformer"][1] == "FluxTransformer2DModel"


# The speed settings (janus_data/generators/flux.py) against the plain pipeline, same seeds.
# The bound stated in docs/kernels.md for every setting, any device: PSNR >= 30 dB over the
# uint8 images. In fp32 on CPU the float math barely moves, so these tests also hold the max abs
# pixel error to BATCH_TOLERANCE (measured: 0 for fused QKV, channels-last VAE, the math
# backend and the compiled blocks on the tiny FLUX).
PSNR_BOUND_DB = 30.0


def psnr(a: list, b: list) -> float:
    x = np.stack([px(i) for i in a]).astype(np.float64)
    y = np.stack([px(i) for i in b]).astype(np.float64)
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def fast_cfg(**settings) -> FluxGenConfig:
    return replace(CFG, **settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"fuse_qkv": True},
        {"channels_last_vae": True},
        {"sdpa_backend": "math"},
        {"fuse_qkv": True, "channels_last_vae": True},
    ],
    ids=["fuse-qkv", "channels-last-vae", "sdpa-math", "both"],
)
def test_speed_settings_stay_within_the_quality_bound(gen, settings):
    seeds = [21, 22, 23, 24]
    plain = gen.generate(PROMPTS, seeds)
    fast = FluxGenerator(fast_cfg(**settings), CPU, torch.float32)
    if settings.get("fuse_qkv"):
        assert all(m.fused_projections for m in fast.pipe.transformer.modules() if hasattr(m, "fused_projections"))
    images = fast.generate(PROMPTS, seeds)
    assert psnr(plain, images) >= PSNR_BOUND_DB
    assert max(np.abs(px(a) - px(b)).max() for a, b in zip(plain, images, strict=True)) <= BATCH_TOLERANCE


@pytest.mark.slow
def test_compiled_blocks_stay_within_the_quality_bound(gen):
    """torch.compile of the repeated blocks (Inductor's C++ backend here: ~15 s on 2 cores)."""
    seeds = [31, 32]
    fast = FluxGenerator(fast_cfg(compile=True, fuse_qkv=True), CPU, torch.float32)
    images = fast.generate(PROMPTS[:2], seeds)
    plain = gen.generate(PROMPTS[:2], seeds)
    assert psnr(plain, images) >= PSNR_BOUND_DB
    assert max(np.abs(px(a) - px(b)).max() for a, b in zip(plain, images, strict=True)) <= BATCH_TOLERANCE


def test_a_bad_sdpa_backend_is_refused_at_construction():
    with pytest.raises(ValueError, match="sdpa_backend must be one of"):
        FluxGenerator(fast_cfg(sdpa_backend="fastest"), CPU, torch.float32)


def test_mixed_sizes_make_one_pipeline_call_per_size(gen, monkeypatch):
    calls = []
    draw = gen._draw
    monkeypatch.setattr(gen, "_draw", lambda p, s, h, w: calls.append((len(p), h, w)) or draw(p, s, h, w))
    sizes = [(64, 64), (48, 96), (64, 64), (48, 96), (32, 32)]
    images = gen.generate(PROMPTS + PROMPTS[:1], [1, 2, 3, 4, 5], sizes)
    assert calls == [(2, 64, 64), (2, 48, 96), (1, 32, 32)]
    assert [im.size for im in images] == [(w, h) for h, w in sizes]
    (alone,) = gen.generate([PROMPTS[2]], [3])  # the default size is 64 x 64
    assert np.abs(px(alone) - px(images[2])).max() <= BATCH_TOLERANCE
    with pytest.raises(ValueError, match="sizes"):
        gen.generate(PROMPTS[:2], [1, 2], [(64, 64)])
