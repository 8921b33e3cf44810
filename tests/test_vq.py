"""VQEncoder (janus_data/vq.py) against the full tiny Janus-Pro and its own processor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import JanusForConditionalGeneration, JanusImageProcessorPil

from janus_data.errors import ModelError
from janus_data.generators.janus_loop import decode_image_tokens
from janus_data.vq import VQEncoder

CPU = torch.device("cpu")


def _images(n: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> list[Image.Image]:
    """Half noise, half smooth gradients: n RGB images of size (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for i in range(n):
        if i % 2:
            a = np.zeros((height, width, 3), np.uint8)
            a[..., i % 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
            a[..., (i + 1) % 3] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
        else:
            a = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        out.append(Image.fromarray(a))
    return out


@pytest.fixture(scope="module")
def full(tiny_janus):
    return JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()


@pytest.fixture(scope="module")
def enc(tiny_janus):
    return VQEncoder("tiny:janus", CPU, torch.float32)


@pytest.fixture(scope="module")
def enc_hf(tiny_janus):
    return VQEncoder("tiny:janus", CPU, torch.float32, l2_norm=False)


def test_geometry_comes_from_the_config(enc):
    assert (enc.image_size, enc.grid, enc.num_tokens, enc.codebook_size) == (64, 4, 16, 512)
    assert enc.model_id == "tiny:janus"


def test_pixels_match_janus_image_processor(enc):
    """Janus-Pro's processor: longest side bicubic to size, gray square pad, mean 0.5 std 0.5."""
    proc = JanusImageProcessorPil(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for img in [*_images(3), *_images(2, size=(100, 80)), *_images(1, size=(37, 120))]:
        ref = proc([img], return_tensors="pt").pixel_values
        assert torch.equal(enc.preprocess([img]), ref)


def test_codes_equal_transformers_vqmodel_encode(enc_hf, full):
    images = _images(6)
    codes = enc_hf.encode(images)
    assert codes.shape == (6, 16) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 512
    with torch.inference_mode():
        ref = full.model.vqmodel.encode(enc_hf.preprocess(images)).image_tokens.view(6, -1)
    assert np.array_equal(codes, ref.numpy())


def test_default_codes_equal_reference_janus_quantizer(enc, full):
    """deepseek-ai/Janus VectorQuantizer (codebook_l2_norm=True): argmin over l2-normalized z and codebook."""
    images = _images(6, seed=1)
    vq = full.model.vqmodel
    with torch.inference_mode():
        z = vq.quant_conv(vq.encoder(enc.preprocess(images))).permute(0, 2, 3, 1).reshape(-1, 8)
        z = torch.nn.functional.normalize(z, dim=-1)
        e = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
        d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * torch.einsum("bd,dn->bn", z, e.T)
        ref = d.argmin(1).view(6, -1).numpy()
    codes = enc.encode(images)
    assert codes.dtype == np.int32 and np.array_equal(codes, ref)


def test_decode_matches_decode_image_tokens(enc, full):
    codes = enc.encode(_images(4))
    ours = np.stack([np.asarray(img) for img in enc.decode(codes)])
    ref = decode_image_tokens(full, torch.from_numpy(codes).long()).numpy()
    assert ours.shape == (4, 64, 64, 3) and np.array_equal(ours, ref)


def test_deterministic_and_batch_invariant(enc):
    images = _images(5, seed=2)
    batch = enc.encode(images)
    assert np.array_equal(batch, enc.encode(images))
    assert np.array_equal(batch, np.concatenate([enc.encode([img]) for img in images]))
    assert np.array_equal(batch, enc.encode(images, batch_size=2))
    assert enc.encode([]).shape == (0, 16)


def test_from_module_shares_a_loaded_vq_and_encodes_alike(enc, enc_hf, full):
    """GRPO's regeneration context: the policy's own vqmodel, no second copy read from disk."""
    images = _images(6, seed=4)
    shared = VQEncoder.from_module(full.model.vqmodel, full.config.vq_config, model_id="policy")
    assert shared.vqmodel is full.model.vqmodel and shared.model_id == "policy"
    assert (shared.device, shared.dtype, shared.l2_norm) == (CPU, torch.float32, True)
    assert (shared.image_size, shared.grid, shared.num_tokens, shared.codebook_size) == (64, 4, 16, 512)
    assert np.array_equal(shared.encode(images), enc.encode(images))
    plain = VQEncoder.from_module(full.model.vqmodel, full.config.vq_config, l2_norm=False)
    assert np.array_equal(plain.encode(images), enc_hf.encode(images))
    with pytest.raises(ValueError, match="fit"):
        VQEncoder.from_module(full.model.vqmodel, full.config.vq_config, fit="crop")


def test_reencoding_is_deterministic(enc, enc_hf):
    """encode -> decode -> encode. The tiny VQ is random, so codes do not survive the round
    trip (measured on 12 images: about 2% of codes kept with l2_norm, 6-13% without; chance is 0.2%);
    a trained VQ is needed for a meaningful rate. Only determinism is asserted."""
    for e in (enc, enc_hf):
        codes = e.encode(_images(12, seed=3))
        again = e.encode(e.decode(codes))
        assert again.shape == codes.shape and again.dtype == np.int32
        assert np.array_equal(again, e.encode(e.decode(codes)))
        print(f"l2_norm={e.l2_norm}: re-encode keeps {np.mean(again == codes):.1%} of codes")


def test_other_sizes_are_resized(enc):
    odd = _images(3, size=(100, 80))
    codes = enc.encode(odd)
    assert codes.shape == (3, 16)
    stretch = VQEncoder("tiny:janus", CPU, torch.float32, fit="stretch")
    assert stretch.preprocess(odd).shape == (3, 3, 64, 64)
    assert stretch.encode(odd).shape == (3, 16)
    assert enc.encode([img.convert("L") for img in odd]).shape == (3, 16)  # grayscale -> RGB


def test_decode_rejects_bad_codes(enc):
    with pytest.raises(ValueError, match="shape"):
        enc.decode(np.zeros((1, 15), np.int32))
    with pytest.raises(ValueError, match="lie in"):
        enc.decode(np.full((1, 16), 512, np.int32))


def _tensors(ckpt) -> dict[str, torch.Tensor]:
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _copy_without_vq(src, dst) -> None:
    shutil.copytree(src, dst)
    kept = {k: v for k, v in _tensors(src).items() if not k.startswith("model.vqmodel.")}
    save_file(kept, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_checkpoint_without_vq_tensors_is_a_model_error(tiny_janus, tmp_path):
    _copy_without_vq(tiny_janus, tmp_path / "novq")
    with pytest.raises(ModelError) as info:
        VQEncoder(str(tmp_path / "novq"), CPU, torch.float32)
    assert "\n" not in str(info.value) and "VQ" in info.value.message


def test_missing_or_partial_checkpoints_are_model_errors(tiny_janus, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        VQEncoder(str(tmp_path / "nowhere"), CPU, torch.float32)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_janus / "config.json", bare / "config.json")
    with pytest.raises(ModelError, match="safetensors") as info:
        VQEncoder(str(bare), CPU, torch.float32)
    assert "\n" not in str(info.value)
    part = tmp_path / "part"
    shutil.copytree(tiny_janus, part)
    kept = {k: v for k, v in _tensors(tiny_janus).items() if k != "model.vqmodel.quant_conv.weight"}
    save_file(kept, str(part / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="1 missing") as info:
        VQEncoder(str(part), CPU, torch.float32)
    assert "\n" not in str(info.value)


def test_sharded_checkpoint_reads_only_vq_shards(tiny_janus, tmp_path, enc):
    """A sharded copy whose non-VQ shard is garbage still loads: the LLM is never read."""
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_janus, sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = _tensors(tiny_janus)
    vq_keys = sorted(k for k in tensors if k.startswith("model.vqmodel."))
    half = len(vq_keys) // 2
    shards = {"model-00001-of-00003.safetensors": vq_keys[:half], "model-00002-of-00003.safetensors": vq_keys[half:]}
    for name, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / name), metadata={"format": "pt"})
    (sharded / "model-00003-of-00003.safetensors").write_bytes(b"not a safetensors file")
    weight_map = {k: "model-00003-of-00003.safetensors" for k in tensors if not k.startswith("model.vqmodel.")}
    weight_map.update({k: name for name, keys in shards.items() for k in keys})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    images = _images(3, seed=4)
    assert np.array_equal(VQEncoder(str(sharded), CPU, torch.float32).encode(images), enc.encode(images))
