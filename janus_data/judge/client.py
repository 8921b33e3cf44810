"""The `lmdeploy` judge backend: (prompt, image) pairs scored by OpenAI-compatible judge servers.

Works against `lmdeploy serve api_server <InternVL> --server-port 23333` (one or several, e.g. one
per GPU) and against `janus_data.judge.server.JudgeServer`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import random
import threading
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image

from janus_data.errors import JudgeServerError, one_line
from janus_data.judge.scoring import answer_of, score_from_logprobs
from janus_data.judge.templates import consistency_question, reason_question, text_after_image
from janus_data.judge.types import JudgeResult

_MIME = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
_RETRY_STATUS = {408, 429}


def image_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes from their magic bytes, else None.

    >>> image_mime(b"\\x89PNG\\r\\n\\x1a\\n...."), image_mime(b"RIFF1234WEBPVP8 "), image_mime(b"GIF89a")
    ('image/png', 'image/webp', None)
    """
    for magic, mime in _MIME:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url(image: Image.Image | bytes) -> str:
    """A data URL of the image: bytes as they are, a PIL image as PNG; ValueError for unknown bytes."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        data, mime = buf.getvalue(), "image/png"
    else:
        data = bytes(image)
        mime = image_mime(data)
        if mime is None:
            raise ValueError("image bytes are not PNG, JPEG or WebP")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _with_scheme(url: str) -> str:
    """http://host:port for 'host:port', the URL as is otherwise; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def public_url(url: str) -> str:
    """The URL without user:password@ (safe to print), and without a trailing slash.

    >>> public_url("http://user:secret@host:23333/")
    'http://host:23333'
    """
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def first_token_top(choice: dict) -> dict[str, float]:
    """{token text: log-prob} of the first generated token's top candidates (equal texts merged)."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if not content:
        raise ValueError("the response has no logprobs (does the server support logprobs/top_logprobs?)")
    top: dict[str, float] = {}
    for cand in content[0].get("top_logprobs") or [content[0]]:
        token, lp = cand["token"], float(cand["logprob"])
        # Two ids can decode to one text (e.g. byte fragments): their probabilities add up.
        top[token] = lp if token not in top else max(lp, top[token]) + math.log1p(math.exp(-abs(lp - top[token])))
    return top


class _PairFailed(Exception):
    """The server refused one request (a 4xx other than 401/403/408/429): the pair gets an error row."""


@dataclass
class _Endpoint:
    url: str  # as given, used for requests (may hold credentials)
    name: str  # public_url(url), for messages
    slots: asyncio.Semaphore
    busy: int = 0  # requests assigned: in flight or waiting for a slot


@dataclass
class _Session:
    """What one sync call shares: its HTTP client, the endpoints' slots, tries per request."""

    client: httpx.AsyncClient
    eps: list[_Endpoint]
    tries: int


class ServerJudge:
    """Judge through one or several OpenAI-compatible servers (LMDeploy's api_server, JudgeServer).

    Each pair costs two requests. The S request asks the paper's exact question, whose answer
    is just "yes"/"no", with `max_tokens: 1` and the first token's `top_logprobs`: S is the yes
    share of the yes/no mass among those candidates (`score_from_logprobs`). A free reason cannot
    come from that question (its greedy answer is one word), and asking another question for S
    would change S; so when `reason_tokens > 0` a second request asks `reason_question` for a
    short greedy explanation. Both requests use temperature 0.

    At most `concurrency` requests are in flight per endpoint, each request going to the
    least-busy endpoint. Connection errors, timeouts, 408, 429 and 5xx are retried with
    exponential backoff and jitter (on another endpoint when there are several); after `retries`
    tries of one request `score` raises JudgeServerError and cancels the rest of the batch. A
    400-class refusal of one pair (e.g. an undecodable image) gives that pair a JudgeResult
    with `error` set and the batch goes on; 401/403 (API key) raise JudgeServerError at once.

    The API key is read from the environment variable `api_key_env` at each call and is never
    kept on the object. Proxy variables (HTTP_PROXY...) are ignored: judge servers are internal.
    """

    def __init__(
        self,
        endpoints: list[str] | str,
        model: str | None = None,
        concurrency: int = 64,
        timeout_s: float = 120,
        retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        reason_tokens: int = 64,
        top_logprobs: int = 20,
        api_key_env: str = "JANUS_JUDGE_API_KEY",
    ):
        """`endpoints`: base URLs such as http://host:23333; `model`: the served name (None: ask the first).

        `concurrency`: requests in flight per endpoint; `retries`: tries per request, the first
        included; `timeout_s`: per connect/read/write; `top_logprobs`: candidates S is read from.
        """
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not endpoints:
            raise ValueError("ServerJudge needs at least one endpoint")
        self._urls = [_with_scheme(u) for u in endpoints]
        self.endpoints = [public_url(u) for u in self._urls]
        self.model = model
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.reason_tokens = reason_tokens
        if not 1 <= top_logprobs <= 20:
            raise ValueError("top_logprobs must be in [1, 20] (the OpenAI and LMDeploy limit)")
        self.top_logprobs = top_logprobs
        self.api_key_env = api_key_env

    def __repr__(self) -> str:
        return (
            f"ServerJudge(endpoints={self.endpoints!r}, model={self.model!r}, concurrency={self.concurrency}, "
            f"retries={self.retries}, reason_tokens={self.reason_tokens})"
        )

    @property
    def model_id(self) -> str:
        """'server:' + the served model name, for manifests (asks the server when not given)."""
        if self.model is None:
            self._run(self._session(self._resolve_model, tries=2))
        return f"server:{self.model}"

    # ------------------------------------------------------------------ public API

    def check(self) -> None:
        """GET /v1/models of every endpoint (two quick tries each): raise JudgeServerError if one is down."""
        self._run(self._session(self._check, tries=2, timeout_s=min(self.timeout_s, 10.0)))

    def score(self, prompts: list[str], images: list[Image.Image | bytes]) -> list[JudgeResult]:
        """One JudgeResult per (prompt, image), in order."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        return self._run(self._session(lambda s: self._score(s, prompts, images)))

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _run(coro: Awaitable):
        """Run a coroutine to completion from sync code (in a helper thread inside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        out: dict = {}

        def target():
            try:
                out["value"] = asyncio.run(coro)
            except BaseException as err:
                out["error"] = err

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    async def _session(self, fn, tries: int | None = None, timeout_s: float | None = None):
        """`await fn(session)` with a fresh AsyncClient and per-endpoint slots."""
        headers = {}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        slots = self.concurrency * len(self._urls)
        limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
        eps = [
            _Endpoint(u, n, asyncio.Semaphore(self.concurrency))
            for u, n in zip(self._urls, self.endpoints, strict=True)
        ]
        async with httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s or self.timeout_s), limits=limits, trust_env=False
        ) as client:
            return await fn(_Session(client, eps, tries or self.retries))

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(max, base * 2^attempt)."""
        delay = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        return random.uniform(delay / 2, delay)

    def _error(self, what: str, tried: list[str], last: str) -> JudgeServerError:
        where = ", ".join(dict.fromkeys(tried))
        return JudgeServerError(
            one_line(f"judge server {what} failed after {len(tried)} tries on {where}: {last}"),
            hint="start `lmdeploy serve api_server <InternVL checkpoint> --server-port 23333` "
            "or check --endpoint and that the server is up",
        )

    async def _call(self, session: _Session, method: str, path: str, payload=None, eps: list | None = None):
        """One request with retries over endpoints; the JSON body, or _PairFailed / JudgeServerError."""
        eps = eps or session.eps
        tried: list[str] = []
        last, avoid = "", None
        for attempt in range(session.tries):
            choices = [e for e in eps if e is not avoid] or eps
            ep = min(choices, key=lambda e: e.busy)
            tried.append(ep.name)
            ep.busy += 1
            try:
                async with ep.slots:
                    resp = await session.client.request(method, ep.url + path, json=payload)
                if resp.status_code == 200:
                    return resp.json()
                message = _error_message(resp)
                if resp.status_code in (401, 403):
                    raise JudgeServerError(
                        one_line(f"judge server {ep.name} refused the request: HTTP {resp.status_code} {message}"),
                        hint=f"set {self.api_key_env} to the key the server was started with (--api-keys)",
                    )
                if resp.status_code not in _RETRY_STATUS and resp.status_code < 500:
                    raise _PairFailed(one_line(f"HTTP {resp.status_code} from {ep.name}: {message}"))
                last = f"HTTP {resp.status_code} {message}"
            except (httpx.TransportError, ValueError) as err:  # ValueError: a 200 whose body is not JSON
                last = f"{type(err).__name__}: {one_line(err)}"
            finally:
                ep.busy -= 1
            avoid = ep if len(eps) > 1 else None
            if attempt + 1 < session.tries:
                await asyncio.sleep(self._backoff(attempt))
        raise self._error(f"{method} {path}", tried, last)

    async def _resolve_model(self, session: _Session) -> None:
        if self.model is None:
            self.model = await self._served_model(session, session.eps[0])

    async def _served_model(self, session: _Session, ep: _Endpoint) -> str:
        try:
            body = await self._call(session, "GET", "/v1/models", eps=[ep])
            return str(body["data"][0]["id"])
        except (_PairFailed, KeyError, IndexError, TypeError) as err:
            raise JudgeServerError(
                one_line(f"{ep.name}/v1/models did not list a model: {err}"),
                hint="is --endpoint an OpenAI-compatible server (lmdeploy serve api_server)?",
            ) from err

    async def _check(self, session: _Session) -> None:
        eps = session.eps
        names = await _gather_or_cancel(self._served_model(session, ep) for ep in eps)
        if self.model is None:
            self.model = names[0]
        wrong = [f"{ep.name} serves '{n}'" for ep, n in zip(eps, names, strict=True) if n != self.model]
        if wrong:
            raise JudgeServerError(
                f"judge servers disagree on the model: expected '{self.model}' but {'; '.join(wrong)}",
                hint="point every --endpoint at a server of the same checkpoint",
            )

    def _payload(self, question: str, url: str, max_tokens: int, logprobs: bool) -> dict:
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": text_after_image(question)},
                    ],
                }
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return body

    async def _pair(self, session: _Session, gate: asyncio.Semaphore, prompt: str, image) -> JudgeResult:
        async with gate:  # bounds the encoded images held at once
            try:
                url = await asyncio.to_thread(data_url, image)
            except Exception as err:
                return JudgeResult(None, None, "", False, error=one_line(f"cannot encode the image: {err}"))
            path = "/v1/chat/completions"
            calls = [self._call(session, "POST", path, self._payload(consistency_question(prompt), url, 1, True))]
            if self.reason_tokens > 0:
                reason = self._payload(reason_question(prompt), url, self.reason_tokens, False)
                calls.append(self._call(session, "POST", path, reason))
            try:
                bodies = await _gather_or_cancel(calls)
                s = score_from_logprobs(first_token_top(bodies[0]["choices"][0]))
                text = bodies[1]["choices"][0]["message"]["content"] if len(bodies) > 1 else ""
            except (_PairFailed, ValueError, KeyError, IndexError, TypeError) as err:
                return JudgeResult(None, None, "", False, error=one_line(err))
            return JudgeResult(s, None if s is None else answer_of(s), (text or "").strip(), s is None)

    async def _score(self, session: _Session, prompts: list[str], images: list) -> list[JudgeResult]:
        await self._resolve_model(session)
        gate = asyncio.Semaphore(2 * self.concurrency * len(session.eps))
        return await _gather_or_cancel(self._pair(session, gate, p, im) for p, im in zip(prompts, images, strict=True))


def _error_message(resp: httpx.Response) -> str:
    """The OpenAI-style error message of a response, else the start of its body."""
    try:
        err = resp.json().get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return one_line(message or resp.text or resp.reason_phrase, 200)


async def _gather_or_cancel(coros: Iterable[Awaitable]) -> list:
    """Results of all coroutines in order; on the first exception cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
