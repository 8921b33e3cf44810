"""`janus serve judge` behaves as LMDeploy 0.18's api_server, and S through it equals S from the full softmax.

The contract is checked against LMDeploy's own output: tests/fixtures/lmdeploy holds bodies made
by LMDeploy 0.18.0's response classes and logprobs builder (see its README), and this server's
bodies must have the same shape and messages.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from judge_fakes import Proxy, lmdeploy_fixture, noise

from janus_data.errors import JudgeServerError
from janus_data.judge.client import ServerJudge
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, score_from_logprobs, word_of
from janus_data.judge.server import JudgeServer
from janus_data.judge.templates import consistency_question, reason_question
from janus_data.judge.wire import REASON_SAMPLING, S_SAMPLING, chat_body, data_url, first_token_top

PROMPTS = ["a red cube", "two cats on a sofa", "a tree", "a <image> city at night", "a blue car"]
SIZES = [(384, 384), (500, 260), (200, 520), (96, 64), (640, 480)]
FAST = {"timeout_s": 120.0, "retries": 3, "backoff_s": 0.01, "backoff_max_s": 0.05, "reason_tokens": 8}
MODES = {
    "turbomind": {"engine": "turbomind"},
    "pytorch-raw_logprobs": {"engine": "pytorch", "logprobs_mode": "raw_logprobs"},
    "pytorch-raw_logits": {"engine": "pytorch", "logprobs_mode": "raw_logits"},
}


fixture = lmdeploy_fixture


@pytest.fixture(scope="module")
def images():
    return [noise(w, h, seed) for seed, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def in_process(judge, images):
    """S from the full first-token softmax and the greedy reason, in this process."""
    return judge.score(PROMPTS, images)


@pytest.fixture(scope="module", params=list(MODES))
def server(request, judge):
    with JudgeServer(judge, model_name="tiny-judge", max_batch=8, **MODES[request.param]) as srv:
        yield srv


@pytest.fixture(scope="module")
def turbomind(judge):
    with JudgeServer(judge, model_name="tiny-judge", max_batch=8) as srv:
        yield srv


def s_body(image, prompt: str, **extra) -> dict:
    return chat_body("tiny-judge", consistency_question(prompt), data_url(image), 1, S_SAMPLING, 20) | extra


def post(srv, body: dict) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)


# ---------------------------------------------------------------- S is right


def test_s_through_every_engine_equals_full_softmax(server, images, in_process):
    """Done when: S through the stand-in in each engine mode equals S from the full softmax within 1e-4."""
    client = ServerJudge([server.url], concurrency=4, **FAST)
    client.check()
    got = client.score(PROMPTS, images)
    for g, w in zip(got, in_process, strict=True):
        assert g.error is None and not g.flagged
        assert g.score == pytest.approx(w.score, abs=1e-4, rel=0) and g.answer == w.answer
        assert g.reason == w.reason


def test_s_is_right_whichever_token_was_sampled(server, images, in_process):
    """Sampling is always on: over seeds the chosen first token is a yes-word on some draws and a no-word on
    others, and S read from the chosen token plus its top_logprobs is the same full-softmax S every time."""
    chosen: dict[str, int] = {"yes": 0, "no": 0}
    for k in (0, 1, 2):  # S of 0.60, 0.69, 0.14: both answers are likely
        for seed in range(8):
            body = post(server, s_body(images[k], PROMPTS[k], seed=seed)).json()
            first = body["choices"][0]["logprobs"]["content"][0]
            assert first["token"] not in [t["token"] for t in first["top_logprobs"]]
            word = word_of(first["token"])
            kind = "yes" if word in YES_WORDS else "no" if word in NO_WORDS else "other"
            chosen[kind] = chosen.get(kind, 0) + 1
            s = score_from_logprobs(first_token_top(body["choices"][0]))
            assert s == pytest.approx(in_process[k].score, abs=1e-4, rel=0)
    assert chosen["yes"] > 0 and chosen["no"] > 0, chosen


def test_reading_only_top_logprobs_would_be_wrong(turbomind, images, in_process):
    """The chosen token is missing from top_logprobs, so the old reading drops real mass."""
    body = post(turbomind, s_body(images[0], PROMPTS[0], seed=3)).json()["choices"][0]
    only_top = {t["token"]: t["logprob"] for t in body["logprobs"]["content"][0]["top_logprobs"]}
    assert len(only_top) == 19
    assert abs(score_from_logprobs(only_top) - in_process[0].score) > 1e-3
    assert score_from_logprobs(first_token_top(body)) == pytest.approx(in_process[0].score, abs=1e-4)


# ---------------------------------------------------------------- LMDeploy's semantics


def test_tokens_are_vocabulary_pieces_and_every_token_has_logprobs(turbomind, images, judge):
    body = s_body(images[1], PROMPTS[1]) | {"max_completion_tokens": 4, "ignore_eos": True, "seed": 0}
    out = post(turbomind, body).json()
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 == out["usage"]["completion_tokens"]
    vocab = judge.tokenizer.get_vocab()
    for item in content:
        assert item["token"] in vocab and item["bytes"] == list(item["token"].encode())
        assert all(t["token"] in vocab for t in item["top_logprobs"])
    pieces = {t["token"] for item in content for t in item["top_logprobs"]} | {i["token"] for i in content}
    assert any(p.startswith("Ġ") for p in pieces)  # the leading-space variants, as pieces
    assert out["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_wins_over_max_tokens(turbomind, images):
    base = s_body(images[1], PROMPTS[1]) | {"ignore_eos": True, "logprobs": False, "top_logprobs": None}
    for fields, n in (
        ({"max_completion_tokens": 3, "max_tokens": 5}, 3),
        ({"max_completion_tokens": None, "max_tokens": 2}, 2),
    ):
        out = post(turbomind, base | fields).json()
        assert out["usage"]["completion_tokens"] == n and out["choices"][0]["logprobs"] is None


def test_turbomind_temperature_zero_leaves_one_candidate(turbomind, images):
    out = post(turbomind, s_body(images[0], PROMPTS[0], temperature=0)).json()
    first = out["choices"][0]["logprobs"]["content"][0]
    assert first["logprob"] == 0.0 and first["top_logprobs"] == []
    assert score_from_logprobs(first_token_top(out["choices"][0])) in (0.0, 1.0)


def test_server_defaults_shape_the_candidates_unless_pinned(judge, images):
    """--generation-config defaults (here top_k 3) cut the list when the request leaves top_k unset."""
    with JudgeServer(judge, model_name="tiny-judge", generation_config={"top_k": 3, "temperature": 0.7}) as srv:
        loose = s_body(images[0], PROMPTS[0])
        for key in ("temperature", "top_k", "top_p", "repetition_penalty"):
            loose.pop(key)
        first = post(srv, loose).json()["choices"][0]["logprobs"]["content"][0]
        assert len(first["top_logprobs"]) + 1 == 3
        pinned = post(srv, s_body(images[0], PROMPTS[0])).json()["choices"][0]["logprobs"]["content"][0]
        assert len(pinned["top_logprobs"]) + 1 >= 20


def test_pytorch_engine_without_logprobs_mode_refuses_logprobs(judge, images):
    want = fixture("error_400_logprobs_mode_disabled")["body"]
    with JudgeServer(judge, model_name="tiny-judge", engine="pytorch") as srv:
        resp = post(srv, s_body(images[0], PROMPTS[0]))
        assert resp.status_code == 400 and resp.json() == want
        reason = chat_body("tiny-judge", reason_question("a"), data_url(images[0]), 4, REASON_SAMPLING)
        assert post(srv, reason).status_code == 200  # no logprobs asked: served
        with pytest.raises(JudgeServerError) as err:
            ServerJudge([srv.url], **FAST).check()
    assert "\n" not in str(err.value) and "--logprobs-mode raw_logprobs" in str(err.value)


def test_response_has_lmdeploys_shape(turbomind, images):
    want = fixture("chat_qwen2_turbomind_yes")["body"]
    got = post(turbomind, s_body(images[0], PROMPTS[0])).json()
    assert list(got) == list(want)
    assert list(got["choices"][0]) == list(want["choices"][0])
    assert list(got["choices"][0]["message"]) == list(want["choices"][0]["message"])
    assert list(got["usage"]) == list(want["usage"])
    item, want_item = got["choices"][0]["logprobs"]["content"][0], want["choices"][0]["logprobs"]["content"][0]
    assert list(item) == list(want_item) and list(item["top_logprobs"][0]) == list(want_item["top_logprobs"][0])
    models = httpx.get(turbomind.url + "/v1/models").json()
    want_models = fixture("models_list")["body"]
    assert [m["id"] for m in models["data"]] == ["tiny-judge"]
    assert set(models["data"][0]) == set(want_models["data"][0]) and models["object"] == "list"


@pytest.mark.parametrize(
    "case",
    ["model", "top_logprobs", "temperature", "top_p", "top_k", "max_tokens", "type", "json", "content_type", "n"],
)
def test_bad_requests_get_lmdeploys_flat_errors(turbomind, images, case):
    good = s_body(images[3], "a cat")
    status, body = 400, good
    if case == "model":
        status, body = 404, good | {"model": "wrong-model"}
    elif case in ("top_logprobs", "temperature", "top_p", "top_k", "max_tokens", "n"):
        body = good | {case: {"top_logprobs": 21, "temperature": 2.5, "top_p": 0, "top_k": -1}.get(case, 0)}
    elif case == "type":
        body = good | {"temperature": "hot"}
    if case == "json":
        resp = httpx.post(
            turbomind.url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
        )
    elif case == "content_type":
        resp = httpx.post(
            turbomind.url + "/v1/chat/completions", content=json.dumps(good), headers={"Content-Type": "text/plain"}
        )
    else:
        resp = post(turbomind, body)
    assert resp.status_code == status, resp.text
    err = resp.json()
    assert list(err) == list(fixture("error_404_model_not_found")["body"])
    assert err["object"] == "error" and err["code"] == status and err["message"]
    if case == "model":
        assert err == fixture("error_404_model_not_found")["body"]
    assert post(turbomind, good).status_code == 200


def test_undecodable_image_is_a_preprocess_400(turbomind):
    body = chat_body("tiny-judge", consistency_question("a"), "data:image/png;base64,iVBORw0KGgoAAAAN", 1, S_SAMPLING)
    resp = post(turbomind, body)
    assert resp.status_code == 400 and resp.json()["message"] == "Request preprocessing failed."


def test_session_len_refuses_long_prompts(judge, images):
    with JudgeServer(judge, model_name="tiny-judge", session_len=500) as srv:
        resp = post(srv, s_body(images[1], "a"))  # 500x260: two tiles and a thumbnail, ~800 tokens
        assert resp.status_code == 400
        message = resp.json()["message"]
        assert re.fullmatch(r"Input length \((\d+)\) must be smaller than the model context length \(500\)\.", message)
        assert post(srv, s_body(images[0], "a")).status_code == 200  # one tile: under 300 tokens


# ---------------------------------------------------------------- the OpenAI SDK


def test_openai_sdk_works_unmodified(turbomind, images, in_process):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=turbomind.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-judge"]
    body = s_body(images[2], PROMPTS[2])
    resp = client.chat.completions.create(
        model="tiny-judge",
        messages=body["messages"],
        max_completion_tokens=1,
        temperature=1.0,
        top_p=1.0,
        logprobs=True,
        top_logprobs=20,
        extra_body={"top_k": 0, "repetition_penalty": 1.0},
    )
    first = resp.choices[0].logprobs.content[0]
    top = {t.token: t.logprob for t in first.top_logprobs} | {first.token: first.logprob}
    assert score_from_logprobs(top) == pytest.approx(in_process[2].score, abs=1e-4)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=body["messages"], max_completion_tokens=1)


# ---------------------------------------------------------------- the client's pre-flight


def test_preflight_names_a_server_that_ignores_sampling_fields(turbomind):
    def greedy(body: dict) -> dict:  # what a proxy or server that drops the request's sampling fields does
        return body | {"temperature": 0}

    with Proxy(turbomind.url, rewrite=greedy) as proxy, pytest.raises(JudgeServerError) as err:
        ServerJudge([proxy.url], **FAST).check()
    msg = str(err.value)
    assert "\n" not in msg and "exactly 0 or 1" in msg and "temperature" in msg


def test_model_is_the_one_listed_or_must_be_named(turbomind):
    two = {"object": "list", "data": [{"id": "tiny-judge"}, {"id": "lora-a"}]}
    with Proxy(turbomind.url, models=two) as proxy:
        with pytest.raises(JudgeServerError, match=r"several models .*--model"):
            ServerJudge([proxy.url], **FAST).check()
        named = ServerJudge([proxy.url], model="tiny-judge", **FAST)
        named.check()
        assert named.model_id == "server:tiny-judge"
    with pytest.raises(JudgeServerError, match="does not serve 'other'"):
        ServerJudge([turbomind.url], model="other", **FAST).check()
    auto = ServerJudge([turbomind.url], **FAST)
    assert auto.model_id == "server:tiny-judge"
