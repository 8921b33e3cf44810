"""The in-process judge: S from the first-token softmax, batched == one at a time, templates, errors."""

from __future__ import annotations

import doctest
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from janus_data.errors import ModelError
from janus_data.judge import scoring
from janus_data.judge.hf import HFJudge
from janus_data.judge.scoring import answer_of, score_from_logprobs
from janus_data.judge.templates import consistency_question, reason_question

# (width, height): with max_tiles=4 these cut into 1, 3, 4 and 5 tiles (thumbnail included).
SIZES = [(384, 384), (900, 448), (448, 1400), (700, 600)]
PROMPTS = ["a red cube", "two cats on a sofa under a lamp", "a tree", "a <IMG_CONTEXT> city at <image> night"]


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def judge(tiny_internvl):
    return HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=4, reason_tokens=12)


@pytest.fixture(scope="module")
def images():
    return [noise(w, h, seed) for seed, (w, h) in enumerate(SIZES)]


# ---------------------------------------------------------------- templates and scoring


def test_templates_exact():
    assert consistency_question("a cat") == (
        '<image>\n Does this image match the description "a cat", please directly respond with yes or no.'
    )
    reason = reason_question("a cat")
    assert reason.startswith("<image>\n") and '"a cat"' in reason and "Yes or No" in reason


def test_scoring_doctests():
    assert doctest.testmod(scoring).failed == 0


def test_score_from_logprobs_cases():
    both = {"Ġyes": math.log(0.2), "▁Yes": math.log(0.2), " YES ": math.log(0.2), "No": math.log(0.1), "NO": -50.0}
    assert score_from_logprobs(both) == pytest.approx(0.6 / (0.6 + 0.1 + math.exp(-50.0)))
    assert score_from_logprobs({"yes": -2.0, "maybe": -0.1}) == 1.0
    assert score_from_logprobs({"\nno": -2.0, "maybe": -0.1}) == 0.0
    assert score_from_logprobs({"maybe": -0.1, "yeah": -1.0, "Noo": -1.0}) is None
    assert score_from_logprobs({}) is None
    assert (answer_of(0.5), answer_of(0.8), answer_of(0.2)) == ("yes", "yes", "no")


# ---------------------------------------------------------------- HFJudge


def test_question_ids_match_plain_tokenization(judge):
    """The image tag expands as InternVLProcessor would; a prompt's control-token spellings stay text."""
    tok = judge.tokenizer
    n = judge.image_seq_length
    question = consistency_question("a red cube")
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    expanded = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * (2 * n) + "</img>", 1)
    assert judge.question_ids(question, 2) == tok(expanded).input_ids
    tricky = judge.question_ids(consistency_question(PROMPTS[-1]), 1)
    assert tricky.count(judge.context_id) == n


def test_scores_in_unit_interval_and_reasons(judge, images):
    results = judge.score(PROMPTS, images)
    assert len(results) == len(PROMPTS)
    for r in results:
        assert r.score is not None and 0.0 <= r.score <= 1.0
        assert r.answer == answer_of(r.score) and not r.flagged
        assert isinstance(r.reason, str) and r.reason
    assert judge.score([], []) == []


def test_batched_equals_one_at_a_time(judge, images):
    tiles = judge.image_processor(images=images, crop_to_patches=True, max_patches=4, return_tensors="pt")
    assert len(set(tiles["num_patches"].tolist())) == len(images)  # every row pads differently
    batched = judge.score(PROMPTS, images)
    single = [judge.score([p], [im])[0] for p, im in zip(PROMPTS, images, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert b.score == pytest.approx(s.score, abs=1e-5, rel=0)
        assert b.reason == s.reason


@pytest.fixture(scope="module")
def judge64(tiny_internvl):
    """The tiny judge in float64: paths that must agree do so to rounding, far below any tolerance."""
    fp32 = HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=4, reason_tokens=12)
    loaded = (fp32.model.to(torch.float64), fp32.tokenizer, fp32.image_processor)
    return HFJudge("tiny:internvl", torch.device("cpu"), torch.float64, max_tiles=4, reason_tokens=12, loaded=loaded)


def plain_s(judge, prompt: str, image) -> float:
    """The yes share of the full first-token softmax of one unpadded forward pass, no janus code in the way."""
    model, tok = judge.model, judge.tokenizer
    pixels = judge.image_processor(images=[image], crop_to_patches=True, max_patches=4, return_tensors="pt")
    ids = torch.tensor([judge.question_ids(consistency_question(prompt), int(pixels["num_patches"][0]))])
    with torch.inference_mode():
        logits = model(input_ids=ids, pixel_values=pixels["pixel_values"].to(judge.dtype)).logits[0, -1]
    probs = logits.double().softmax(-1)
    yes = sum(float(probs[tok.convert_tokens_to_ids(t)]) for w in scoring.YES_WORDS for t in (w, "Ġ" + w))
    no = sum(float(probs[tok.convert_tokens_to_ids(t)]) for w in scoring.NO_WORDS for t in (w, "Ġ" + w))
    return yes / (yes + no)


def test_score_matches_plain_forward(judge, judge64, images):
    """S (one shared prefill, ragged batch) equals the full softmax of one unpadded forward pass."""
    exact = judge64.score(PROMPTS, images)
    for prompt, image, got in zip(PROMPTS, images, exact, strict=True):
        assert got.score == pytest.approx(plain_s(judge64, prompt, image), abs=1e-9, rel=0)
    fp32 = judge.score(PROMPTS[1:2], images[1:2])[0].score
    assert fp32 == pytest.approx(plain_s(judge, PROMPTS[1], images[1]), abs=1e-5, rel=0)


def test_shared_prefill_equals_two_passes(judge, judge64, images):
    """Done when: the one-prefill S is unchanged within 1e-6 and the reasons are the same."""
    for j, tol in ((judge64, 1e-9), (judge, 1e-5)):
        shared, separate = j.score(PROMPTS, images), j.score(PROMPTS, images, shared_prefill=False)
        for a, b in zip(shared, separate, strict=True):
            assert a.score == pytest.approx(b.score, abs=tol, rel=0)
            assert a.reason == b.reason


def test_reason_equals_transformers_generate(judge, images):
    """The greedy reason of the decode loop is what transformers' own generate() writes."""
    for prompt, image in zip(PROMPTS[:2], images[:2], strict=True):
        pixels, tiles = judge.preprocess([image])
        ids = torch.tensor([judge.question_ids(reason_question(prompt), tiles[0])])
        with torch.inference_mode():
            out = judge.model.generate(
                input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, pad_token_id=judge.pad_id
            )
        want = judge.text_of(out[0, ids.shape[1] :].tolist())[0]
        assert judge.score([prompt], [image])[0].reason == want


def test_missing_or_broken_checkpoint_is_model_error(tmp_path, tiny_internvl):
    with pytest.raises(ModelError, match="not found"):
        HFJudge(str(tmp_path / "nope"), torch.device("cpu"), torch.float32)
    broken = tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(tiny_internvl / "config.json", broken / "config.json")
    with pytest.raises(ModelError) as err:
        HFJudge(str(broken), torch.device("cpu"), torch.float32)
    assert "\n" not in str(err.value) and "cannot load InternVL judge" in str(err.value)
