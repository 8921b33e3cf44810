"""The `lmdeploy` judge backend: (prompt, image) pairs and edits scored by LMDeploy's (or OpenAI-compatible) servers.

Works against `lmdeploy serve api_server <InternVL> --server-port 23333` (one or several, e.g. one
per GPU) and against `janus serve judge`, its stand-in. What is sent and why: janus_data/judge/wire.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

import httpx
from PIL import Image

from janus_data.errors import JudgeServerError, one_line
from janus_data.judge.protocol import CHAT_PATH, MODELS_PATH
from janus_data.judge.scoring import MAX_TOP_LOGPROBS, answer_of, score_from_logprobs
from janus_data.judge.serve import API_KEY_ENV
from janus_data.judge.templates import consistency_question, edit_question, edit_reason_question, reason_question
from janus_data.judge.types import EditJudgeResult, JudgeResult, open_edit_pair
from janus_data.judge.wire import (
    PROBE_PROMPT,
    REASON_SAMPLING,
    S_SAMPLING,
    chat_body,
    data_url,
    error_message,
    first_token_top,
    probe_image,
    public_url,
    unusable,
    with_scheme,
)

_RETRY_STATUS = {408, 429}
_START = "start `lmdeploy serve api_server <InternVL checkpoint> --server-port 23333` or check --endpoint"


class _PairFailed(Exception):
    """The server refused one request (a 4xx other than 401/403/408/429): the pair gets an error row."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
    """Judge through one or several LMDeploy api_servers (or `janus serve judge`).

    Each pair costs two requests (an edit four: S and reason for R_flw and R_psv, each request
    holding both images). The S request asks the paper's exact question with one new
    token and the first token's 20 candidates, sampling pinned so that they are the model's own
    (wire.py); S is the yes share of the yes/no mass among the chosen token and its
    `top_logprobs`. When `reason_tokens > 0` a second, greedy request asks `reason_question`.

    `check()` runs before any work: every endpoint must list the model and answer one real S
    request on a probe image with a usable distribution, else one JudgeServerError names the
    cause and the fix. At most `concurrency` requests are in flight per endpoint, each going to
    the least-busy endpoint. Connection errors, timeouts, 408, 429 and 5xx are retried with
    exponential backoff and jitter (on another endpoint when there are several); after
    `retries` tries of one request `score` raises JudgeServerError and cancels the batch. A
    4xx refusal of one pair gives it a JudgeResult with `error` set; when EVERY pair of a batch is
    refused (and two or more in a row, over calls), the fault is the server's, not the
    images': JudgeServerError.
    401/403 raise at once.

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
        top_logprobs: int = MAX_TOP_LOGPROBS,
        api_key_env: str = API_KEY_ENV,
    ):
        """`endpoints`: base URLs such as http://host:23333; `model`: the served name (None: the one listed).

        `concurrency`: requests in flight per endpoint; `retries`: tries per request, the first
        included; `timeout_s`: per connect/read/write; `top_logprobs`: candidates S is read from.
        """
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not endpoints:
            raise ValueError("ServerJudge needs at least one endpoint")
        self._urls = [with_scheme(u) for u in endpoints]
        self.endpoints = [public_url(u) for u in self._urls]
        self.model = model
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.reason_tokens = reason_tokens
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [1, {MAX_TOP_LOGPROBS}] (the OpenAI and LMDeploy limit)")
        self.top_logprobs = top_logprobs
        self.api_key_env = api_key_env
        self._refused_run = 0  # pairs refused in a row, over score() calls

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
        """Pre-flight: every endpoint lists the model and gives a usable S on a probe image, or JudgeServerError."""
        self._run(self._session(self._check, tries=2, timeout_s=self.timeout_s))

    def score(self, prompts: list[str], images: list[Image.Image | bytes]) -> list[JudgeResult]:
        """One JudgeResult per (prompt, image), in order."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        return self._run(self._session(lambda s: self._score(s, self._pair, list(zip(prompts, images, strict=True)))))

    def score_edits(
        self, instructions: list[str], originals: list[Image.Image | bytes], edited: list[Image.Image | bytes]
    ) -> list[EditJudgeResult]:
        """One EditJudgeResult per (instruction, original, edited), in order: S_flw and S_psv, each with its reason.

        Each question is one request holding both images, original first (wire.chat_body), its S
        read as `score` reads S. A pair whose image cannot be decoded gets an error result and
        costs no request.
        """
        if not len(instructions) == len(originals) == len(edited):
            raise ValueError(f"{len(instructions)} instructions, {len(originals)} originals, {len(edited)} edited")
        if not instructions:
            return []
        edits = list(zip(instructions, originals, edited, strict=True))
        return self._run(self._session(lambda s: self._score(s, self._edit, edits)))

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
            hint=f"{_START} and that the server is up",
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
                message = error_message(resp)
                if resp.status_code in (401, 403):
                    raise JudgeServerError(
                        one_line(f"judge server {ep.name} refused the request: HTTP {resp.status_code} {message}"),
                        hint=f"set {self.api_key_env} to the key the server was started with (--api-keys)",
                    )
                if resp.status_code not in _RETRY_STATUS and resp.status_code < 500:
                    raise _PairFailed(resp.status_code, one_line(f"HTTP {resp.status_code} from {ep.name}: {message}"))
                last = f"HTTP {resp.status_code} {message}"
            except (httpx.TransportError, ValueError) as err:  # ValueError: a 200 whose body is not JSON
                last = f"{type(err).__name__}: {one_line(err)}"
            finally:
                ep.busy -= 1
            avoid = ep if len(eps) > 1 else None
            if attempt + 1 < session.tries:
                await asyncio.sleep(self._backoff(attempt))
        raise self._error(f"{method} {path}", tried, last)

    # ------------------------------------------------------------------ model and pre-flight

    async def _served(self, session: _Session, ep: _Endpoint) -> list[str]:
        try:
            body = await self._call(session, "GET", MODELS_PATH, eps=[ep])
            names = [str(card["id"]) for card in body["data"]]
        except (_PairFailed, KeyError, TypeError) as err:
            raise JudgeServerError(
                one_line(f"{ep.name}{MODELS_PATH} did not list a model: {err}"),
                hint="is --endpoint an OpenAI-compatible server (lmdeploy serve api_server)?",
            ) from err
        if not names:
            raise JudgeServerError(f"{ep.name}{MODELS_PATH} lists no model", hint=_START)
        return names

    def _pick_model(self, ep: _Endpoint, names: list[str]) -> str:
        """The configured model if this endpoint serves it; else the one model it serves."""
        if self.model is not None:
            if self.model not in names:
                raise JudgeServerError(
                    f"judge server {ep.name} does not serve '{self.model}' (it serves: {', '.join(names)})",
                    hint="set --model to a served name, or point every --endpoint at a server of that checkpoint",
                )
            return self.model
        if len(names) > 1:
            raise JudgeServerError(
                f"judge server {ep.name} serves several models ({', '.join(names)})",
                hint="choose one with --model (score.model)",
            )
        return names[0]

    async def _resolve_model(self, session: _Session) -> None:
        if self.model is None:
            self.model = self._pick_model(session.eps[0], await self._served(session, session.eps[0]))

    async def _probe(self, session: _Session, ep: _Endpoint, url: str) -> None:
        """One real S request on the probe image: it must come back with a usable first-token distribution."""
        body = self._s_body(consistency_question(PROBE_PROMPT), url)
        try:
            answer = await self._call(session, "POST", CHAT_PATH, body, eps=[ep])
        except _PairFailed as err:
            if "logprobs_mode" in str(err):
                raise JudgeServerError(
                    f"judge server {ep.name} refuses logprobs: {err}",
                    hint="LMDeploy's PyTorch engine returns logprobs only when started with "
                    "--logprobs-mode raw_logprobs; restart it with that flag (or use --backend turbomind)",
                ) from err
            raise JudgeServerError(f"judge server {ep.name} refused the S probe request: {err}", hint=_START) from err
        try:
            top = first_token_top(answer["choices"][0])
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise JudgeServerError(
                f"judge server {ep.name} answers without first-token logprobs ({one_line(err)})",
                hint="S needs logprobs and top_logprobs: use lmdeploy serve api_server "
                "(the PyTorch engine with --logprobs-mode raw_logprobs)",
            ) from err
        problem = unusable(top)
        if problem:
            raise JudgeServerError(
                f"judge server {ep.name} gives no usable S: {problem}",
                hint="it ignores the request's temperature/top_k/top_p (sent: temperature 1, top_p 1, top_k 0); "
                "serve the judge with lmdeploy serve api_server and let any proxy pass these fields through",
            )

    async def _check(self, session: _Session) -> None:
        eps = session.eps
        served = await _gather_or_cancel(self._served(session, ep) for ep in eps)
        picked = [self._pick_model(ep, names) for ep, names in zip(eps, served, strict=True)]
        if len(set(picked)) > 1:
            raise JudgeServerError(
                f"judge servers disagree on the model: {', '.join(f'{e.name} serves {n!r}' for e, n in zip(eps, picked, strict=True))}",
                hint="point every --endpoint at a server of the same checkpoint, or set --model",
            )
        self.model = picked[0]
        url = await asyncio.to_thread(data_url, probe_image())
        await _gather_or_cancel(self._probe(session, ep, url) for ep in eps)

    # ------------------------------------------------------------------ scoring

    async def _ask(self, session: _Session, question: str, reason: str, urls: str | list[str]):
        """S of `question` about the image(s) at `urls`, and the answer to `reason`: (JudgeResult, refusal or None)."""
        calls = [self._call(session, "POST", CHAT_PATH, self._s_body(question, urls))]
        if self.reason_tokens > 0:
            body = chat_body(self.model, reason, urls, self.reason_tokens, REASON_SAMPLING)
            calls.append(self._call(session, "POST", CHAT_PATH, body))
        try:
            bodies = await _gather_or_cancel(calls)
        except _PairFailed as err:
            return JudgeResult(None, None, "", False, error=one_line(err)), err
        try:
            s = score_from_logprobs(first_token_top(bodies[0]["choices"][0]))
            text = bodies[1]["choices"][0]["message"]["content"] if len(bodies) > 1 else ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            return JudgeResult(None, None, "", False, error=one_line(err)), None
        return JudgeResult(s, None if s is None else answer_of(s), (text or "").strip(), s is None), None

    async def _pair(self, session: _Session, gate: asyncio.Semaphore, prompt: str, image):
        """(JudgeResult, the refusal when the server refused it)."""
        async with gate:  # bounds the encoded images held at once
            try:
                url = await asyncio.to_thread(data_url, image)
            except Exception as err:
                return JudgeResult(None, None, "", False, error=one_line(f"cannot encode the image: {err}")), None
            return await self._ask(session, consistency_question(prompt), reason_question(prompt), url)

    async def _edit(self, session: _Session, gate: asyncio.Semaphore, instruction: str, original, edited):
        """(EditJudgeResult, a refusal when the server refused either question)."""
        async with gate:
            try:
                await asyncio.to_thread(open_edit_pair, original, edited)
                urls = [await asyncio.to_thread(data_url, image) for image in (original, edited)]
            except Exception as err:
                return EditJudgeResult.failed(one_line(err)), None
            asked = [
                self._ask(session, edit_question(k, instruction), edit_reason_question(k, instruction), urls)
                for k in ("flw", "psv")
            ]
            (flw, refused), (psv, refused_psv) = await _gather_or_cancel(asked)
            return EditJudgeResult(flw, psv), refused or refused_psv

    def _s_body(self, question: str, urls: str | list[str]) -> dict:
        return chat_body(self.model, question, urls, 1, S_SAMPLING, self.top_logprobs)

    async def _score(self, session: _Session, judge_one, items: list[tuple]) -> list:
        """`judge_one(session, gate, *item)` for every item at once, in order; stops on whole-batch refusals."""
        await self._resolve_model(session)
        gate = asyncio.Semaphore(2 * self.concurrency * len(session.eps))
        pairs = await _gather_or_cancel(judge_one(session, gate, *item) for item in items)
        refusals = [refused for _, refused in pairs]
        # Consecutive refused pairs over calls, so that batches of one image are caught too.
        self._refused_run = self._refused_run + len(pairs) if all(refusals) else 0
        if all(refusals) and self._refused_run >= 2:
            statuses = sorted({r.status for r in refusals})
            raise JudgeServerError(
                f"the judge server refused all {len(pairs)} requests of a batch ({len(set(map(str, refusals)))} "
                f"distinct errors, HTTP {'/'.join(map(str, statuses))}; {self._refused_run} in a row), "
                f"e.g. {refusals[0]}",
                hint="a fault of the server or its flags (--session-len, --logprobs-mode, the model), not of "
                "the images; nothing of this batch was written",
            )
        return [result for result, _ in pairs]


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
