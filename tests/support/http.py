"""Real HTTP servers on 127.0.0.1 for the daemon to talk to: the services it watches and the
receivers its alerts go to.

One server, `HttpServer`, in a background thread on a random port: it records every request
(`Request`, with its arrival time) and answers each path through a route the test scripts.
Two faces of it:

- `Service`: a watched service. `/health` says ok until the test routes it otherwise; a path
  without a route answers 404. A route gets the number of this request to its path (1 for the
  first) and the request, and returns a `Reply` (or `HANG`: never answer).
- `Receiver`: an alert receiver (a webhook, the Telegram API). Every path is answered by one
  `responder(request) -> (code, headers, body)`; with `listening=False` its port is bound but
  connections are refused (a receiver that is down) until `up()`.

`free_port()` is a port that was free a moment ago (for a server started elsewhere).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from support.wait import DEADLINE_S, WaitTimeout

HANG = object()  # a route's answer meaning "never answer" (until the server stops)


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str  # with its query string, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What a route answers: a JSON body for dicts and lists (and None), text for str, raw for
    bytes. `content_type` None picks one by the body's type; "" sends none."""

    code: int = 200
    body: Any = None
    content_type: str | None = None
    delay_s: float = 0.0  # sleep before answering (a slow endpoint)
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        """The body's bytes and its Content-Type ("" for none)."""
        if isinstance(self.body, bytes):
            return self.body, _or(self.content_type, "application/octet-stream")
        if isinstance(self.body, str):
            return self.body.encode(), _or(self.content_type, "text/plain; charset=utf-8")
        data = json.dumps(self.body if self.body is not None else {}, ensure_ascii=False)
        return data.encode(), _or(self.content_type, "application/json")


def _or(value: str | None, default: str) -> str:
    return default if value is None else value


# A route: (the number of this request to its path, the request) -> a Reply, or HANG.
Route = Callable[[int, Request], "Reply | object"]
Response = tuple[int, dict[str, str], bytes]
Responder = Callable[[Request], "Response | object"]


def free_port() -> int:
    """A loopback port nothing listened on a moment ago (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body are two writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK of the headers (40 ms on Linux), added to every latency measured.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, self.path, headers, body, time.monotonic())
        owner = self.server.owner
        reply = owner._answer(request)
        if reply is HANG:
            owner.release.wait(120)
            self.close_connection = True
            return
        assert isinstance(reply, Reply), reply
        if reply.delay_s:
            time.sleep(reply.delay_s)
        data, kind = reply.encode()
        try:
            self.send_response(reply.code)
            if kind:
                self.send_header("Content-Type", kind)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer

    do_GET = do_POST = do_PUT = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Dozens of clients may connect at once (many windows' first tick): with socketserver's
    # backlog of 5 the kernel drops their SYNs, and a dropped SYN is retried only after 1 s.
    request_queue_size = 128
    owner: HttpServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request (a probe timing out) is not news here


class HttpServer:
    """A threaded HTTP server on a random 127.0.0.1 port that records every request and
    answers through routes (by path, query string ignored) or `fallback`."""

    def __init__(self, fallback: Route, *, listening: bool = True) -> None:
        self._fallback = fallback
        self._routes: dict[str, Route] = {}
        self._hits: dict[str, int] = {}
        self._requests: list[Request] = []
        self._cond = threading.Condition()
        self.release = threading.Event()  # lets HANGing answers go at stop()
        # The port is bound at once, so it never changes hands; listening may come later.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: _Server | None = None
        if listening:
            self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Start listening (and answering)."""
        server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._sock
        server.server_address = self._sock.getsockname()
        server.owner = self
        server.server_activate()  # listen()
        self._server = server
        # A short poll interval makes stop() (shutdown) quick.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def route(self, path: str, handler: Route) -> None:
        """Answer `path` with `handler` from now on."""
        with self._cond:
            self._routes[path] = handler

    def _answer(self, request: Request) -> Reply | object:
        path = urlsplit(request.path).path  # routes and hit counts ignore the query string
        with self._cond:
            self._requests.append(request)
            hit = self._hits[path] = self._hits.get(path, 0) + 1
            route = self._routes.get(path, self._fallback)
            self._cond.notify_all()
        return route(hit, request)

    def hits(self, path: str) -> int:
        with self._cond:
            return self._hits.get(path, 0)

    def requests(self, path: str | None = None) -> list[Request]:
        """The requests received so far (to `path`, query string ignored, if given)."""
        with self._cond:
            every = list(self._requests)
        return [r for r in every if path is None or urlsplit(r.path).path == path]

    snapshot = requests

    def by_key(self) -> dict[str, int]:
        """How many requests arrived per Idempotency-Key."""
        counts: dict[str, int] = {}
        for request in self.requests():
            key = request.headers.get("idempotency-key", "")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def wait_requests(
        self, n: int, path: str | None = None, timeout: float = DEADLINE_S
    ) -> list[Request]:
        """Block until at least `n` requests (to `path`, if given) arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := self.requests(path)) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    where = f" for {path}" if path else ""
                    raise WaitTimeout(f"fewer than {n} requests{where} within {timeout:g}s")
                self._cond.wait(remaining)
        return found

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._sock.close()

    close = stop


def _not_found(_hit: int, _request: Request) -> Reply:
    return Reply(404, {"error": "no such route"})


class Service(HttpServer):
    """A watched service: `/health` says ok by default; unrouted paths answer 404.

    `Service.Reply` is the answer type (reachable from a fixture's value, for test modules
    that do not import the kit).
    """

    Reply = Reply

    def __init__(self) -> None:
        super().__init__(_not_found)
        self.route("/health", lambda _n, _r: Reply(200, {"status": "ok"}))


def ok(_: Request) -> Response:
    """A receiver's default answer: 200 with an empty JSON object."""
    return 200, {"Content-Type": "application/json"}, b"{}"


def status(code: int) -> Responder:
    """A responder answering `code` with `{"ok": code == 200}` (a Telegram API's shape)."""
    body = json.dumps({"ok": code == 200}).encode()
    return lambda _: (code, {"Content-Type": "application/json"}, body)


class Receiver(HttpServer):
    """An alert receiver: every request is recorded and answered by `responder`."""

    def __init__(self, listening: bool = True, responder: Responder = ok) -> None:
        def answer(_hit: int, request: Request) -> Reply | object:
            response = responder(request)
            if response is HANG:
                return HANG
            assert isinstance(response, tuple), response
            code, headers, data = response
            headers = dict(headers)
            return Reply(code, data, headers.pop("Content-Type", ""), headers=headers)

        super().__init__(answer, listening=listening)
