"""Tiny models: deterministic builds, stock from_pretrained loading, the real special tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from janus_data.tiny.clip import build_tiny_clip
from janus_data.tiny.flux import build_tiny_flux
from janus_data.tiny.internvl import build_tiny_internvl
from janus_data.tiny.janus import build_tiny_janus
from janus_data.tiny.mask2former import build_tiny_mask2former

BUILDERS = {
    "janus": build_tiny_janus,
    "flux": build_tiny_flux,
    "internvl": build_tiny_internvl,
    "mask2former": build_tiny_mask2former,
    "clip": build_tiny_clip,
}


def tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under `root`, keyed 'relative/path:name'."""
    out = {}
    for file in sorted(root.rglob("*.safetensors")):
        for name, tensor in load_file(file).items():
            out[f"{file.relative_to(root)}:{name}"] = tensor
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    """Each tiny model built with seed 0 twice and with seed 1 once."""
    root = tmp_path_factory.mktemp("tiny-builds")
    return {
        name: tuple(build(root / f"{name}-{tag}", seed=seed) for tag, seed in (("a", 0), ("b", 0), ("c", 1)))
        for name, build in BUILDERS.items()
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_same_seed_same_weights_other_seed_other_weights(builds, name):
    a, b, c = (tensors(d) for d in builds[name])
    assert a and a.keys() == b.keys() == c.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_same_seed_same_tokenizer_and_configs(builds, name):
    a, b, _ = builds[name]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# ---------------------------------------------------------------- janus


def test_janus_loads_and_draws_sixteen_image_tokens(tiny_janus):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()
    processor = AutoProcessor.from_pretrained(tiny_janus)
    tok = processor.tokenizer
    for token in ("<begin_of_image>", "<end_of_image>", "<image_placeholder>"):
        assert tok.convert_tokens_to_ids(token) not in (None, tok.unk_token_id), token
        assert len(tok(token, add_special_tokens=False).input_ids) == 1, token
    assert tok.pad_token == "<｜▁pad▁｜>" and tok.eos_token == "<｜end▁of▁sentence｜>"
    assert tok.bos_token == "<｜begin▁of▁sentence｜>"
    inputs = processor(text=["a photo of a red cube"], generation_mode="image", return_tensors="pt")
    out = model.generate(**inputs, generation_mode="image", do_sample=False)
    assert out.shape == (1, 16)
    assert int(out.min()) >= 0 and int(out.max()) < model.config.vq_config.num_embeddings


# ---------------------------------------------------------------- flux


def test_flux_loads_through_model_index_and_generates(tiny_flux):
    from diffusers import FluxPipeline

    index = json.loads((tiny_flux / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["tokenizer_2"][0] == "transformers" and index["tokenizer_2"][1].startswith("T5Tokenizer")

    pipe = FluxPipeline.from_pretrained(tiny_flux, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 2
    clip, t5 = pipe.tokenizer, pipe.tokenizer_2
    assert (clip.bos_token, clip.eos_token) == ("<|startoftext|>", "<|endoftext|>")
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert (t5.pad_token, t5.eos_token, t5.unk_token) == ("<pad>", "</s>", "<unk>")
    # Caption words stay whole, so prompts fit max_sequence_length=32 like real T5 prompts.
    assert len(t5("an oil painting of a city at night").input_ids) == 9
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(3)]
    with torch.inference_mode():
        images = pipe(
            ["a cat", "a dog", "two birds"],
            height=64,
            width=64,
            num_inference_steps=2,
            max_sequence_length=32,
            generator=gens,
        ).images
    assert [im.size for im in images] == [(64, 64)] * 3


# ---------------------------------------------------------------- internvl

YES_NO = ("yes", "Yes", "YES", "no", "No", "NO")
QUESTION = "Does this image match the description? Please directly respond with yes or no."


def chat_inputs(tokenizer, image_processor, image: Image.Image, image_seq_length: int):
    """What InternVLProcessor.apply_chat_template builds for one image and one question."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pixels = image_processor(images=[image], return_tensors="pt")
    n_tiles = int(pixels["num_patches"][0])
    context = tokenizer.context_image_token
    expanded = f"{tokenizer.start_image_token}{context * (image_seq_length * n_tiles)}{tokenizer.end_image_token}"
    enc = tokenizer([text.replace(context, expanded, 1)], return_tensors="pt")
    return {**enc, "pixel_values": pixels["pixel_values"]}, text, n_tiles


@pytest.fixture(scope="module")
def internvl(tiny_internvl):
    from transformers import AutoImageProcessor, AutoTokenizer, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(tiny_internvl).eval()
    return model, AutoTokenizer.from_pretrained(tiny_internvl), AutoImageProcessor.from_pretrained(tiny_internvl)


def test_internvl_tokenizer_has_internvl_tokens_and_whole_answers(internvl):
    model, tok, _ = internvl
    assert (tok.start_image_token, tok.end_image_token) == ("<img>", "</img>")
    assert tok.context_image_token == "<IMG_CONTEXT>"
    assert tok.context_image_token_id == model.config.image_token_id
    for token in ("<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(token).input_ids) == 1, token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    for word in YES_NO:
        assert len(tok(word).input_ids) == 1, word
        assert len(tok(" " + word).input_ids) == 1, word
    assert len({tok(w).input_ids[0] for w in YES_NO}) == len(YES_NO)


def test_internvl_chat_template_is_chatml(internvl):
    _, tok, _ = internvl
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<IMG_CONTEXT>\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_internvl_tiles_without_torchvision(internvl):
    _, _, image_processor = internvl
    assert type(image_processor).__name__.startswith("GotOcr2ImageProcessor")
    square = Image.new("RGB", (384, 384), (200, 10, 10))
    wide = Image.new("RGB", (1024, 512), (10, 200, 10))
    out = image_processor(images=[square, wide], return_tensors="pt")
    # 384x384 -> one 448 tile; 2:1 -> two tiles plus the thumbnail.
    assert out["num_patches"].tolist() == [1, 3]
    assert tuple(out["pixel_values"].shape) == (4, 3, 448, 448)


def test_internvl_answers_a_chat_with_an_image(internvl):
    model, tok, image_processor = internvl
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8))
    inputs, _, n_tiles = chat_inputs(tok, image_processor, image, model.config.image_seq_length)
    assert n_tiles == 1
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 256
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        logits = model(**inputs).logits[0, -1]
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tok.decode(out[0, inputs["input_ids"].shape[1] :]), str)
    probs = logits.softmax(-1)
    assert float(probs.max()) > 5 * float(probs.min())  # INIT_STD keeps the logits far from uniform


def test_internvl_autoprocessor_needs_torchvision_or_matches(internvl, tiny_internvl):
    """transformers 5.x loads InternVLProcessor only with torchvision (its video processor).

    Without torchvision the failure must be that one; with it, the processor must build the
    same inputs as the processor-free path above.
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    model, tok, image_processor = internvl
    image = Image.new("RGB", (384, 384), (0, 0, 255))
    if not is_torchvision_available():
        with pytest.raises((ValueError, ImportError), match="orchvision"):
            AutoProcessor.from_pretrained(tiny_internvl)
        return
    processor = AutoProcessor.from_pretrained(tiny_internvl)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    got = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    want, _, _ = chat_inputs(tok, image_processor, image, model.config.image_seq_length)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.allclose(got["pixel_values"], want["pixel_values"], atol=1e-2)
