"""The judge client: LMDeploy's own responses give the true S; faults are retried; refusals are rows or stops.

Fault tests decide nothing by timing: answers are replayed from a recorded fault-free run, a
stalled request is held until the test ends, and a barrier fills the concurrency slots.
"""

from __future__ import annotations

import doctest
import threading

import httpx
import pytest
from judge_fakes import FIXTURES, Proxy, Replay, Silent, encoded, lmdeploy_fixture, noise

from janus_data.errors import JudgeServerError
from janus_data.judge import client as client_mod
from janus_data.judge import wire
from janus_data.judge.client import ServerJudge
from janus_data.judge.scoring import score_from_logprobs
from janus_data.judge.server import JudgeServer
from janus_data.judge.wire import S_SAMPLING, error_message, first_token_top, image_mime

S_CASES = sorted(p.stem for p in FIXTURES.glob("chat_*.json") if p.stem != "chat_reason")
SIZES = [(384, 384), (500, 260), (200, 520), (96, 64), (640, 480)]
PROMPTS = ["a red cube", "two cats on a sofa", "a tree", "a <image> city at night", "a blue car"]
FAST = {"timeout_s": 120.0, "retries": 5, "backoff_s": 0.01, "backoff_max_s": 0.05, "reason_tokens": 8}


fixture = lmdeploy_fixture


@pytest.fixture(scope="module")
def server(judge):
    with JudgeServer(judge, model_name="tiny-judge", max_batch=8) as srv:
        yield srv


@pytest.fixture(scope="module")
def sent():
    """What the client sends: PNG bytes, a PIL image, JPEG bytes, WebP bytes and a PIL image."""
    pils = [noise(w, h, seed) for seed, (w, h) in enumerate(SIZES)]
    return [encoded(pils[0], "PNG"), pils[1], encoded(pils[2], "JPEG"), encoded(pils[3], "WEBP"), pils[4]]


@pytest.fixture(scope="module")
def recorded(server, sent):
    """A fault-free run through a recording proxy: its results and every answer, for replay."""
    with Proxy(server.url) as proxy:
        results = ServerJudge([proxy.url], model="tiny-judge", **FAST).score(PROMPTS, sent)
    return results, proxy.recorded


def same_results(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and g.flagged == w.flagged and g.reason == w.reason
        assert g.score == pytest.approx(w.score, abs=1e-4, rel=0)


# ---------------------------------------------------------------- LMDeploy's own responses


@pytest.mark.parametrize("case", S_CASES)
def test_lmdeploy_response_gives_the_true_s(case):
    """Bodies made by LMDeploy 0.18.0's ChatCompletionResponse and _create_chat_completion_logprobs."""
    data = fixture(case)
    choice = data["body"]["choices"][0]
    assert score_from_logprobs(first_token_top(choice)) == pytest.approx(data["expected"]["s"], abs=1e-9)
    first = choice["logprobs"]["content"][0]
    assert first["token"] == data["expected"]["chosen_token"]
    assert first["token"] not in [t["token"] for t in first["top_logprobs"]]


def test_old_reading_was_wrong_on_lmdeploy_responses():
    flips = 0
    for case in S_CASES:
        data = fixture(case)
        only_top = {
            t["token"]: t["logprob"] for t in data["body"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        }
        assert score_from_logprobs(only_top) == pytest.approx(data["expected"]["s_top_logprobs_only"], abs=1e-9)
        flips += (score_from_logprobs(only_top) >= 0.5) != (data["expected"]["s"] >= 0.5)
    assert flips >= 2  # the answer itself flips, not just S


def test_openai_style_repeat_of_the_chosen_token_counts_once():
    choice = fixture("chat_qwen2_turbomind_yes")["body"]["choices"][0]
    first = choice["logprobs"]["content"][0]
    repeated = {
        **first,
        "top_logprobs": [{"token": first["token"], "logprob": first["logprob"]}, *first["top_logprobs"]],
    }
    assert first_token_top({"logprobs": {"content": [repeated]}}) == first_token_top(choice)


def test_lmdeploy_bodies_end_to_end():
    data = fixture("chat_internlm2_pytorch_no")
    with Replay(data["body"]) as srv:
        judge = ServerJudge([srv.url], **{**FAST, "reason_tokens": 0})
        judge.check()
        (result,) = judge.score(["a red cube"], [noise(64, 64, 0)])
    assert result.score == pytest.approx(data["expected"]["s"], abs=1e-9) and result.answer == "no"
    error = fixture("error_400_logprobs_mode_disabled")
    with Replay(error["body"], error["status"]) as srv, pytest.raises(JudgeServerError) as err:
        ServerJudge([srv.url], **FAST).check()
    assert "--logprobs-mode raw_logprobs" in str(err.value) and error["body"]["message"] in str(err.value)


def test_error_messages_of_every_body_shape():
    def resp(status, body):
        return httpx.Response(status, json=body) if not isinstance(body, str) else httpx.Response(status, text=body)

    flat = fixture("error_404_model_not_found")["body"]
    assert error_message(resp(404, flat)) == flat["message"]
    assert error_message(resp(400, {"error": {"message": "nested", "type": "x"}})) == "nested"
    assert error_message(resp(404, {"detail": "Not Found"})) == "Not Found"
    assert error_message(resp(502, "<html>bad gateway</html>")) == "<html>bad gateway</html>"


def test_request_bodies_pin_sampling():
    s = wire.chat_body("m", "<image>\n q", "data:,", 1, S_SAMPLING, 20)
    assert (s["temperature"], s["top_p"], s["top_k"], s["repetition_penalty"]) == (1.0, 1.0, 0, 1.0)
    assert s["max_completion_tokens"] == s["max_tokens"] == 1 and s["logprobs"] and s["top_logprobs"] == 20
    assert s["messages"][0]["content"][0]["type"] == "image_url" and s["messages"][0]["content"][1]["text"] == " q"
    r = wire.chat_body("m", "<image>\n q", "data:,", 64, wire.REASON_SAMPLING)
    assert r["temperature"] == 0 and r["top_k"] == 1 and "logprobs" not in r


def test_doctests_and_arguments():
    assert doctest.testmod(client_mod).failed == 0 and doctest.testmod(wire).failed == 0
    assert image_mime(b"\xff\xd8\xff\xe0....") == "image/jpeg" and image_mime(b"hello") is None
    assert ServerJudge("localhost:23333/").endpoints == ["http://localhost:23333"]
    assert wire.public_url("http://u:p@h:1/") == "http://h:1"
    with pytest.raises(ValueError, match="top_logprobs"):
        ServerJudge(["http://h:1"], top_logprobs=21)
    with pytest.raises(ValueError):
        ServerJudge([])


# ---------------------------------------------------------------- refusals


def test_bad_image_bytes_give_error_rows(server, sent, recorded):
    truncated = encoded(noise(64, 64, 9), "PNG")[:40]  # PNG magic: goes to the server, which answers 400
    images = [sent[0], b"definitely not an image", sent[1], truncated]
    got = ServerJudge([server.url], **FAST).score(["a", "b", PROMPTS[1], "d"], images)
    same_results([got[2]], [recorded[0][1]])
    for row in (got[1], got[3]):
        assert row.score is None and row.answer is None and not row.flagged and row.reason == ""
        assert row.error and "\n" not in row.error
    assert "HTTP 400" in got[3].error and "preprocessing" in got[3].error
    assert got[0].error is None


def test_a_refusal_of_every_request_stops_the_batch(server, sent):
    refused = (400, {"object": "error", "message": "nope", "type": "invalid_request_error", "code": 400})
    with Proxy(server.url, faults=lambda i, body: refused) as proxy, pytest.raises(JudgeServerError) as err:
        ServerJudge([proxy.url], model="tiny-judge", **FAST).score(PROMPTS, sent)
    assert "\n" not in str(err.value) and "refused all 5 requests" in str(err.value) and "nope" in str(err.value)
    # One refused pair among good ones is that pair's error row.
    with Proxy(server.url, faults={0: refused}) as proxy:
        got = ServerJudge([proxy.url], model="tiny-judge", **{**FAST, "reason_tokens": 0}).score(PROMPTS, sent)
    assert sum(r.error is not None for r in got) == 1 and "nope" in next(r.error for r in got if r.error)


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", ["drop", "500", pytest.param("stall", marks=pytest.mark.slow)])
def test_faults_are_retried(server, sent, recorded, fault):
    want, answers = recorded
    faults = {1: "stall"} if fault == "stall" else {0: fault, 3: fault, 4: fault}
    # Replayed answers take milliseconds, so only the stalled request can meet the 10 s timeout.
    with Proxy(server.url, faults=faults, replay=answers) as proxy:
        got = ServerJudge([proxy.url], model="tiny-judge", **{**FAST, "timeout_s": 10.0}).score(PROMPTS, sent)
    same_results(got, want)
    assert proxy.posts == 2 * len(PROMPTS) + len(faults)


def test_silent_server_raises_after_configured_tries():
    silent = Silent()
    try:
        judge = ServerJudge([silent.url], model="m", timeout_s=0.3, retries=3, backoff_s=0.01, reason_tokens=0)
        with pytest.raises(JudgeServerError) as err:
            judge.score(["a"], [noise(32, 32, 0)])
        assert len(silent.conns) == 3
    finally:
        silent.close()
    msg = str(err.value)
    assert "\n" not in msg and "after 3 tries" in msg and silent.url in msg and "lmdeploy serve api_server" in msg


def test_closed_port_raises_after_configured_tries(monkeypatch, dead_url):
    url = dead_url
    sent = []
    real = httpx.AsyncClient.request

    async def counting(self, method, target, **kw):
        sent.append(target)
        return await real(self, method, target, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "request", counting)
    judge = ServerJudge([url], model="m", timeout_s=0.3, retries=4, backoff_s=0.01, reason_tokens=0)
    with pytest.raises(JudgeServerError) as err:
        judge.score(["a"], [noise(32, 32, 0)])
    assert "\n" not in str(err.value) and "after 4 tries" in str(err.value) and url in str(err.value)
    assert len(sent) == 4
    # In a batch, the first request to run out of tries cancels the rest.
    sent.clear()
    with pytest.raises(JudgeServerError, match="after 4 tries"):
        ServerJudge([url], model="m", timeout_s=0.3, retries=4, backoff_s=0.01).score(
            ["a"] * 3, [b"\x89PNG\r\n\x1a\n"] * 3
        )
    assert 4 <= len(sent) < 4 * 6
    with pytest.raises(JudgeServerError, match="after 2 tries"):
        ServerJudge([url], timeout_s=0.3, backoff_s=0.01).check()


def test_concurrency_limit_per_endpoint(server, sent, recorded):
    want, answers = recorded
    with Proxy(server.url, replay=answers, barrier=3) as proxy:
        got = ServerJudge([proxy.url], model="tiny-judge", **{**FAST, "concurrency": 3}).score(PROMPTS, sent)
    same_results(got, want)
    assert proxy.max_in_flight == 3  # the barrier fills three slots; the client never opens a fourth


def test_several_endpoints_share_and_cover_for_each_other(server, sent, recorded, dead_url):
    want, answers = recorded
    with Proxy(server.url, replay=answers) as a, Proxy(server.url, replay=answers) as b:
        got = ServerJudge([a.url, b.url + "/"], model="tiny-judge", **{**FAST, "concurrency": 2}).score(PROMPTS, sent)
        same_results(got, want)
        assert a.posts > 0 and b.posts > 0 and a.posts + b.posts == 2 * len(PROMPTS)
        assert max(a.max_in_flight, b.max_in_flight) <= 2
        dead = dead_url  # a dead endpoint: its requests move to the live one
        judge = ServerJudge([dead, a.url], model="tiny-judge", **FAST)
        same_results(judge.score(PROMPTS, sent), want)
        with pytest.raises(JudgeServerError, match="2 tries"):
            judge.check()


# ---------------------------------------------------------------- API key and lifecycle


def test_api_key(judge, monkeypatch):
    key = "sk-judge-7c1e0f-secret"
    image = noise(96, 64, 3)
    monkeypatch.delenv("JANUS_JUDGE_API_KEY", raising=False)
    with JudgeServer(judge, model_name="keyed", api_key=key) as srv:
        unauthorized = httpx.get(srv.url + "/v1/models")
        assert unauthorized.status_code == 401 and unauthorized.json()["message"] == "Unauthorized."
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200  # LMDeploy skips /health
        judge_client = ServerJudge([srv.url], model="keyed", **FAST)
        with pytest.raises(JudgeServerError) as err:
            judge_client.score(["a"], [image])
        assert "401" in str(err.value) and "JANUS_JUDGE_API_KEY" in str(err.value)
        monkeypatch.setenv("JANUS_JUDGE_API_KEY", key)
        auto = ServerJudge([srv.url], **FAST)
        auto.check()
        assert auto.model_id == "server:keyed"
        assert all(r.error is None for r in auto.score(["a", "b"], [image, noise(64, 64, 1)]))
        monkeypatch.setenv("JANUS_JUDGE_API_KEY", "wrong-" + key)
        with pytest.raises(JudgeServerError) as wrong:
            auto.score(["a"], [image])
        for text in (repr(auto), auto.model_id, str(wrong.value), str(err.value), repr(srv)):
            assert key not in text


def test_endpoints_must_serve_one_model(server, judge):
    with JudgeServer(judge, model_name="other") as other, pytest.raises(JudgeServerError, match="disagree"):
        ServerJudge([server.url, other.url], **FAST).check()


def test_stop_fails_nothing_silently(judge):
    srv = JudgeServer(judge, model_name="j").start()
    url = srv.url
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(JudgeServerError):
        ServerJudge([url], model="j", timeout_s=0.3, retries=2, backoff_s=0.01).score(["a"], [noise(32, 32, 0)])


def test_serve_forever_blocks_until_stopped(judge):
    srv = JudgeServer(judge, model_name="fg")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    results = ServerJudge([srv.url], **FAST).score(["a"], [noise(64, 64, 2)])
    assert results[0].error is None and results[0].reason
    srv.stop()
    thread.join()
    assert not thread.is_alive()


def test_image_helpers():
    png = encoded(noise(8, 8, 0), "PNG")
    assert wire.data_url(png).startswith("data:image/png;base64,")
    assert wire.data_url(noise(8, 8, 0)).startswith("data:image/png;base64,")
    with pytest.raises(ValueError):
        wire.data_url(b"GIF89a....")
