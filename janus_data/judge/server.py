"""A small OpenAI-compatible judge server answering from an in-process `HFJudge` (stdlib only).

It speaks the subset of LMDeploy's `api_server` that `ServerJudge` uses, so the client is tested
(and can run) without LMDeploy:

- `POST /v1/chat/completions`, non-streaming. One user message whose content is one image part
  (`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`) and one text part;
  the text is the question after its `<image>\\n`, as LMDeploy's InternVL template expects.
  `max_tokens` (default 256), `logprobs`, `top_logprobs` (at most 20). Answers are always greedy:
  a `temperature` above 0 is rejected with 400 rather than silently ignored. `logprobs.content`
  holds the first generated token only (the one S is read from).
- `GET /v1/models`, `GET /health`.

Errors are 400 (401 for a missing or wrong API key) with an OpenAI-style body
`{"error": {"message", "type", "code"}}`; a request the judge itself fails on gets 500 and the
server keeps serving.

Micro-batching: handler threads decode the image and queue a job; one worker thread takes every
queued job (up to `max_batch`, waiting at most `batch_wait_s` for more) and answers them with one
`HFJudge.chat` call per group of equal (max_tokens, top_logprobs). While the model runs, new
requests queue up and form the next batch, so concurrent clients pay off as with LMDeploy's
continuous batching.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from janus_data.errors import one_line
from janus_data.judge.templates import with_image_first
from janus_data.judge.types import Answer

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 64 << 20


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type and code."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


@dataclass
class _Job:
    """One queued chat request and, once the worker is done, its answer or error."""

    question: str
    image: Image.Image
    max_tokens: int
    top_logprobs: int
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: RequestError | None = None


def decode_image(url: str) -> Image.Image:
    """The image of a `data:image/...;base64,` URL, fully decoded, or RequestError."""
    head, sep, data = url.partition(",")
    if not (sep and head.startswith("data:image/") and head.endswith(";base64")):
        raise RequestError("image_url must be a data:image/...;base64, URL", code="invalid_image")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise RequestError(f"cannot decode the image: {one_line(err)}", code="invalid_image") from err


def _int_field(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer in [{low}, {high}]", code=f"invalid_{name}")
    return value


def parse_chat(body: dict, model_name: str) -> _Job:
    """Validate a chat completion request and turn it into a job (question + decoded image)."""
    if body.get("model") != model_name:
        raise RequestError(
            f"model '{body.get('model')}' is not served here; use '{model_name}'", code="model_not_found"
        )
    if body.get("stream"):
        raise RequestError("stream=true is not supported", code="stream_unsupported")
    if body.get("n") not in (None, 1):
        raise RequestError("only n=1 is supported", code="invalid_n")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature > 0):
        raise RequestError("this judge server answers greedily: send temperature 0", code="invalid_temperature")
    max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, 4096)
    top = _int_field(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    logprobs = body.get("logprobs") is True
    if top and not logprobs:
        raise RequestError("top_logprobs needs logprobs: true", code="invalid_top_logprobs")
    messages = body.get("messages")
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)):
        raise RequestError("send exactly one user message", code="invalid_messages")
    if messages[0].get("role") != "user":
        raise RequestError("the message's role must be 'user'", code="invalid_messages")
    content = messages[0].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise RequestError("content must be a string or a list of parts", code="invalid_messages")
    texts = [p.get("text") for p in parts if p.get("type") == "text"]
    urls = [p.get("image_url") for p in parts if p.get("type") == "image_url"]
    if len(urls) != 1:
        raise RequestError(f"the judge needs exactly one image part, got {len(urls)}", code="invalid_image")
    if len(texts) != 1 or not isinstance(texts[0], str) or len(parts) != 2:
        raise RequestError("send one image part and one text part", code="invalid_messages")
    url = urls[0].get("url") if isinstance(urls[0], dict) else urls[0]
    if not isinstance(url, str):
        raise RequestError("image_url.url must be a string", code="invalid_image")
    # logprobs with top_logprobs 0 still reports the chosen token: greedy, so the top-1.
    return _Job(with_image_first(texts[0]), decode_image(url), max_tokens, max(top, 1) if logprobs else 0)


def _token_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def completion_body(answer: Answer, model_name: str, logprobs: bool, top_logprobs: int) -> dict:
    """The OpenAI chat.completion object of one answer."""
    lp = None
    if logprobs and answer.top:
        first = _token_entry(*answer.top[0])
        first["top_logprobs"] = [_token_entry(t, v) for t, v in answer.top[:top_logprobs]]
        lp = {"content": [first]}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "logprobs": lp,
                "finish_reason": answer.finish,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }


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

    def _fail(self, err: RequestError) -> None:
        self._send(err.status, {"error": {"message": str(err), "type": err.kind, "code": err.code}})

    def _authorized(self) -> bool:
        key = self.judge_server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        self._fail(RequestError("missing or wrong API key", 401, "authentication_error", "invalid_api_key"))
        return False

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            if self._authorized():
                name = self.judge_server.model_name
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "janus"}]})
        else:
            self._fail(RequestError(f"no route {self.path}", 404, code="not_found"))

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._fail(RequestError(f"Content-Length must be in [0, {MAX_BODY_BYTES}]", 413, code="invalid_length"))
            return
        raw = self.rfile.read(length)  # read before answering, so the connection stays usable
        if self.path != "/v1/chat/completions":
            self._fail(RequestError(f"no route {self.path}", 404, code="not_found"))
            return
        if not self._authorized():
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object", code="invalid_json")
            job = parse_chat(body, self.judge_server.model_name)
            answer = self.judge_server.submit(job)
        except json.JSONDecodeError as err:
            self._fail(RequestError(f"malformed JSON: {err}", code="invalid_json"))
        except RequestError as err:
            self._fail(err)
        except Exception as err:  # a bug: answer 500 rather than drop the connection
            log.exception("judge server: request failed")
            self._fail(RequestError(f"internal error: {one_line(err)}", 500, "server_error", "internal"))
        else:
            self._send(200, completion_body(answer, body["model"], job.top_logprobs > 0, body.get("top_logprobs") or 0))


class JudgeServer:
    """Serve an `HFJudge` over the OpenAI chat API; see the module docstring for the subset.

    >>> with JudgeServer(judge) as server:            # doctest: +SKIP
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
    ):
        """Bind `host:port` (0: a free port); `model_name` defaults to the judge's model id."""
        self.judge = judge
        self.model_name = model_name or judge.model_id
        self.api_key = api_key
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = threading.Event()
        handler = type("JudgeHandler", (_Handler,), {"judge_server": self})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._worker = threading.Thread(target=self._work, name="judge-worker", daemon=True)
        self._http_thread: threading.Thread | None = None
        self._serving = False  # httpd.serve_forever was called: stop() must shut it down

    def __repr__(self) -> str:
        return f"JudgeServer(url={self.url!r}, model_name={self.model_name!r}, max_batch={self.max_batch})"

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def submit(self, job: _Job) -> Answer:
        """Queue a job and wait for its answer (called by handler threads)."""
        if self._stopping.is_set():
            raise RequestError("the server is stopping", 503, "server_error", "stopping")
        self._jobs.put(job)
        while not job.done.wait(0.5):
            if not self._worker.is_alive():  # stopped after this job was queued
                raise RequestError("the server is stopping", 503, "server_error", "stopping")
        if job.error is not None:
            raise job.error
        return job.answer

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

    def _answer(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[int, int], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.max_tokens, job.top_logprobs), []).append(job)
        for (max_tokens, top), group in groups.items():
            try:
                answers = self.judge.chat([j.question for j in group], [j.image for j in group], max_tokens, top)
            except Exception as err:  # the judge failed on this group: 500 for it, keep serving
                log.exception("judge failed on a batch of %d", len(group))
                error = RequestError(f"judge failed: {one_line(err)}", 500, "server_error", "judge_failed")
                answers = [None] * len(group)
            else:
                error = None
            for job, answer in zip(group, answers, strict=True):
                job.answer, job.error = answer, error
                job.done.set()

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
                job.error = RequestError("the server is stopping", 503, "server_error", "stopping")
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
