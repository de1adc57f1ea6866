"""Helpers for the alert tests: real HTTP receivers on 127.0.0.1, events, waiting on events.

Test modules get them through the `kit` fixture (pytest runs with --import-mode=importlib, so
test files do not import this module by name).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from postdeploy.alerts import Outbox
from postdeploy.alerts.config import OutboxSettings
from postdeploy.events import Event
from postdeploy.layout import ItemKey

DEADLINE_S = 20.0
HANG = object()  # a responder's answer meaning "never answer" (until the receiver stops)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


Response = tuple[int, dict[str, str], bytes]
Responder = Callable[[Request], "Response | object"]


def ok(_: Request) -> Response:
    return 200, {"Content-Type": "application/json"}, b"{}"


@dataclass
class Receiver:
    """An HTTP server in a thread that records every request.

    It binds its port at once; with `listening=False` it does not listen yet, so connections
    are refused (a receiver that is down) until `up()`: the port never changes hands.
    """

    listening: bool = True
    responder: Responder = ok
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._server: ThreadingHTTPServer | None = None
        if self.listening:
            self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with receiver.lock:
                    receiver.requests.append(request)
                answer = receiver.responder(request)
                if answer is HANG:
                    receiver.release.wait(120)
                    self.close_connection = True
                    return
                assert isinstance(answer, tuple)
                code, headers, data = answer
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _handle
            do_GET = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self.sock
        server.server_address = self.sock.getsockname()
        server.daemon_threads = True
        server.server_activate()  # listen()
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self.sock.close()

    def snapshot(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def by_key(self) -> dict[str, int]:
        """How many requests arrived per Idempotency-Key."""
        counts: dict[str, int] = {}
        for request in self.snapshot():
            key = request.headers.get("idempotency-key", "")
            counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Make receivers; every one is stopped at the end of the test."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()


def event(
    kind: str = "window.degraded",
    *,
    repo: str = "shop",
    work_item: str = "release-1",
    reason: str = "health failed 3 consecutive probes (threshold 3); last: HTTP 503",
    seq: str = "",
    metadata: dict[str, str] | None = None,
) -> Event:
    return Event(
        kind=kind,
        key=ItemKey(repo, work_item),
        reason=reason,
        at=1795763584.0,
        status="DEGRADED" if kind == "window.degraded" else "",
        action_taken="",
        evidence={
            "health_streak": 3,
            "fail_threshold": 3,
            "fivexx": 0,
            "fivexx_total": 0,
            "fivexx_ratio": 0.0,
            "fivexx_threshold": 0.2,
            "last_probes": [
                {"tick": 2, "health_ok": False, "health_code": 503, "fivexx": 0, "detail": "x"}
            ],
        },
        metadata=metadata if metadata is not None else {"commit": "9ab03d1", "image": "shop:42"},
        seq=seq,
    )


def settings(**overrides: float) -> OutboxSettings:
    values: dict[str, float] = {"retry_initial_s": 0.05, "retry_max_s": 0.2, "max_age_s": 60.0}
    values.update(overrides)
    return OutboxSettings.model_validate(values)


def sinks(*tables: dict[str, Any]) -> list[Any]:
    """Sink configs, validated the way the config file's `[[alerts]]` tables are."""
    from pydantic import TypeAdapter

    from postdeploy.alerts.config import Sinks

    return TypeAdapter(Sinks).validate_python(list(tables))


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll `predicate` until it is true; fail the test with `what` at the deadline."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> None:
    """The blocking twin of `wait_for`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[Outbox]:
    """Run `outbox` for the body of the `async with` (opened inside the test)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.run)
        try:
            yield outbox
        finally:
            tg.cancel_scope.cancel()


def logged(logs: list[dict[str, Any]], name: str, **fields: Any) -> list[dict[str, Any]]:
    """The captured log entries called `name` whose fields include `fields`."""
    return [
        e for e in logs if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def outbox_dir(root: Path) -> Path:
    return root / ".outbox"


class Kit:
    """The helpers above, for test functions (the `kit` fixture)."""

    Receiver = Receiver
    HANG = HANG
    DEADLINE_S = DEADLINE_S
    event = staticmethod(event)
    settings = staticmethod(settings)
    sinks = staticmethod(sinks)
    wait_for = staticmethod(wait_for)
    wait_until = staticmethod(wait_until)
    running = staticmethod(running)
    logged = staticmethod(logged)
    outbox_dir = staticmethod(outbox_dir)
    ok = staticmethod(ok)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
