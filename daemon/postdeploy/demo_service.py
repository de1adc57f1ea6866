"""A small HTTP service to watch, for `postdeploy demo` and the tests.

It serves `/health`, `/status`, `/queue` and `/feature`, and its behaviour is switched at run
time through `/admin/*`, so a demo or a test can make it "go bad" the way production does:
`/health` failing, 5xx on the other paths, or a broken feature while `/health` says ok.

    python -m postdeploy.demo_service serve --port 0      # prints its port
    python -m postdeploy.demo_service set URL health=fail # used as a rollback hook
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

GOOD: dict[str, Any] = {"health": "ok", "status_code": 200, "feature": "ok"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints its own story

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.snapshot()
        self.server.count(self.path)
        if self.path == "/health":
            code = 200 if state["health"] in ("ok", "degraded") else 503
            self._send(code, {"status": state["health"]})
        elif self.path in ("/status", "/queue"):
            self._send(state["status_code"], {"path": self.path})
        elif self.path == "/feature":
            items = [{"sku": "A-1"}, {"sku": "B-2"}] if state["feature"] == "ok" else []
            self._send(200, {"items": items})
        elif self.path == "/admin/state":
            self._send(200, state)
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/admin/state":
            self.server.update(body)
            self._send(200, self.server.snapshot())
        elif self.path == "/admin/restore":
            self.server.update(GOOD)
            self._send(200, self.server.snapshot())
        else:
            self._send(404, {"error": "not found"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self._lock = threading.Lock()
        self._state = dict(GOOD)
        self.hits: dict[str, int] = {}

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-request (a probe timing out) is not news here

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def update(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._state.update({k: v for k, v in values.items() if k in GOOD})

    def count(self, path: str) -> None:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1


class DemoService:
    """The service, run in a background thread of this process."""

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DemoService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set(self, **values: Any) -> None:
        self._server.update(values)

    def hits(self, path: str) -> int:
        with self._server._lock:
            return self._server.hits.get(path, 0)


def set_state(url: str, values: dict[str, Any]) -> dict[str, Any]:
    """POST new behaviour to a running service."""
    response = httpx.post(url.rstrip("/") + "/admin/state", json=values, timeout=5)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _value(text: str) -> Any:
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postdeploy.demo_service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve until interrupted; prints the URL")
    serve.add_argument("--port", type=int, default=0)
    change = sub.add_parser("set", help="change a running service's behaviour")
    change.add_argument("url")
    change.add_argument("values", nargs="+", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.command == "serve":
        service = DemoService(args.port)
        print(service.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            service._server.serve_forever()
        return 0
    values = dict(pair.split("=", 1) for pair in args.values)
    state = set_state(args.url, {k: _value(v) for k, v in values.items()})
    print(json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
