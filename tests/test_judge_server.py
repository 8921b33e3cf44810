"""The judge over HTTP: JudgeServer + ServerJudge equal HFJudge, survive faults, fail loudly and cleanly."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from janus_data.errors import JudgeServerError
from janus_data.judge import client as client_mod
from janus_data.judge.client import ServerJudge, data_url, first_token_top, image_mime
from janus_data.judge.hf import HFJudge
from janus_data.judge.scoring import score_from_logprobs
from janus_data.judge.server import JudgeServer
from janus_data.judge.templates import consistency_question, text_after_image

SIZES = [(384, 384), (500, 260), (200, 520), (96, 64), (640, 480)]
PROMPTS = ["a red cube", "two cats on a sofa", "a tree", "a <image> city at night", "a blue car"]
FAST = {"timeout_s": 20.0, "retries": 5, "backoff_s": 0.01, "backoff_max_s": 0.05, "reason_tokens": 8}


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90) if fmt == "JPEG" else image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def judge(tiny_internvl):
    return HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=2, reason_tokens=8)


@pytest.fixture(scope="module")
def server(judge):
    with JudgeServer(judge, model_name="tiny-judge", max_batch=8) as srv:
        yield srv


@pytest.fixture(scope="module")
def pils():
    return [noise(w, h, seed) for seed, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def sent(pils):
    """What the client sends: PNG bytes, JPEG bytes, WebP bytes and PIL images, mixed."""
    return [encoded(pils[0], "PNG"), pils[1], encoded(pils[2], "JPEG"), encoded(pils[3], "WEBP"), pils[4]]


@pytest.fixture(scope="module")
def decoded(sent):
    """The pixels the server sees for `sent` (JPEG and WebP are lossy)."""
    return [im if isinstance(im, Image.Image) else Image.open(io.BytesIO(im)).convert("RGB") for im in sent]


@pytest.fixture(scope="module")
def baseline(server, sent):
    """Fault-free results through the server, the reference of the fault tests."""
    return ServerJudge([server.url], **FAST).score(PROMPTS, sent)


def same_results(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and g.flagged == w.flagged and g.reason == w.reason
        assert (g.score is None) == (w.score is None)
        if w.score is not None:
            assert g.score == pytest.approx(w.score, abs=1e-4, rel=0)


# ---------------------------------------------------------------- fault injection


class FaultProxy:
    """An HTTP proxy in front of a server: counts requests and concurrency, injects faults.

    `faults` maps the index of a chat POST (0, 1, ...) to "drop" (close without a response),
    "500" or "stall" (hold the request `stall_s`, then close). `delay_s` slows every request.
    """

    def __init__(self, upstream: str, faults: dict[int, str] | None = None, stall_s: float = 0.0, delay_s=0.0):
        self.upstream = upstream.removeprefix("http://")
        self.faults = faults or {}
        self.stall_s, self.delay_s = stall_s, delay_s
        self.posts = self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.forward(b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    index, proxy.posts = proxy.posts, proxy.posts + 1
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    time.sleep(proxy.delay_s)
                    fault = proxy.faults.get(index)
                    if fault in ("drop", "stall"):
                        time.sleep(proxy.stall_s if fault == "stall" else 0)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif fault == "500":
                        self.reply(500, b'{"error": {"message": "injected", "type": "server_error", "code": null}}')
                    else:
                        self.forward(body)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def forward(self, body: bytes):
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                resp = httpx.request(self.command, f"http://{proxy.upstream}{self.path}", content=body, headers=headers)
                self.reply(resp.status_code, resp.content)

            def reply(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Silent:
    """A TCP server that accepts connections and never answers; counts the connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def closed_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------- equal to the in-process judge


def test_server_scores_equal_hf_judge(judge, server, sent, decoded):
    """The intended contract: S and reason through HTTP equal HFJudge.score (needs yes/no in the top 20)."""
    want = judge.score(PROMPTS, decoded)
    got = ServerJudge([server.url], concurrency=4, **FAST).score(PROMPTS, sent)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and g.reason == w.reason
        assert not g.flagged, "yes/no not among the first token's top 20 candidates of the tiny judge"
        assert g.score == pytest.approx(w.score, abs=1e-4, rel=0) and g.answer == w.answer


def test_server_scores_equal_top20_of_chat(judge, server, sent, decoded):
    """S through HTTP equals score_from_logprobs over HFJudge.chat's own top 20, flagged rows included."""
    answers = judge.chat([consistency_question(p) for p in PROMPTS], decoded, 1, top_logprobs=20)
    choices = [{"logprobs": {"content": [{"token": "", "logprob": 0.0, "top_logprobs": [
        {"token": t, "logprob": v} for t, v in a.top]}]}} for a in answers]  # fmt: skip
    want = [score_from_logprobs(first_token_top(c)) for c in choices]
    got = ServerJudge([server.url], concurrency=4, **FAST).score(PROMPTS, sent)
    for g, w in zip(got, want, strict=True):
        assert g.flagged == (w is None) and (g.score is None) == (w is None)
        if w is not None:
            assert g.score == pytest.approx(w, abs=1e-4, rel=0)


def test_wire_format(server, pils):
    """The response carries OpenAI's chat.completion fields; the first token entry leads its top list."""
    body = {
        "model": "tiny-judge",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(pils[3])}},
                    {"type": "text", "text": text_after_image(consistency_question("a cat"))},
                ],
            }
        ],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
    }
    out = httpx.post(server.url + "/v1/chat/completions", json=body).json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny-judge" and out["id"]
    choice = out["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    first = choice["logprobs"]["content"][0]
    assert len(first["top_logprobs"]) == 5 and first["token"] == first["top_logprobs"][0]["token"]
    assert first["bytes"] == list(first["token"].encode())
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-judge"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_image_mime_and_first_token_merge():
    assert image_mime(b"\xff\xd8\xff\xe0....") == "image/jpeg" and image_mime(b"hello") is None
    top = first_token_top({"logprobs": {"content": [{"top_logprobs": [
        {"token": "x", "logprob": np.log(0.2)}, {"token": "x", "logprob": np.log(0.3)}]}]}})  # fmt: skip
    assert top["x"] == pytest.approx(np.log(0.5))


# ---------------------------------------------------------------- bad requests


def _chat(url: str, content, **extra):
    body = {"model": "tiny-judge", "messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    "case",
    ["json", "no_image", "bad_image", "stream", "model", "top_logprobs", "temperature", "two_messages", "http_url"],
)
def test_bad_requests_get_400_and_server_keeps_serving(server, pils, case):
    png = data_url(pils[3])
    text = {"type": "text", "text": "is it?"}
    image = {"type": "image_url", "image_url": {"url": png}}
    if case == "json":
        resp = httpx.post(server.url + "/v1/chat/completions", content=b"{not json")
    elif case == "no_image":
        resp = _chat(server.url, "a text only question")
    elif case == "bad_image":
        garbage = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()
        resp = _chat(server.url, [{"type": "image_url", "image_url": {"url": garbage}}, text])
    elif case == "stream":
        resp = _chat(server.url, [image, text], stream=True)
    elif case == "model":
        resp = _chat(server.url, [image, text], model="other")
    elif case == "top_logprobs":
        resp = _chat(server.url, [image, text], logprobs=True, top_logprobs=21)
    elif case == "temperature":
        resp = _chat(server.url, [image, text], temperature=0.7)
    elif case == "two_messages":
        resp = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "tiny-judge", "messages": [{"role": "system", "content": "x"}] * 2},
        )
    else:
        resp = _chat(server.url, [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}, text])
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["message"] and err["type"] == "invalid_request_error"
    assert _chat(server.url, [image, text]).status_code == 200


def test_bad_image_bytes_give_error_rows(server, sent, baseline):
    truncated = encoded(noise(64, 64, 9), "PNG")[:40]  # PNG magic: goes to the server, which answers 400
    images = [sent[0], b"definitely not an image", sent[1], truncated]
    got = ServerJudge([server.url], **FAST).score(["a", "b", PROMPTS[1], "d"], images)
    same_results([got[2]], [baseline[1]])
    for row in (got[1], got[3]):
        assert row.score is None and row.answer is None and not row.flagged and row.reason == ""
        assert row.error and "\n" not in row.error
    assert "HTTP 400" in got[3].error and "image" in got[3].error
    assert got[0].error is None


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", ["drop", "500", "stall"])
def test_faults_are_retried(server, sent, baseline, fault):
    faults = {0: fault, 3: fault, 4: fault} if fault != "stall" else {1: "stall"}
    with FaultProxy(server.url, faults, stall_s=1.5) as proxy:
        judge = ServerJudge([proxy.url], model="tiny-judge", **{**FAST, "timeout_s": 1.0})
        got = judge.score(PROMPTS, sent)
    same_results(got, baseline)
    assert proxy.posts == 2 * len(PROMPTS) + len(faults)


def test_silent_server_raises_after_configured_tries():
    silent = Silent()
    try:
        judge = ServerJudge([silent.url], model="m", timeout_s=0.3, retries=3, backoff_s=0.01, reason_tokens=0)
        t0 = time.perf_counter()
        with pytest.raises(JudgeServerError) as err:
            judge.score(["a"], [noise(32, 32, 0)])
        assert time.perf_counter() - t0 < 3.0
        assert len(silent.conns) == 3
    finally:
        silent.close()
    msg = str(err.value)
    assert "\n" not in msg and "after 3 tries" in msg and silent.url in msg and "lmdeploy serve api_server" in msg


def test_closed_port_raises_after_configured_tries(monkeypatch):
    url = closed_port()
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


def test_concurrency_limit_per_endpoint(server, sent, baseline):
    with FaultProxy(server.url, delay_s=0.05) as proxy:
        got = ServerJudge([proxy.url], model="tiny-judge", **{**FAST, "concurrency": 3}).score(PROMPTS, sent)
    same_results(got, baseline)
    assert proxy.max_in_flight == 3


def test_several_endpoints_share_and_cover_for_each_other(server, sent, baseline):
    with FaultProxy(server.url, delay_s=0.02) as a, FaultProxy(server.url, delay_s=0.02) as b:
        got = ServerJudge([a.url, b.url + "/"], **{**FAST, "concurrency": 2}).score(PROMPTS, sent)
        same_results(got, baseline)
        assert a.posts > 0 and b.posts > 0 and a.posts + b.posts == 2 * len(PROMPTS)
        assert max(a.max_in_flight, b.max_in_flight) <= 2
        dead = closed_port()  # a dead endpoint: its requests move to the live one
        judge = ServerJudge([dead, a.url], model="tiny-judge", **FAST)
        same_results(judge.score(PROMPTS, sent), baseline)
        with pytest.raises(JudgeServerError, match="2 tries"):
            judge.check()


# ---------------------------------------------------------------- API key


def test_api_key(judge, pils, monkeypatch):
    key = "sk-judge-7c1e0f-secret"
    monkeypatch.delenv("JANUS_JUDGE_API_KEY", raising=False)
    with JudgeServer(judge, model_name="keyed", api_key=key) as srv:
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert _chat(srv.url, "x", model="keyed").status_code == 401
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        judge_client = ServerJudge([srv.url], model="keyed", **FAST)
        with pytest.raises(JudgeServerError) as err:
            judge_client.score(["a"], [pils[3]])
        assert "401" in str(err.value) and "JANUS_JUDGE_API_KEY" in str(err.value)
        monkeypatch.setenv("JANUS_JUDGE_API_KEY", key)
        auto = ServerJudge([srv.url], **FAST)
        assert auto.model_id == "server:keyed"
        results = auto.score(["a", "b"], [pils[3], pils[0]])
        assert all(r.error is None for r in results)
        monkeypatch.setenv("JANUS_JUDGE_API_KEY", "wrong-" + key)
        with pytest.raises(JudgeServerError) as wrong:
            auto.score(["a"], [pils[3]])
        for text in (repr(auto), auto.model_id, str(wrong.value), str(err.value), repr(srv)):
            assert key not in text


def test_model_mismatch_and_json_error_body(server):
    with pytest.raises(JudgeServerError, match="disagree"):
        ServerJudge([server.url], model="other").check()
    resp = httpx.post(server.url + "/v1/chat/completions", json={"model": "other", "messages": []})
    assert resp.status_code == 400 and json.loads(resp.text)["error"]["code"] == "model_not_found"


def test_stop_fails_nothing_silently(judge, pils):
    srv = JudgeServer(judge, model_name="j").start()
    url = srv.url
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(JudgeServerError):
        ServerJudge([url], model="j", timeout_s=0.3, retries=2, backoff_s=0.01).score(["a"], [pils[3]])
    assert client_mod.public_url("http://u:p@h:1/") == "http://h:1"


def test_client_doctests_and_arguments():
    import doctest

    assert doctest.testmod(client_mod).failed == 0
    assert ServerJudge("localhost:23333/").endpoints == ["http://localhost:23333"]
    with pytest.raises(ValueError, match="top_logprobs"):
        ServerJudge(["http://h:1"], top_logprobs=21)
    with pytest.raises(ValueError):
        ServerJudge([])


def test_serve_forever_blocks_until_stopped(judge, pils):
    srv = JudgeServer(judge, model_name="fg")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    results = ServerJudge([srv.url], **FAST).score(["a"], [pils[3]])
    assert results[0].error is None and results[0].reason
    srv.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
