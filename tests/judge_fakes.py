"""Test doubles around a judge server: a fault-injecting proxy that can replay, a silent socket.

No sleeps decide an outcome: a stalled request is held until the test ends, a barrier holds the
first requests until enough have arrived, and a replayed answer does not wait on the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from janus_data.judge.server import QuietHTTPServer

# A fault for one chat POST: "drop" (close without answering), "stall" (never answer),
# "500", or (status, body dict) to answer with.
Fault = str | tuple[int, dict] | None


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90) if fmt == "JPEG" else image.save(buf, format=fmt)
    return buf.getvalue()


FIXTURES = Path(__file__).parent / "fixtures" / "lmdeploy"


def lmdeploy_fixture(name: str) -> dict:
    """One case of tests/fixtures/lmdeploy: a body made by LMDeploy 0.18.0's own classes."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


class Served:
    """A QuietHTTPServer on a free port, served from a thread inside `with`."""

    def _serve(self, handler) -> None:
        self.httpd = QuietHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Replay(Served):
    """Answers /v1/models with the chat body's model and every chat POST with one fixed body."""

    def __init__(self, chat: dict, status: int = 200):
        models = lmdeploy_fixture("models_list")["body"] | {"data": [{"id": chat.get("model", "m")}]}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.reply(200, models)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.reply(status, chat)

        self._serve(Handler)


class Proxy(Served):
    """An HTTP proxy in front of a judge server that counts chat POSTs and injects faults.

    - `faults(index, body) -> Fault` decides the fate of the index-th chat POST (0, 1, ...);
    - `rewrite(body) -> body` changes a chat request before it is forwarded;
    - `models`: a /v1/models body to answer instead of the upstream's;
    - `replay`: answers recorded by an earlier Proxy (its `recorded`), keyed by request bytes,
      given without asking the upstream, so that a timeout-based fault is the only slow thing;
    - `barrier`: the first `barrier` chat POSTs wait until that many are in flight at once.
    """

    def __init__(
        self,
        upstream: str,
        faults: Callable[[int, dict], Fault] | dict[int, Fault] | None = None,
        rewrite: Callable[[dict], dict] | None = None,
        models: dict | None = None,
        replay: dict[str, tuple[int, bytes]] | None = None,
        barrier: int = 0,
    ):
        self.upstream = upstream.removeprefix("http://")
        table = faults or {}
        self.fault = faults if callable(faults) else (lambda i, _body: table.get(i))
        self.rewrite, self.models, self.replay = rewrite, models, replay
        self.recorded: dict[str, tuple[int, bytes]] = {}
        self.posts = self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.released = threading.Event()  # set on exit: stalled requests end
        self.arrived = threading.Condition(self.lock)
        self.barrier = barrier
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models" and proxy.models is not None:
                    self.reply(200, json.dumps(proxy.models).encode())
                else:
                    self.forward(b"")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    index, proxy.posts = proxy.posts, proxy.posts + 1
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    proxy.arrived.notify_all()
                    if index < proxy.barrier:
                        proxy.arrived.wait_for(lambda: proxy.posts >= proxy.barrier, timeout=60)
                try:
                    body = json.loads(raw)
                    fault = proxy.fault(index, body)
                    if fault in ("drop", "stall"):
                        if fault == "stall":
                            proxy.released.wait()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif fault == "500":
                        self.reply(
                            500, b'{"object": "error", "message": "injected", "type": "server_error", "code": 500}'
                        )
                    elif isinstance(fault, tuple):
                        self.reply(fault[0], json.dumps(fault[1]).encode())
                    else:
                        if proxy.rewrite is not None:
                            raw = json.dumps(proxy.rewrite(body)).encode()
                        self.forward(raw)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def forward(self, raw: bytes):
                key = hashlib.sha1(self.path.encode() + raw).hexdigest()
                if proxy.replay is not None and key in proxy.replay:
                    self.reply(*proxy.replay[key])
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                resp = httpx.request(
                    self.command, f"http://{proxy.upstream}{self.path}", content=raw, headers=headers, timeout=600
                )
                if self.command == "POST":
                    proxy.recorded[key] = (resp.status_code, resp.content)
                self.reply(resp.status_code, resp.content)

            def reply(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._serve(Handler)

    def __exit__(self, *exc):
        self.released.set()
        super().__exit__(*exc)


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
