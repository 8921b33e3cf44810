"""Drawing candidate edits (#18): the edit sequence, JanusEditor on the tiny Janus-Pro, KontextEditor on tiny:kontext."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from janus_data.config import JanusGenConfig, load_config
from janus_data.errors import ModelError
from janus_data.generators.janus import load_janus
from janus_data.generators.janus_edit import JanusEditor, center_crop, edit_cfg_inputs
from janus_data.generators.kontext import KontextEditor, edit_size
from janus_data.models import resolve_model, tiny_model_path
from janus_data.vq import VQEncoder
from janus_train.sequences import SequenceBuilder, render

CPU = torch.device("cpu")
BOS = "<｜begin▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
N = 16  # the tiny Janus-Pro's codes per image
INSTRUCTIONS = ["make the cube blue", "add a small red hat on top of the cat"]
KONTEXT = load_config("tiny").edit.kontext  # tiny:kontext, 2 steps, 64 x 64
BATCH_TOLERANCE = 2  # uint8 levels, batched vs alone: float rounding of batched kernels (docs/synth.md)


def picture(seed: int, size=(64, 64)) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8))


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, N).astype(np.int32)


@pytest.fixture(scope="module")
def loaded(tiny_janus):
    return load_janus(str(tiny_janus), CPU, torch.float32)


@pytest.fixture(scope="module")
def builder(tiny_janus):
    return SequenceBuilder.from_pretrained(str(tiny_janus))


@pytest.fixture(scope="module")
def editor(tiny_janus, loaded):
    return JanusEditor(JanusGenConfig(model=str(tiny_janus)), CPU, torch.float32, loaded=loaded)


# ---------------------------------------------------------------- the sequence


def test_edit_sequence_renders_back_to_the_template(builder, loaded):
    tok = loaded[1]
    source, edited = codes(1), codes(2)
    s = builder.edit(INSTRUCTIONS[0], source, edited)
    assert render(s, tok) == (
        f"{BOS}<|User|>: <begin_of_image><image:gen:16><end_of_image>make the cube blue Please generate an image."
        "\n\n<|Assistant|>:<begin_of_image><image:gen:16><end_of_image>"
    )
    (boi1, boi2) = np.flatnonzero(s.input_ids == builder.boi_id).tolist()
    assert [start for start, _ in s.gen_images] == [boi1 + 1, boi2 + 1]
    assert np.array_equal(s.gen_images[0][1], source) and np.array_equal(s.gen_images[1][1], edited)
    assert s.image_targets == [(boi2 + k, int(edited[k])) for k in range(N)]  # the edited image only
    assert s.text_targets == [] and s.task == "edit" and not s.caption_dropped
    prefix = builder.edit(INSTRUCTIONS[0], source)  # what the generation loop continues
    assert prefix.input_ids.tolist() == s.input_ids[: boi2 + 1].tolist() and prefix.image_targets == []


def test_cfg_twin_pads_the_instruction_only(builder, loaded, tiny_janus):
    tok = loaded[1]
    cond = builder.edit(INSTRUCTIONS[0], codes(1), codes(2))
    twin = builder.edit(INSTRUCTIONS[0], codes(1), codes(2), drop=True)
    n_instr = len(tok(INSTRUCTIONS[0], add_special_tokens=False).input_ids)
    assert render(twin, tok) == (
        f"{BOS}<|User|>: <begin_of_image><image:gen:16><end_of_image>{PAD * n_instr} Please generate an image."
        "\n\n<|Assistant|>:<begin_of_image><image:gen:16><end_of_image>"
    )
    differ = np.flatnonzero(cond.input_ids != twin.input_ids)
    assert len(differ) == n_instr and (twin.input_ids[differ] == tok.pad_token_id).all()
    assert twin.gen_images[0][0] == cond.gen_images[0][0] and twin.image_targets == cond.image_targets
    always = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=1.0)
    assert always.edit(INSTRUCTIONS[0], codes(1), codes(2), random.Random(0)).input_ids.tolist() == (
        twin.input_ids.tolist()
    )


EDIT_PROMPT = (
    f"{BOS}<|User|>: <begin_of_image><image:gen:16><end_of_image>make the cube blue Please generate an image."
    "\n\n<|Assistant|>:<begin_of_image>"
)
EDIT_QUESTION = "<end_of_image>\nLet me think Does this edit follow the instruction and keep the rest of the image..."
EOS = "<｜end▁of▁sentence｜>"


def test_edit_judge_sequence_renders_back_to_the_template(builder, loaded):
    tok = loaded[1]
    edited = picture(3)
    s = builder.edit_judge(INSTRUCTIONS[0], codes(1), edited, "No, the cube is still red.")
    assert render(s, tok) == f"{EDIT_PROMPT}<image:und:16>{EDIT_QUESTION}No, the cube is still red.{EOS}"
    assert s.task == "edit_judge" and s.image_targets == []
    assert [start for start, _ in s.und_images] == [int(np.flatnonzero(s.input_ids == builder.boi_id)[-1]) + 1]
    assert s.und_images[0][1] is edited and np.array_equal(s.gen_images[0][1], codes(1))  # source: context only
    targets = s.text_targets  # the answer, weighted as Task II: the No word 0.8, the rest and EOS 0.2
    assert tok.decode([t for _, t, _ in targets]) == f"No, the cube is still red.{EOS}"
    no_tokens = len(tok("No", add_special_tokens=False).input_ids)
    assert [w for _, _, w in targets] == pytest.approx([0.8] * no_tokens + [0.2] * (len(targets) - no_tokens))
    prefix = builder.edit_judge(INSTRUCTIONS[0], codes(1), edited, None)  # what the model answers from
    assert render(prefix, tok) == f"{EDIT_PROMPT}<image:und:16>{EDIT_QUESTION}" and prefix.text_targets == []


def test_edit_regen_sequence_renders_back_to_the_template(builder, loaded):
    tok = loaded[1]
    source, bad, good = codes(1), codes(2), codes(3)
    s = builder.edit_regen(INSTRUCTIONS[0], source, bad, "No, the cube is red.", good)
    assert render(s, tok) == (
        f"{EDIT_PROMPT}<image:gen:16>{EDIT_QUESTION}No, the cube is red.{EOS}"
        "\nNext, I will draw a new image<begin_of_image><image:gen:16><end_of_image>"
    )
    assert s.task == "edit_regen" and s.text_targets == []  # the evaluation is context, as in Task III
    assert [c.tolist() for _, c in s.gen_images] == [source.tolist(), bad.tolist(), good.tolist()]
    last_boi = int(np.flatnonzero(s.input_ids == builder.boi_id)[-1])
    assert s.image_targets == [(last_boi + k, int(good[k])) for k in range(N)]  # the good edit only
    twin = builder.edit_regen(INSTRUCTIONS[0], source, bad, "No, the cube is red.", good, drop=True)
    n_instr = len(tok(INSTRUCTIONS[0], add_special_tokens=False).input_ids)
    differ = np.flatnonzero(s.input_ids != twin.input_ids)  # the CFG twin pads the instruction only
    assert len(differ) == n_instr and (twin.input_ids[differ] == tok.pad_token_id).all()
    prefix = builder.edit_regen(INSTRUCTIONS[0], source, bad, "No, the cube is red.")
    assert prefix.input_ids.tolist() == s.input_ids[: last_boi + 1].tolist()


def test_from_record_builds_the_edit_tasks(builder):
    source, edited, good = codes(1), codes(2), codes(3)
    records = {
        "edit": {"json": {"task": "edit", "instruction": INSTRUCTIONS[0]}, "source.npy": source, "image.npy": edited},
        "edit_judge": {
            "json": {"task": "edit_judge", "instruction": INSTRUCTIONS[0], "reason": "Yes, it is blue."},
            "source.npy": source,
            "image.png": picture(4),
        },
        "edit_regen": {
            "json": {"task": "edit_regen", "instruction": INSTRUCTIONS[0], "reason": "No, it is red."},
            "source.npy": source,
            "bad.npy": edited,
            "good.npy": good,
        },
    }
    built = {task: builder.from_record(sample) for task, sample in records.items()}
    assert built["edit"].input_ids.tolist() == builder.edit(INSTRUCTIONS[0], source, edited).input_ids.tolist()
    judged = builder.edit_judge(INSTRUCTIONS[0], source, picture(4), "Yes, it is blue.")
    assert built["edit_judge"].input_ids.tolist() == judged.input_ids.tolist()
    regen = builder.edit_regen(INSTRUCTIONS[0], source, edited, "No, it is red.", good)
    assert built["edit_regen"].image_targets == regen.image_targets
    assert {t: s.task for t, s in built.items()} == {t: t for t in records}


def test_edit_sequence_refuses_bad_input(builder):
    with pytest.raises(ValueError, match="source image has 15 codes"):
        builder.edit(INSTRUCTIONS[0], codes(1)[:15])
    with pytest.raises(ValueError, match="non-empty instruction"):
        builder.edit("  ", codes(1))


# ---------------------------------------------------------------- JanusEditor


def test_prefix_embeds_the_source_codes_as_the_template_places_them(editor, builder, tiny_janus):
    sources = [picture(1, (96, 64)), picture(2)]
    prepared = editor.prepare_sources(sources)
    assert [im.size for im in prepared] == [(64, 64)] * 2
    src = editor.encode_sources(prepared)
    reference = VQEncoder(str(tiny_janus), CPU, torch.float32)
    assert np.array_equal(src, reference.encode([center_crop(s, 64) for s in sources]))
    model = editor.model
    embeds, mask, where = edit_cfg_inputs(model, editor.tokenizer, torch.as_tensor(src), INSTRUCTIONS)
    width = embeds.shape[1]
    with torch.inference_mode():
        for row in range(4):  # conditional rows, then their twins
            b, drop = row % 2, row >= 2
            sample = builder.edit(INSTRUCTIONS[b], src[b], drop=drop)
            ids = torch.as_tensor(sample.input_ids)
            off = width - len(ids)  # left padding
            assert mask[row].tolist() == [0] * off + [1] * len(ids)
            start = off + sample.gen_images[0][0]
            assert where[row].nonzero().flatten().tolist() == list(range(start, start + N))
            gen = model.prepare_embeddings_for_image_generation(torch.as_tensor(src[b], dtype=torch.long)[None])[0]
            assert torch.equal(embeds[row, start : start + N], gen)
            text = model.get_input_embeddings()(ids)
            keep = torch.ones(len(ids), dtype=torch.bool)
            keep[sample.gen_images[0][0] : sample.gen_images[0][0] + N] = False
            assert torch.equal(embeds[row, off:][keep], text[keep])


def test_same_seeds_same_edits_at_batch_1_and_4(editor):
    sources = [picture(1), picture(2)]
    batch = [(sources[0], INSTRUCTIONS[0], 11), (sources[0], INSTRUCTIONS[0], 12), (sources[1], INSTRUCTIONS[1], 13)]
    batch.append((sources[1], INSTRUCTIONS[0], 11))
    together = editor.draw(*map(list, zip(*batch, strict=True)))
    assert together.codes.shape == (4, N) and together.codes.dtype == np.int32
    assert [im.size for im in together.images] == [(64, 64)] * 4
    for i, (src, instr, seed) in enumerate(batch):
        alone = editor.draw([src], [instr], [seed])
        assert np.array_equal(alone.codes[0], together.codes[i])
        # Same tokens; the VQ decoder's convolutions round differently at batch 4 than at 1.
        assert np.abs(px(alone.images[0]) - px(together.images[i])).max() <= BATCH_TOLERANCE
        assert np.array_equal(alone.source_codes[0], together.source_codes[i])
    assert not np.array_equal(together.codes[0], together.codes[1])  # another seed, another candidate
    assert together.sources[0] is together.sources[1]  # one crop per distinct source


def test_the_source_and_the_instruction_condition_the_edit(editor):
    a, b = picture(1), picture(2)
    draw = editor.draw([a, b, a], [INSTRUCTIONS[0], INSTRUCTIONS[0], INSTRUCTIONS[1]], [5, 5, 5])
    assert not np.array_equal(draw.codes[0], draw.codes[1])  # same seed and instruction, other source
    assert not np.array_equal(draw.codes[0], draw.codes[2])  # same seed and source, other instruction


def test_reference_loop_draws_the_same_edits(editor, tiny_janus, loaded):
    ref = JanusEditor(JanusGenConfig(model=str(tiny_janus), loop="reference"), CPU, torch.float32, loaded=loaded)
    src = np.stack([codes(1), codes(2)])
    fast, _ = editor.generate_tokens(src, INSTRUCTIONS, [3, 4])
    slow, _ = ref.generate_tokens(src, INSTRUCTIONS, [3, 4])
    assert torch.equal(fast, slow)


def test_janus_editor_protocol_and_errors(editor):
    assert editor.name == "janus" and editor.params()["source_fit"] == "center_crop"
    assert [im.size for im in editor.generate([picture(3)], ["make it red"], [0])] == [(64, 64)]
    with pytest.raises(ValueError, match="2 seeds"):
        editor.draw([picture(3)], ["make it red"], [0, 1])
    with pytest.raises(ValueError, match="source codes must have shape"):
        editor.generate_tokens(np.zeros((1, 15), np.int32), ["x"], [0])


def test_center_crop_keeps_the_middle():
    wide = np.zeros((64, 256, 3), np.uint8)
    wide[:, 96:160] = 255  # a white middle square between black sides
    out = np.asarray(center_crop(Image.fromarray(wide), 32))
    assert out.shape == (32, 32, 3) and out.min() >= 250


# ---------------------------------------------------------------- KontextEditor


@pytest.fixture(scope="module")
def kontext(janus_cache) -> KontextEditor:
    return KontextEditor(KONTEXT, CPU, torch.float32)


def test_tiny_kontext_is_the_tiny_flux_under_the_kontext_pipeline(janus_cache):
    from diffusers import FluxKontextPipeline

    path = tiny_model_path("kontext")
    assert resolve_model("tiny:kontext") == str(path)
    index = json.loads((path / "model_index.json").read_text())
    flux_index = json.loads((tiny_model_path("flux") / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    for part in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "transformer"):
        assert index[part] == flux_index[part], part
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        (file,) = (path / part).glob("*.safetensors")
        mine, flux = load_file(file), load_file(tiny_model_path("flux") / part / file.name)
        assert mine.keys() == flux.keys() and all(torch.equal(mine[k], flux[k]) for k in mine), part
    assert isinstance(FluxKontextPipeline.from_pretrained(path, use_safetensors=True), FluxKontextPipeline)


def test_kontext_is_deterministic_and_independent_of_its_batch(kontext):
    sources = [picture(1), picture(2), picture(1)]
    together = kontext.generate(sources, [INSTRUCTIONS[0], INSTRUCTIONS[1], INSTRUCTIONS[0]], [7, 8, 9])
    assert [(im.mode, im.size) for im in together] == [("RGB", (64, 64))] * 3
    again = kontext.generate(sources, [INSTRUCTIONS[0], INSTRUCTIONS[1], INSTRUCTIONS[0]], [7, 8, 9])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(together, again, strict=True))
    (alone,) = kontext.generate([sources[0]], [INSTRUCTIONS[0]], [7])
    assert np.abs(px(alone) - px(together[0])).max() <= BATCH_TOLERANCE
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[2]))  # seed 9, not 7


def test_the_source_conditions_the_kontext_edit(kontext):
    sources, instructions, seeds = [picture(1), picture(2)], [INSTRUCTIONS[0]] * 2, [7, 7]
    a, b = kontext.draw_pixels(sources, instructions, seeds, 64, 64)
    (alone,) = kontext.draw_pixels(sources[:1], instructions[:1], seeds[:1], 64, 64)
    # The tiny random transformer attends almost uniformly, so a source moves the edit by ~1e-3
    # (under one uint8 level), still a thousand times the float rounding of batching (~1e-6).
    batching = np.abs(alone - a).max()
    assert batching < 1e-5 and np.abs(a - b).max() > 100 * max(batching, 1e-6)
    (pil,) = kontext.generate(sources[:1], instructions[:1], seeds[:1])
    assert np.array_equal(np.asarray(pil), (alone * 255).round().astype(np.uint8))


def test_kontext_sizes_and_one_call_per_size(kontext, monkeypatch):
    assert edit_size((512, 512), auto_resize=True, max_area=1024**2, multiple=16) == (1024, 1024)
    assert edit_size((1500, 1000), auto_resize=True, max_area=1024**2, multiple=16) == (832, 1248)
    assert edit_size((96, 48), auto_resize=False, max_area=64 * 64, multiple=4) == (44, 88)
    calls = []
    draw = kontext.draw_pixels

    def spy(sources, instructions, seeds, height, width):
        calls.append((len(sources), height, width))
        return draw(sources, instructions, seeds, height, width)

    monkeypatch.setattr(kontext, "draw_pixels", spy)
    sources = [picture(1), picture(2, (96, 48)), picture(3)]
    images = kontext.generate(sources, ["make it red"] * 3, [1, 2, 3])
    assert calls == [(2, 64, 64), (1, 44, 88)]
    assert [im.size for im in images] == [(64, 64), (88, 44), (64, 64)]


def test_kontext_protocol_and_errors(kontext, tmp_path):
    assert kontext.name == "kontext" and kontext.model_id == "tiny:kontext"
    assert kontext.params() == {
        "num_inference_steps": 2,
        "guidance_scale": 2.5,
        "max_sequence_length": 32,
        "max_area": 4096,
        "auto_resize": False,
    }
    with pytest.raises(ValueError, match="2 seeds"):
        kontext.generate([picture(1)], ["x"], [1, 2])
    with pytest.raises(ModelError, match="checkpoint not found"):
        KontextEditor(dataclasses.replace(KONTEXT, model=str(tmp_path / "missing")), CPU, torch.float32)
