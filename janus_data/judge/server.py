"""`janus serve judge`: an in-process InternVL behind LMDeploy 0.18's api_server contract (stdlib HTTP only).

A faithful stand-in, so that what passes against it passes against `lmdeploy serve api_server`:
requests are validated and refused as LMDeploy does (janus_data/judge/protocol.py), each step's
logits are sampled and reported as the chosen engine does (janus_data/judge/engines.py):

- `--engine turbomind` (LMDeploy's default): logprobs for any request, computed after the
  request's temperature (0 becomes 1e-6), top-k, top-p and repetition penalty;
- `--engine pytorch`: logprobs only with `--logprobs-mode raw_logprobs|raw_logits`, taken from
  the raw logits; without it every logprobs request gets LMDeploy's 400.

Sampling is always on; unset fields take the server's `--generation-config` defaults, then
LMDeploy's (temperature 0.8, top_k 50). Every generated token gets its logprobs entry, the chosen
token outside `top_logprobs`, tokens as vocabulary pieces. Errors are LMDeploy's flat bodies;
an unknown model is a 404. `GET /v1/models`, `GET /health`.

What it does not do: streaming, n > 1, several messages per request, images by http URL. One
user message holds text and `image_url` data-URL parts in any order, rendered as LMDeploy's
InternVL template renders them (protocol.py): the edit judge's two images (original, edited)
arrive in one request.

Micro-batching: handler threads parse, decode and tile the images and queue a job; one worker
takes every queued job (up to `max_batch`, waiting at most `batch_wait_s` for more) and decodes
them as one ragged batch, so concurrent clients pay off as with LMDeploy's continuous batching.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from janus_data.errors import one_line
from janus_data.judge.engines import Sampling, merge_sampling, pytorch_step, turbomind_step
from janus_data.judge.protocol import (
    CHAT_PATH,
    DEFAULT_MAX_NEW_TOKENS,
    MODELS_PATH,
    ApiError,
    ChatRequest,
    chat_response,
    models_body,
    parse_chat,
    token_logprobs,
)
from janus_data.judge.serve import ENGINES, LOGPROBS_MODES

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20
STOPPING = "The inference engine is unavailable."


@dataclass
class _Job:
    """One queued chat request, its prompt ids and pixels, and, once answered, its body or error."""

    request: ChatRequest
    ids: list[int]
    pixels: torch.Tensor
    sampling: Sampling
    max_new_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    body: dict | None = None
    error: ApiError | None = None


def generation_defaults(judge, source: str) -> dict:
    """The server-side sampling defaults of `--generation-config`: 'auto' (the model's), 'lmdeploy' (none) or a path."""
    if source == "lmdeploy":
        return {}
    if source == "auto":
        return judge.model.generation_config.to_diff_dict()
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(source).to_diff_dict()


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that prints no traceback when a client hangs up."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hung up (a timeout, a retry) is routine: no traceback."""
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    server_version = "janus-judge"
    timeout = 300  # an idle keep-alive connection is dropped after this many seconds
    judge_server: JudgeServer  # set on the per-server subclass

    def log_message(self, format, *args):
        pass  # no per-request lines; JudgeServer logs one line per batch at debug level

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, err: ApiError) -> None:
        self._send(err.status, err.body())

    def _authorized(self) -> bool:
        """AuthenticationMiddleware: every /v1 path needs the Bearer key when the server has one."""
        key = self.judge_server.api_key
        if key is None or not self.path.startswith("/v1"):
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), key.encode()):
            return True
        self._fail(ApiError(401, "Unauthorized."))
        return False

    def do_GET(self):
        if not self._authorized():
            return
        if self.path == "/health":
            self._send(200, {"status": "healthy"})
        elif self.path == MODELS_PATH:
            self._send(200, models_body([self.judge_server.model_name]))
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._fail(ApiError(413, f"Content-Length must be in [0, {MAX_BODY_BYTES}]"))
            return
        raw = self.rfile.read(length)  # read before answering, so the connection stays usable
        if self.path != CHAT_PATH:
            self._send(404, {"detail": "Not Found"})
            return
        if not self._authorized():
            return
        try:
            if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                raise ApiError(400, "Unsupported Media Type: Only 'application/json' is allowed")
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ApiError(400, f"{err.pos}: JSON decode error") from err
            self._send(200, self.judge_server.answer(body))
        except ApiError as err:
            self._fail(err)
        except Exception as err:  # a bug: answer 500 rather than drop the connection
            log.exception("judge server: request failed")
            self._fail(ApiError(500, f"An internal server error occurred. ({one_line(err)})"))


class JudgeServer:
    """Serve an `HFJudge` as LMDeploy 0.18's api_server would serve it; see the module docstring.

    >>> with JudgeServer(judge, engine="pytorch", logprobs_mode="raw_logprobs") as server:  # doctest: +SKIP
    ...     ServerJudge([server.url]).score(prompts, images)
    """

    def __init__(
        self,
        judge,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        api_key: str | None = None,
        max_batch: int = 16,
        batch_wait_s: float = 0.005,
        engine: str = "turbomind",
        logprobs_mode: str | None = None,
        generation_config: dict | None = None,
        session_len: int | None = None,
    ):
        """Bind `host:port` (0: a free port); `model_name` defaults to the judge's model id.

        `generation_config`: server-side sampling defaults (as `--generation-config` loads them);
        `session_len`: longest prompt + answer in tokens (None: unbounded), as LMDeploy's.
        """
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        if logprobs_mode is not None and logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES} or None")
        self.judge = judge
        self.model_name = model_name or judge.model_id
        self.api_key = api_key
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self.engine = engine
        self.logprobs_mode = logprobs_mode if engine == "pytorch" else None
        self.generation_config = dict(generation_config or {})
        self.session_len = session_len
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._prep_lock = threading.Lock()  # one tokenizer, shared by handler threads and the worker
        handler = type("JudgeHandler", (_Handler,), {"judge_server": self})
        self._httpd = QuietHTTPServer((host, port), handler)
        self._worker = threading.Thread(target=self._work, name="judge-worker", daemon=True)
        self._http_thread: threading.Thread | None = None
        self._serving = False  # httpd.serve_forever was called: stop() must shut it down

    def __repr__(self) -> str:
        return (
            f"JudgeServer(url={self.url!r}, model_name={self.model_name!r}, engine={self.engine!r}, "
            f"logprobs_mode={self.logprobs_mode!r}, max_batch={self.max_batch})"
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ requests

    def answer(self, body) -> dict:
        """The response body of one chat request (called by handler threads), or ApiError."""
        request = parse_chat(body, [self.model_name], self.engine, self.logprobs_mode)
        with self._prep_lock:
            pixels, tiles = self.judge.preprocess(request.images)
            ids = self.judge.prompt_ids(request.texts, tiles)
        if self.session_len is not None and len(ids) >= self.session_len:
            raise ApiError(
                400, f"Input length ({len(ids)}) must be smaller than the model context length ({self.session_len})."
            )
        max_new = request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        if self.session_len is not None:
            max_new = min(max_new, self.session_len - len(ids))
        report = (request.top_logprobs or 1) if request.logprobs else 0
        sampling = merge_sampling(request.sampling, self.generation_config, report, request.seed)
        job = _Job(request, ids, pixels, sampling, max_new)
        if self._stopping.is_set():
            raise ApiError(503, STOPPING)
        self._jobs.put(job)
        while not job.done.wait(0.5):
            if not self._worker.is_alive():  # stopped after this job was queued
                raise ApiError(503, STOPPING)
        if job.error is not None:
            raise job.error
        return job.body

    def _step(self, job: _Job, logits: torch.Tensor, generated: list[int], step: int) -> tuple[int, dict[int, float]]:
        if self.engine == "turbomind":
            return turbomind_step(logits, job.sampling, job.ids + generated, step)
        return pytorch_step(logits, job.sampling, generated, step, self.logprobs_mode)

    def _decode(self, jobs: list[_Job]) -> None:
        """Answer `jobs` as one ragged batch: prefill, then sample step by step as the engine would."""
        judge = self.judge
        batch = judge.batch()
        logits = batch.append([j.ids for j in jobs], **judge.pixel_inputs(torch.cat([j.pixels for j in jobs])))
        sampled: list[list[int]] = [[] for _ in jobs]
        reported: list[list[dict[int, float]]] = [[] for _ in jobs]

        def choose(step: int, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
            for k, i in enumerate(rows):
                token, candidates = self._step(jobs[i], logits[k], sampled[i], step)
                sampled[i].append(token)
                reported[i].append(candidates)
            return torch.tensor([sampled[i][-1] for i in rows])

        stops = [set() if j.request.ignore_eos else judge.stop_ids for j in jobs]
        new = batch.decode(logits, [j.max_new_tokens for j in jobs], stops, choose)
        for job, ids, candidates, stop in zip(jobs, new, reported, stops, strict=True):
            finish = "stop" if ids and ids[-1] in stop else "length"
            tokens = ids[:-1] if finish == "stop" else ids  # LMDeploy leaves the stop token out
            with self._prep_lock:
                text = judge.tokenizer.decode(tokens, skip_special_tokens=True)
                lp = token_logprobs(judge.tokenizer, tokens, candidates) if job.request.logprobs and tokens else None
            job.body = chat_response(self.model_name, text, finish, lp, len(job.ids), len(tokens))

    def _answer(self, jobs: list[_Job]) -> None:
        try:
            with torch.inference_mode():
                self._decode(jobs)
        except Exception as err:  # the judge failed on this batch: 500 for it, keep serving
            log.exception("judge failed on a batch of %d", len(jobs))
            for job in jobs:
                job.error = ApiError(500, f"An internal server error occurred. ({one_line(err)})")
        for job in jobs:
            job.done.set()

    # ------------------------------------------------------------------ worker and lifecycle

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` plus whatever else is queued or arrives within batch_wait_s, up to max_batch."""
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # stop: answer what we hold, then the worker loop sees the flag
                break
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        while not self._stopping.is_set():
            first = self._jobs.get()
            if first is None:
                continue
            jobs = self._gather(first)
            t0 = time.perf_counter()
            self._answer(jobs)
            log.debug("judge server: batch of %d in %.3f s", len(jobs), time.perf_counter() - t0)
        while True:  # fail whatever is still queued
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.error = ApiError(503, STOPPING)
                job.done.set()

    def start(self) -> JudgeServer:
        """Serve in background threads; returns self."""
        self._worker.start()
        self._serving = True
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, name="judge-http", daemon=True)
        self._http_thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then stop."""
        self._worker.start()
        self._serving = True
        try:
            self._httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting requests, fail queued ones with 503, close the socket."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._jobs.put(None)
        if self._serving:
            self._httpd.shutdown()  # returns at once when serve_forever has already returned
        if self._http_thread is not None:
            self._http_thread.join()
        self._httpd.server_close()
        if self._worker.is_alive():
            self._worker.join()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
