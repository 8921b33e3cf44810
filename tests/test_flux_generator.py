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
