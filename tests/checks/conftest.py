"""Fixtures and helpers for the feature-check tests.

Everything here is real: HTTP services on 127.0.0.1 with random ports, the `postdeploy` CLI
and daemon in subprocesses, a rollback hook that is a real executable script, and (in
`test_prometheus.py`) a real Prometheus. The daemon's stdout is a pipe, so it logs one JSON
object per line; `Daemon.wait_for` blocks until a matching line arrives. Tests synchronise on
those lines and on files appearing, never on bare sleeps.

This directory is self-contained (pytest runs with --import-mode=importlib): nothing here is
imported from another test directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from support.toml import render_toml

DEADLINE_S = 30.0  # generous: only reached when something is wrong

# Window settings that keep a test to a second or two (the test modules explain how they
# stay robust on a loaded machine: long windows for DEGRADED, a later first tick for HEALTHY).
FAST: dict[str, Any] = {
    "window_s": 1.2,
    "interval_s": 0.2,
    "initial_delay_s": 0.1,
    "probe_timeout_s": 0.15,
    # These tests are about feature checks: a health probe or 5xx path that times out on a
    # loaded machine must not decide the verdict, so the health and 5xx rules are out of
    # reach unless a test sets them.
    "fail_threshold": 1000,
    "fivexx_threshold": 1.0,
    "min_samples": 4,
    "verify_ticks": 0,
}


# -- a small HTTP service whose every path the test scripts ---------------------------------


@dataclass
class Request:
    """One request the service received."""

    method: str
    path: str  # with its query string, as sent
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What a route answers: a JSON body for dicts and lists, text for str, raw for bytes."""

    code: int = 200
    body: Any = None
    content_type: str | None = None
    delay_s: float = 0.0  # sleep before answering (a slow endpoint)


# A route gets the number of this request to its path (1 for the first) and the request.
Route = Callable[[int, Request], Reply]


@dataclass
class _State:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, dict(self.headers.items()), body)
        path = urlsplit(self.path).path  # routes and hit counts ignore the query string
        state = self.server.state
        with state.lock:
            state.requests.append(request)
            hit = state.hits[path] = state.hits.get(path, 0) + 1
            route = state.routes.get(path)
        reply = route(hit, request) if route else Reply(404, {"error": "no such route"})
        if reply.delay_s:
            time.sleep(reply.delay_s)
        data, kind = _encode(reply)
        try:
            self.send_response(reply.code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the prober gave up (its timeout): nothing to answer

    do_GET = do_POST = do_HEAD = _handle


def _encode(reply: Reply) -> tuple[bytes, str]:
    if isinstance(reply.body, bytes):
        return reply.body, reply.content_type or "application/octet-stream"
    if isinstance(reply.body, str):
        return reply.body.encode(), reply.content_type or "text/plain; charset=utf-8"
    data = json.dumps(reply.body if reply.body is not None else {}, ensure_ascii=False)
    return data.encode(), reply.content_type or "application/json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a prober hanging up mid-answer is not news here


class Service:
    """A threaded HTTP server on a random 127.0.0.1 port; `/health` says ok by default.

    Routes answer with `service.Reply(...)` (the class is reachable from the fixture, since
    test modules cannot import this conftest under --import-mode=importlib).
    """

    Reply = Reply

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State()
        self.route("/health", lambda _n, _r: Reply(200, {"status": "ok"}))
        # A short poll interval makes stop() (shutdown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def route(self, path: str, handler: Route) -> None:
        """Answer `path` with `handler` from now on."""
        with self._server.state.lock:
            self._server.state.routes[path] = handler

    def hits(self, path: str) -> int:
        with self._server.state.lock:
            return self._server.state.hits.get(path, 0)

    def requests(self, path: str | None = None) -> list[Request]:
        """The requests received so far (to `path`, query string ignored, if given)."""
        with self._server.state.lock:
            every = list(self._server.state.requests)
        return [r for r in every if path is None or urlsplit(r.path).path == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.stop()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (a port bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """`write_config(repos, **defaults)`: write the daemon's config (FAST window settings
    under the given overrides; state_dir `state` next to it) and return its path."""

    def write(repos: dict[str, dict[str, Any]], **defaults: Any) -> Path:
        data: dict[str, Any] = {
            "state_dir": "state",
            "defaults": {**FAST, **defaults},
            "daemon": {"rescan_interval_s": 0.5},
            "repos": repos,
        }
        path = tmp_path / "config.toml"
        path.write_text(render_toml(data), encoding="utf-8")
        return path

    return write


# -- the daemon -----------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would change the daemon's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTDEPLOY_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postdeploy", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=child_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def postdeploy_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`postdeploy_cli(*args, cwd=PATH)`: run `python -m postdeploy ARGS...`, output captured."""
    return _cli


def _matches(line: dict[str, Any], event: str, fields: dict[str, Any]) -> bool:
    return line.get("event") == event and all(line.get(k) == v for k, v in fields.items())


class Daemon:
    """One `postdeploy run` process and the JSON log lines it printed."""

    def __init__(self, config_path: Path, **env: str) -> None:
        self.config_path = config_path
        self.state = config_path.parent / "state"
        self._stderr_path = config_path.parent / "daemon.stderr"
        self._stderr = self._stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postdeploy", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=config_path.parent,
            env=child_env(**env),
        )
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                line = {"event": None, "_raw": text}
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def tail(self, n: int = 30) -> str:
        with self._cond:
            shown = [json.dumps(line, ensure_ascii=False) for line in self.lines[-n:]]
        err = self._stderr_path.read_text(errors="replace")[-3000:]
        return "\n".join(shown) + ("\n--- stderr ---\n" + err if err.strip() else "")

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [line for line in self.lines if _matches(line, event, fields)]

    def wait_for(self, event: str, timeout: float = DEADLINE_S, **fields: Any) -> dict[str, Any]:
        """The first line with this event name and these field values; waits for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if _matches(line, event, fields):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        why = "the daemon exited" if self.eof else f"no such line within {timeout:g}s"
        raise AssertionError(f"waiting for {event} {fields}: {why}\n{self.tail()}")

    def arm(self, repo: str, work_item: str) -> Path:
        """What a deploy script does: `mkdir -p STATE/REPO/ITEM && touch .../armed`."""
        directory = self.state / repo / work_item
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "armed").write_text("")
        return directory

    def finished(self, repo: str, work_item: str) -> dict[str, Any]:
        """Wait for the window's `window.finished` line; returns it."""
        return self.wait_for("window.finished", repo=repo, work_item=work_item)

    def done(self, repo: str, work_item: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / repo / work_item / "done").read_text())
        return data

    def rows(self, repo: str, work_item: str) -> list[dict[str, Any]]:
        path = self.state / repo / work_item / "series.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line the daemon is still appending: read it next time
        return rows

    def report(self, repo: str, work_item: str) -> str:
        return (self.state / repo / work_item / "report.md").read_text(encoding="utf-8")

    def wait_rows(
        self,
        repo: str,
        work_item: str,
        until: Callable[[list[dict[str, Any]]], bool],
        what: str,
        timeout: float = DEADLINE_S,
    ) -> list[dict[str, Any]]:
        """Poll the window's series until `until(rows)` holds (files have no log line)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(repo, work_item)
            if until(rows):
                return rows
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"timed out waiting for {what}: {rows}\n{self.tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Daemon]]:
    """Start `postdeploy run` on a config (extra keyword args go to its environment) and wait
    for `daemon.ready`; every daemon started is stopped after the test."""
    daemons: list[Daemon] = []

    def start(config_path: Path, **env: str) -> Daemon:
        daemon = Daemon(config_path, **env)
        daemons.append(daemon)
        daemon.wait_for("daemon.ready")
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


# -- a rollback hook that counts its runs ---------------------------------------------------

HOOK = """\
#!{python}
\"\"\"Rollback hook for the tests: appends one line per run to the file named by argv[1].\"\"\"
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(os.environ.get("POSTDEPLOY_REPO", "?") + "\\n")
"""


class Hook:
    """A rollback hook (a real executable script) that counts its runs in a file."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        script = tmp_path / "hook.py"
        if not script.exists():
            script.write_text(HOOK.format(python=sys.executable))
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
        self.calls = tmp_path / f"hook-{name}.calls"
        self.argv = [str(script), str(self.calls)]

    @property
    def runs(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


@pytest.fixture
def make_hook(tmp_path: Path) -> Callable[[str], Hook]:
    """`make_hook(name)`: a fresh counting hook."""
    return lambda name: Hook(tmp_path, name)


# -- a real Prometheus ----------------------------------------------------------------------

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
  evaluation_interval: 500ms
scrape_configs:
  - job_name: shop
    static_configs:
      - targets: ["{target}"]
"""


class ErrorCounter:
    """The target's `errors_total` counter: while `failing`, each scrape finds 5 more."""

    def __init__(self) -> None:
        self.failing = False
        self.value = 0

    def scrape(self, _hit: int, _request: Request) -> Reply:
        if self.failing:
            self.value += 5
        text = (
            "# HELP errors_total Requests that failed.\n"
            "# TYPE errors_total counter\n"
            f"errors_total {self.value}\n"
        )
        return Reply(200, text, "text/plain; version=0.0.4; charset=utf-8")


class Prometheus:
    """A `prometheus` process on a loopback port, scraping `target`'s /metrics."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.target = Service()
        self.errors = ErrorCounter()
        self.target.route("/metrics", self.errors.scrape)
        config = folder / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(target=self.target.url.removeprefix("http://")))
        self.log_path = folder / "prometheus.log"
        self.client = httpx.Client(trust_env=False, timeout=5.0)
        self.proc: subprocess.Popen[bytes] | None = None
        for attempt in range(3):  # the free port we picked may be taken before it binds
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={folder / f'data-{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_ready():
                return
        raise AssertionError(f"prometheus did not start\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.client.get(f"{self.url}/-/ready").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready within {DEADLINE_S:g}s\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def query(self, promql: str) -> list[float]:
        """An instant query's sample values, asked directly (not through postdeploy)."""
        answer = self.client.get(f"{self.url}/api/v1/query", params={"query": promql})
        answer.raise_for_status()
        return [float(s["value"][1]) for s in answer.json()["data"]["result"]]

    def wait_for_data(self, promql: str) -> list[float]:
        """Query until the result holds a sample (the scrapes it needs have happened)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            values = self.query(promql)
            if values:
                return values
            if time.monotonic() > deadline:
                raise AssertionError(f"no data for {promql!r}\n{self.log_tail()}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self.target.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One real Prometheus for the module (it takes seconds to start and first scrape),
    already holding the target's `errors_total` series."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"))
    try:
        server.wait_for_data("errors_total")  # the first scrape happened
        yield server
    finally:
        server.close()
