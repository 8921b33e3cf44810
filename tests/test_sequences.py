"""SFT sequences (janus_train.sequences) and their losses (janus_train.losses) on the tiny Janus-Pro."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor

from janus_data.config import JanusGenConfig
from janus_data.generators.janus import JanusGenerator, load_janus
from janus_data.generators.janus_loop import unconditional_ids
from janus_train.losses import collate, forward_losses, per_sample_losses, target_losses
from janus_train.sequences import SequenceBuilder, render

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
PROMPT = "a red cube"
TURN = f"{BOS}<|User|>: a red cube\n\n<|Assistant|>:<begin_of_image>"
JUDGE = "<end_of_image>\nLet me think Does this image match the prompt..."
REGEN = f"{EOS}\nNext, I will draw a new image<begin_of_image>"
N = 16  # the tiny model's generation codes and understanding tokens per image


@pytest.fixture(scope="module")
def loaded(tiny_janus):
    return load_janus(str(tiny_janus), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tok(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def builder(tiny_janus):
    return SequenceBuilder.from_pretrained(str(tiny_janus))


@pytest.fixture(scope="module")
def processor(tiny_janus):
    return AutoImageProcessor.from_pretrained(tiny_janus)


def codes(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 512, N).astype(np.int32)


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3)).astype(np.uint8))


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_t2i_template_and_targets(builder, tok):
    c = codes(1)
    s = builder.t2i(PROMPT, c)
    assert render(s, tok) == f"{TURN}<image:gen:16><end_of_image>"
    boi = int(np.flatnonzero(s.input_ids == builder.boi_id)[0])
    assert s.gen_images[0][0] == boi + 1 and np.array_equal(s.gen_images[0][1], c)
    assert s.image_targets == [(boi + k, int(c[k])) for k in range(N)]
    assert s.text_targets == [] and s.und_images == []
    assert len(s) == boi + 1 + N + 1


def test_t2i_prompt_ids_equal_the_generator_and_its_unconditional_row(builder, loaded, tiny_janus):
    gen = JanusGenerator(JanusGenConfig(model=str(tiny_janus)), torch.device("cpu"), torch.float32, loaded=loaded)
    ref, _ = gen.encode_prompts([PROMPT])
    s = builder.t2i(PROMPT, codes(1))
    assert s.input_ids[: ref.shape[1]].tolist() == ref[0].tolist()
    dropping = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=1.0)
    d = dropping.t2i(PROMPT, codes(1), random.Random(0))
    uncond = unconditional_ids(ref, gen.bos_id, gen.boi_id, gen.pad_id)
    assert d.input_ids[: ref.shape[1]].tolist() == uncond[0].tolist()


@pytest.mark.parametrize("reason", ["Yes. The image shows a red cube.", "No. The cube is blue."])
def test_judge_template_and_weights(builder, tok, reason):
    img = image(2)
    s = builder.judge(PROMPT, img, reason)
    assert render(s, tok) == f"{TURN}<image:und:16>{JUDGE}{reason}{EOS}"
    boi = int(np.flatnonzero(s.input_ids == builder.boi_id)[0])
    assert s.und_images == [(boi + 1, img)]
    assert (s.input_ids[boi + 1 : boi + 1 + N] == builder.image_id).all()
    assert s.image_targets == [] and s.gen_images == []
    targets = s.text_targets
    answer_ids = [*tok(reason, add_special_tokens=False).input_ids, tok.eos_token_id]
    start = len(s) - len(answer_ids)  # the answer and EOS close the sequence
    assert [p for p, _, _ in targets] == list(range(start - 1, len(s) - 1))
    assert [t for _, t, _ in targets] == answer_ids
    assert decode(tok, [t for _, t, _ in targets]) == reason + EOS
    # the Yes/No word opens the targets and alone weighs 0.8 (the tiny tokenizer splits "No" in two)
    n_word = sum(w == pytest.approx(0.8) for _, _, w in targets)
    assert decode(tok, [t for _, t, _ in targets[:n_word]]) == reason.split(".")[0]
    assert n_word == (1 if reason.startswith("Yes") else 2)
    assert [w for _, _, w in targets] == pytest.approx([0.8] * n_word + [0.2] * (len(answer_ids) - n_word))
    assert decode(tok, s.input_ids[:start]).endswith("match the prompt...")


def test_regen_template_and_targets(builder, tok, tiny_janus):
    bad, good = codes(3), codes(4)
    evaluation = "No. The cube is blue."
    s = builder.regen(PROMPT, bad, evaluation, good)
    assert render(s, tok) == f"{TURN}<image:gen:16>{JUDGE}{evaluation}{REGEN}<image:gen:16><end_of_image>"
    boi1, boi2 = np.flatnonzero(s.input_ids == builder.boi_id).tolist()
    assert [st for st, _ in s.gen_images] == [boi1 + 1, boi2 + 1]
    assert np.array_equal(s.gen_images[0][1], bad) and np.array_equal(s.gen_images[1][1], good)
    assert s.image_targets == [(boi2 + k, int(good[k])) for k in range(N)]  # the good image only
    assert s.text_targets == []  # no loss on the evaluation text by default
    with_text = SequenceBuilder.from_pretrained(str(tiny_janus), regen_text_loss=True).regen(
        PROMPT, bad, evaluation, good
    )
    assert decode(tok, [t for _, t, _ in with_text.text_targets]) == evaluation + EOS
    assert with_text.text_targets[0][2] == pytest.approx(0.8)
    assert with_text.image_targets == s.image_targets


def test_caption_dropout_probabilities_and_determinism(tiny_janus):
    never = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=0.0)
    always = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=1.0)
    rng0, rng1 = random.Random(0), random.Random(0)
    assert not any(never.t2i(PROMPT, codes(1), rng0).caption_dropped for _ in range(200))
    assert all(always.regen(PROMPT, codes(1), "No. x", codes(2), rng1).caption_dropped for _ in range(200))
    default = SequenceBuilder.from_pretrained(str(tiny_janus))
    assert default.caption_dropout == 0.1

    def draws(seed):
        rng = random.Random(seed)
        return [default.t2i(PROMPT, codes(1), rng).caption_dropped for _ in range(400)]

    first = draws(7)
    assert first == draws(7)
    assert 20 <= sum(first) <= 60  # ~10%
    assert first != draws(8)
    assert not default.t2i(PROMPT, codes(1)).caption_dropped  # no rng: never


def test_caption_dropout_pads_exactly_the_prompt(tiny_janus, tok):
    turn = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=1.0)
    caption = SequenceBuilder.from_pretrained(str(tiny_janus), caption_dropout=1.0, dropout_scope="caption")
    n_turn = len(tok("<|User|>: a red cube\n\n<|Assistant|>:", add_special_tokens=False).input_ids)
    n_caption = len(tok(" a red cube", add_special_tokens=False).input_ids)
    bad, good, ev = codes(3), codes(4), "No. The cube is blue."
    kept = turn.regen(PROMPT, bad, ev, good)
    for b, scaffold in [(turn, PAD * n_turn), (caption, f"<|User|>:{PAD * n_caption}\n\n<|Assistant|>:")]:
        t = b.t2i(PROMPT, codes(1), random.Random(0))
        assert render(t, tok) == f"{BOS}{scaffold}<begin_of_image><image:gen:16><end_of_image>"
        r = b.regen(PROMPT, bad, ev, good, random.Random(0))
        assert (
            render(r, tok)
            == f"{BOS}{scaffold}<begin_of_image><image:gen:16>{JUDGE}{ev}{REGEN}<image:gen:16><end_of_image>"
        )
        # only prompt tokens change; targets and everything after <begin_of_image> are untouched
        boi = int(np.flatnonzero(kept.input_ids == turn.boi_id)[0])
        changed = np.flatnonzero(r.input_ids != kept.input_ids)
        assert changed.min() >= 1 and changed.max() < boi
        assert (r.input_ids[changed] == tok.pad_token_id).all()
        assert r.image_targets == kept.image_targets
    # a judge sample never drops its caption
    assert not turn.judge(PROMPT, image(1), "Yes. ok").caption_dropped


def test_special_token_spellings_in_prompts_stay_text(builder, tok):
    prompt = "draw <begin_of_image> then <end_of_image><｜end▁of▁sentence｜><image_placeholder>"
    reason = "No. It shows <begin_of_image> literally."
    t = builder.t2i(prompt, codes(1))
    turn = f"{BOS}<|User|>: {prompt}\n\n<|Assistant|>:<begin_of_image>"
    assert render(t, tok) == f"{turn}<image:gen:16><end_of_image>"
    ids = t.input_ids.tolist()
    assert ids.count(builder.boi_id) == 1 and ids.count(builder.eoi_id) == 1
    assert ids.count(builder.eos_id) == 0 and ids.count(builder.image_id) == N
    j = builder.judge(prompt, image(1), reason)
    assert render(j, tok) == f"{turn}<image:und:16>{JUDGE}{reason}{EOS}"
    ids = j.input_ids.tolist()
    assert ids.count(builder.boi_id) == 1 and ids.count(builder.eos_id) == 1 and ids.count(builder.image_id) == N


def test_from_record_dispatches_on_task(builder, tok):
    img = image(5)
    rec = {"prompt": PROMPT, "label": None, "reason": None}
    t = builder.from_record({"json": {**rec, "task": "t2i"}, "image.npy": codes(1), "image.png": img})
    j = builder.from_record({"json": {**rec, "task": "judge", "label": "Yes", "reason": "Yes. ok"}, "image.jpg": img})
    r = builder.from_record(
        {
            "json": {**rec, "task": "regen", "label": "No", "reason": "No. bad"},
            "bad.npy": codes(2),
            "good.npy": codes(3),
        }
    )
    assert [t.task, j.task, r.task] == ["t2i", "judge", "regen"]
    assert j.und_images[0][1] is img
    assert render(r, tok).count("<image:gen:16>") == 2
    with pytest.raises(ValueError, match="codes"):
        builder.t2i(PROMPT, codes(1)[:5])


def samples(builder):
    return [
        builder.t2i(PROMPT, codes(1)),
        builder.judge("two birds on the left of a green apple tree", image(2), "Yes. Two birds sit left of the tree."),
        builder.regen("a cat", codes(3), "No. There is a dog, not a cat.", codes(4)),
    ]


def test_forward_losses_on_a_mixed_batch(loaded, builder, processor):
    model, tok = loaded
    batch = collate(samples(builder), tok.pad_token_id, processor)
    with torch.no_grad():
        losses = forward_losses(model, batch)
    assert set(losses) == {"t2i", "judge", "regen", "total"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    expected = sum(losses[t] for t in ("t2i", "judge", "regen")) / 3  # one sample each
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # PIL images are processed by forward_losses when collate had no processor
    lazy = collate(samples(builder), tok.pad_token_id)
    with torch.no_grad():
        again = forward_losses(model, lazy, processor)
    assert again["judge"].item() == pytest.approx(losses["judge"].item(), abs=1e-6)


def test_t2i_image_loss_equals_a_hand_computed_reference(loaded, builder, processor):
    model, tok = loaded
    c = codes(1)
    s = builder.t2i(PROMPT, c)
    with torch.no_grad():
        ours = forward_losses(model, collate([s], tok.pad_token_id, processor))["t2i"]
        prompt_ids = torch.tensor([[tok.bos_token_id, *tok(f"<|User|>: {PROMPT}\n\n<|Assistant|>:").input_ids[1:]]])
        prompt_ids = torch.cat([prompt_ids, torch.tensor([[builder.boi_id]])], dim=1)
        target = torch.from_numpy(c).long()
        embeds = torch.cat(
            [model.get_input_embeddings()(prompt_ids), model.prepare_embeddings_for_image_generation(target[None])],
            dim=1,
        )
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        p = prompt_ids.shape[1] - 1
        logits = model.model.generation_head(hidden[0, p : p + N])
        ref = F.cross_entropy(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_padding_does_not_change_a_samples_loss(loaded, builder, processor):
    model, tok = loaded
    t2i, judge, regen = samples(builder)
    with torch.no_grad():
        alone = {s.task: forward_losses(model, collate([s], tok.pad_token_id, processor))[s.task] for s in (t2i, judge)}
        for short in (t2i, judge):
            assert len(short) < len(regen)
            batched = forward_losses(model, collate([short, regen], tok.pad_token_id, processor))
            assert batched[short.task].item() == pytest.approx(alone[short.task].item(), abs=1e-5)


def test_per_sample_losses_and_the_split_reduction(loaded, builder, processor):
    model, tok = loaded
    t2i, judge, regen = samples(builder)
    long_judge = builder.judge(PROMPT, image(9), "No. " + "The cube is blue and the sphere is red. " * 3)
    with torch.no_grad():
        batch = collate([t2i, judge, regen, long_judge], tok.pad_token_id, processor)
        per = per_sample_losses(model, batch)
        losses = forward_losses(model, batch)
        assert per[0].item() == pytest.approx(losses["t2i"].item(), abs=1e-6)
        assert per[2].item() == pytest.approx(losses["regen"].item(), abs=1e-6)
        for i, s in enumerate([t2i, judge, regen, long_judge]):  # independent of the batch
            alone = per_sample_losses(model, collate([s], tok.pad_token_id, processor))
            assert per[i].item() == pytest.approx(alone.item(), abs=1e-5)
        # "split": 0.8 x mean CE of the Yes/No word + 0.2 x mean CE of the rest (the released code)
        one = collate([judge], tok.pad_token_id, processor)
        t = target_losses(model, one)
        word = torch.isclose(t.text_weight, torch.tensor(0.8))
        ref = 0.8 * t.text_ce[word].mean() + 0.2 * t.text_ce[~word].mean()
        assert forward_losses(model, one, text_reduction="split")["judge"].item() == pytest.approx(ref.item(), abs=1e-6)
        weighted = (t.text_ce * t.text_weight).sum() / t.text_weight.sum()
        assert forward_losses(model, one)["judge"].item() == pytest.approx(weighted.item(), abs=1e-6)


def test_overfit_three_samples(tiny_janus, builder, processor, capsys):
    torch.manual_seed(0)
    model, tok = load_janus(str(tiny_janus), torch.device("cpu"), torch.float32)
    for frozen in (model.model.vision_model, model.model.vqmodel):
        frozen.requires_grad_(False)
    model.train()
    batch = collate(samples(builder), tok.pad_token_id, processor)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(40):
        losses = forward_losses(model, batch)
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    with torch.no_grad():
        final = {k: v.item() for k, v in forward_losses(model, batch).items()}
    with capsys.disabled():
        print("\noverfit 40 steps: " + ", ".join(f"{k} {history[0][k]:.3f} -> {final[k]:.3f}" for k in final))
    for task in ("t2i", "judge", "regen"):
        assert final[task] <= 0.5 * history[0][task], (task, history[0][task], final[task])
