"""The edit judge: R_flw and R_psv on (original, edited) in one prompt, in process and through the LMDeploy stand-in."""

from __future__ import annotations

import doctest

import httpx
import pytest
import torch
from judge_fakes import encoded, noise

from janus_data.judge import scoring, templates
from janus_data.judge.client import ServerJudge
from janus_data.judge.hf import HFJudge
from janus_data.judge.scoring import edit_reward
from janus_data.judge.server import JudgeServer
from janus_data.judge.templates import FOLLOWING, PRESERVING, edit_question, edit_reason_question, message_texts
from janus_data.judge.wire import S_SAMPLING, chat_body, data_url, first_token_top

INSTRUCTIONS = ["make the sky red", "add a <image> cat on the left", "remove the tree"]
# (original, edited) sizes: with max_tiles=2 these cut into 1 or 3 tiles each, so rows pad differently.
SIZES = [((300, 300), (300, 300)), ((500, 260), (260, 500)), ((200, 300), (640, 320))]
FAST = {"timeout_s": 120.0, "retries": 3, "backoff_s": 0.01, "backoff_max_s": 0.05, "reason_tokens": 8}
TRUNCATED_PNG = encoded(noise(64, 64, 9), "PNG")[:200]  # PNG magic, cut short: only a full decode finds it


@pytest.fixture(scope="module")
def pairs():
    originals = [noise(*o, seed=2 * k) for k, (o, _) in enumerate(SIZES)]
    edited = [noise(*e, seed=2 * k + 1) for k, (_, e) in enumerate(SIZES)]
    return originals, edited


@pytest.fixture(scope="module")
def in_process(judge, pairs):
    return judge.score_edits(INSTRUCTIONS, *pairs)


@pytest.fixture(scope="module")
def judge64(judge):
    """The session's tiny judge in float64 (its own copy): paths that must agree do so to rounding."""
    model = type(judge.model).from_pretrained(judge.model.name_or_path, dtype=torch.float64).eval()
    loaded = (model, judge.tokenizer, judge.image_processor)
    return HFJudge("tiny:internvl", torch.device("cpu"), torch.float64, max_tiles=2, reason_tokens=8, loaded=loaded)


def test_edit_questions_are_the_papers_words_in_the_released_frame():
    q = edit_question("flw", "make it blue")
    assert q == (
        "Please evaluate the following image edit based on the provided instructions:\n\n"
        "Image-1: <image>\nImage-2: <image>\n"
        "The first image is the original image and the second image is the edited image\n"
        "Editing Instructions: make it blue\n"
        "Does the edited image follow the editing instructions? Please directly respond with yes or no."
    )
    assert FOLLOWING == "Does the edited image follow the editing instructions?"
    assert PRESERVING == (
        "Does the area of the edited image that is unrelated to the editing instructions remain consistent "
        "with the original image?"
    )
    assert edit_question("psv", "x").endswith(f"{PRESERVING} Please directly respond with yes or no.")
    assert edit_reason_question("psv", "x").endswith(
        f"{PRESERVING} Please directly respond with yes or no, then give the reason"
    )
    assert doctest.testmod(templates).failed == 0 and doctest.testmod(scoring).failed == 0


def test_combined_reward_on_hand_computed_values():
    """Done when: R = R_flw + 0.25 R_psv on hand-computed values; the weights are arguments."""
    assert edit_reward(0.8, 0.4) == pytest.approx(0.9)  # 0.8 + 0.1
    assert edit_reward(0.2, 1.0) == pytest.approx(0.45)  # 0.2 + 0.25
    assert edit_reward(0.0, 0.0) == 0.0 and edit_reward(1.0, 1.0) == pytest.approx(1.25)
    assert edit_reward(0.6, 0.2, w_flw=0.5, w_psv=2.0) == pytest.approx(0.7)  # 0.3 + 0.4
    assert edit_reward(None, 0.5) is None and edit_reward(0.5, None) is None


def test_prompt_holds_both_images_in_order_and_the_exact_question(judge):
    """The ids the model sees: the chat template with Image-1 (original: 1 tile) then Image-2 (edited: 3 tiles)."""
    tok, n = judge.tokenizer, judge.image_seq_length
    question = edit_question("flw", INSTRUCTIONS[1])
    ids = judge.question_ids(question, [1, 3])
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    image = "<img>" + "<IMG_CONTEXT>" * n + "</img>"
    expanded = text.replace("<image>", image, 1).replace("<image>", "<img>" + "<IMG_CONTEXT>" * (3 * n) + "</img>", 1)
    assert ids == tok(expanded).input_ids  # the instruction's own "<image>" stays text
    assert ids.count(judge.context_id) == 4 * n
    rendered = tok.decode(ids)
    first, second = rendered.index("Image-1: <img><IMG_CONTEXT>"), rendered.index("Image-2: <img><IMG_CONTEXT>")
    assert first < second < rendered.index(f"Editing Instructions: {INSTRUCTIONS[1]}\n{FOLLOWING}")
    assert rendered.count("<IMG_CONTEXT>") == 4 * n
    assert rendered.index("</img>", first) < second  # Image-1 is closed before Image-2 opens
    assert rendered[second:].count("<IMG_CONTEXT>") == 3 * n


def test_request_parts_interleave_text_and_images():
    body = chat_body("m", edit_question("psv", "x"), ["data:a", "data:b"], 1, S_SAMPLING, 20)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == ["data:a", "data:b"]
    assert parts[0]["text"].endswith("Image-1: ") and parts[2]["text"] == "Image-2: "
    assert parts[4]["text"].startswith("The first image is the original") and PRESERVING in parts[4]["text"]
    assert message_texts(edit_question("flw", "x"), 2)[1] == "Image-2: "


def test_in_process_scores(in_process):
    for r in in_process:
        assert r.status == "ok" and r.error is None
        for side in (r.following, r.preserving):
            assert 0.0 <= side.score <= 1.0 and side.answer == scoring.answer_of(side.score) and side.reason


def test_shared_prefill_equals_separate_passes_and_a_plain_forward(judge64, pairs):
    """One prefill for four questions == separate passes == one unpadded forward pass (float64)."""
    shared = judge64.score_edits(INSTRUCTIONS, *pairs)
    separate = judge64.score_edits(INSTRUCTIONS, *pairs, shared_prefill=False)
    for a, b in zip(shared, separate, strict=True):
        for x, y in ((a.following, b.following), (a.preserving, b.preserving)):
            assert x.score == pytest.approx(y.score, abs=1e-9, rel=0) and x.reason == y.reason
    model = judge64.model
    for k, instruction in enumerate(INSTRUCTIONS[:2]):
        images = [pairs[0][k], pairs[1][k]]
        pixels, tiles = judge64.preprocess(images)
        for kind, got in (("flw", shared[k].s_flw), ("psv", shared[k].s_psv)):
            ids = torch.tensor([judge64.question_ids(edit_question(kind, instruction), tiles)])
            with torch.inference_mode():
                logits = model(input_ids=ids, pixel_values=pixels.to(torch.float64)).logits[0, -1]
            probs = logits.softmax(-1)
            yes, no = float(probs[judge64.yes_ids].sum()), float(probs[judge64.no_ids].sum())
            assert got == pytest.approx(yes / (yes + no), abs=1e-9, rel=0)


def test_batched_equals_one_at_a_time(judge, pairs, in_process):
    for k, want in enumerate(in_process):
        (got,) = judge.score_edits([INSTRUCTIONS[k]], [pairs[0][k]], [pairs[1][k]])
        assert got.s_flw == pytest.approx(want.s_flw, abs=1e-5, rel=0)
        assert got.s_psv == pytest.approx(want.s_psv, abs=1e-5, rel=0)
        assert got.following.reason == want.following.reason and got.preserving.reason == want.preserving.reason


def test_scores_only_without_reasons(judge, pairs, in_process):
    """reason_tokens=0: the same S_flw and S_psv from the shared prefill, no reasons decoded."""
    quiet = HFJudge(
        "tiny:internvl",
        torch.device("cpu"),
        torch.float32,
        max_tiles=2,
        reason_tokens=0,
        loaded=(judge.model, judge.tokenizer, judge.image_processor),
    )
    for got, want in zip(quiet.score_edits(INSTRUCTIONS, *pairs), in_process, strict=True):
        assert got.s_flw == pytest.approx(want.s_flw, abs=1e-5, rel=0)
        assert got.s_psv == pytest.approx(want.s_psv, abs=1e-5, rel=0)
        assert got.following.reason == got.preserving.reason == ""
    assert quiet.score_edits([], [], []) == []


def test_unreadable_edited_image_is_an_error_row(judge, pairs, in_process):
    originals, edited = pairs
    got = judge.score_edits(INSTRUCTIONS, originals, [edited[0], b"not an image", TRUNCATED_PNG])
    assert got[0].s_flw == pytest.approx(in_process[0].s_flw, abs=1e-5, rel=0)
    for bad in got[1:]:
        assert bad.status == "error" and bad.s_flw is None and bad.s_psv is None
        assert bad.error.startswith("cannot read the edited image") and "\n" not in bad.error
    assert edit_reward(got[1].s_flw, got[1].s_psv) is None


# ---------------------------------------------------------------- through the LMDeploy stand-in


@pytest.fixture(scope="module", params=["turbomind", "pytorch"])
def server(request, judge):
    mode = {"engine": "pytorch", "logprobs_mode": "raw_logprobs"} if request.param == "pytorch" else {}
    with JudgeServer(judge, model_name="tiny-judge", max_batch=8, **mode) as srv:
        yield srv


def test_two_image_requests_give_the_in_process_scores(server, pairs, in_process):
    """Done when: the two-image request is accepted by the stand-in and gives the in-process S_flw and S_psv."""
    client = ServerJudge([server.url], concurrency=4, **FAST)
    client.check()
    originals, edited = pairs
    got = client.score_edits(INSTRUCTIONS, [encoded(originals[0], "PNG"), *originals[1:]], edited)
    for g, w in zip(got, in_process, strict=True):
        assert g.status == "ok"
        for x, y in ((g.following, w.following), (g.preserving, w.preserving)):
            assert x.score == pytest.approx(y.score, abs=1e-4, rel=0) and x.answer == y.answer
            assert x.reason == y.reason
        r = edit_reward(g.s_flw, g.s_psv)
        assert r == pytest.approx(w.s_flw + 0.25 * w.s_psv, abs=2e-4)


def post(srv, body: dict) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)


def s_of(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    return scoring.score_from_logprobs(first_token_top(response.json()["choices"][0]))


def test_image_token_placeholders_place_the_images_as_lmdeploy_does(server, pairs, in_process):
    """LMDeploy's other form: text parts with <IMAGE_TOKEN> (no newline after the image), images anywhere."""
    urls = [data_url(pairs[0][0]), data_url(pairs[1][0])]
    question = edit_question("flw", INSTRUCTIONS[0]).replace("<image>\n", "<IMAGE_TOKEN>\n")
    images = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    body = chat_body("tiny-judge", edit_question("flw", INSTRUCTIONS[0]), urls, 1, S_SAMPLING, 20)
    body["messages"][0]["content"] = [*images, {"type": "text", "text": question}]
    assert s_of(post(server, body)) == pytest.approx(in_process[0].s_flw, abs=1e-4, rel=0)
    body["messages"][0]["content"] = [images[0], {"type": "text", "text": question}]  # 2 placeholders, 1 image
    resp = post(server, body)
    assert resp.status_code == 400 and resp.json()["message"] == "Request preprocessing failed."


def test_image_order_matters(server, pairs, in_process):
    """Swapping the parts swaps Image-1 and Image-2: a different S (the images are not a bag)."""
    urls = [data_url(pairs[1][1]), data_url(pairs[0][1])]
    body = chat_body("tiny-judge", edit_question("flw", INSTRUCTIONS[1]), urls, 1, S_SAMPLING, 20)
    assert abs(s_of(post(server, body)) - in_process[1].s_flw) > 1e-4


def test_bad_edit_requests(server, pairs):
    url = data_url(pairs[0][0])
    body = chat_body("tiny-judge", edit_question("flw", "x"), [url, url], 1, S_SAMPLING, 20)
    body["messages"][0]["content"].append({"type": "input_audio", "input_audio": {}})
    resp = post(server, body)
    assert resp.status_code == 400 and resp.json()["object"] == "error"
    broken = chat_body(
        "tiny-judge", edit_question("flw", "x"), [url, "data:image/png;base64,iVBORw0KGgoAAAAN"], 1, S_SAMPLING
    )
    resp = post(server, broken)
    assert resp.status_code == 400 and resp.json()["message"] == "Request preprocessing failed."


def test_client_error_rows_and_context_length(judge, pairs):
    """An unreadable image costs no request and is an error row; two images past --session-len are LMDeploy's 400."""
    originals, edited = pairs
    with JudgeServer(judge, model_name="tiny-judge", session_len=900) as srv:
        client = ServerJudge([srv.url], **FAST)
        got = client.score_edits(INSTRUCTIONS[:3], originals[:3], [edited[0], TRUNCATED_PNG, edited[2]])
    assert got[0].status == "ok"  # 1 + 1 tiles: about 600 tokens
    assert got[1].status == "error" and got[1].error.startswith("cannot read the edited image")
    assert got[2].status == "error" and "must be smaller than the model context length (900)" in got[2].error
