"""The operations harness: the real daemon in a subprocess, a fake systemd notify socket.

- `Daemon` runs `python -m postdeploy run --config ...` with its stdout in a file (as under
  systemd, where stdout is the journal stream) and waits for log lines by polling that file.
- `NotifySocket` is a unix datagram socket bound in the test's directory: pass its path as
  `$NOTIFY_SOCKET` and it collects what the daemon tells "systemd".
- `Ops` (fixture `ops`) ties them to a `DemoService` target and a config writer.

Everything synchronises on events (a datagram, a log line, a file), with generous deadlines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from postdeploy.demo_service import DemoService
from support.toml import render_toml

DEADLINE_S = 30.0  # only reached when something is wrong
POLL_S = 0.02

# Short windows: a whole window takes about a second.
FAST: dict[str, Any] = {
    "window_s": 1.0,
    "interval_s": 0.2,
    "initial_delay_s": 0.1,
    "probe_timeout_s": 0.15,
}

# Log events that are about one window: each line must carry `repo` and `work_item`.
WINDOW_EVENT_PREFIXES = ("window.", "rollback.", "probe", "series.", "intake.", "sentinel.rej")


# -- the notify socket ----------------------------------------------------------------------


class NotifySocket:
    """A fake systemd: a bound unix datagram socket collecting `KEY=VALUE` messages."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify.sock"
        self._own_dir: Path | None = None
        if len(str(path)) > 100:  # sun_path holds 108 bytes
            self._own_dir = Path(tempfile.mkdtemp(prefix="pdn-", dir="/tmp"))
            path = self._own_dir / "notify.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic arrival, fields)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[dict[str, str]], bool],
        after: int = 0,
        timeout: float = DEADLINE_S,
    ) -> int:
        """The index of the first message from `after` on that matches; waits for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if predicate(self.messages[i][1]):
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no matching notify message within {timeout:g}s; got {self.fields()}"
                    )
                self._cond.wait(remaining)

    def fields(self) -> list[dict[str, str]]:
        with self._cond:
            return [m for _, m in self.messages]

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)


# -- the daemon -----------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would change the daemon's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("POSTDEPLOY_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "CREDENTIALS_")
        )
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Daemon:
    """One `postdeploy run` process; its stdout goes to a file, read as JSON lines."""

    def __init__(
        self,
        config_path: Path,
        out_path: Path,
        env: dict[str, str] | None = None,
        journal: bool = False,
    ) -> None:
        self.out_path = out_path
        self.err_path = out_path.with_suffix(".err")
        self._out = out_path.open("wb")
        self._err = self.err_path.open("wb")
        extra = dict(env or {})
        if journal:  # stdout *is* the "journal stream": its device and inode, as systemd sets
            st = os.fstat(self._out.fileno())
            extra["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postdeploy", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            cwd=config_path.parent,
            env=child_env(extra),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def raw_lines(self) -> list[str]:
        """Complete lines printed so far (a line being written is left out)."""
        data = self.out_path.read_text(encoding="utf-8", errors="replace")
        return data.split("\n")[:-1]

    def text(self) -> str:
        """Everything printed so far, on stdout and stderr."""
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The complete lines so far, parsed; a line that is not JSON fails the test."""
        parsed = []
        for raw in self.raw_lines():
            text = re.sub(r"^<[0-7]>", "", raw)
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON log line: {raw!r}\n{self.tail()}") from None
            assert isinstance(value, dict), raw
            parsed.append(value)
        return parsed

    def tail(self, n: int = 40) -> str:
        out = "\n".join(self.raw_lines()[-n:])
        err = self.err_path.read_text(errors="replace")[-3000:]
        return out + ("\n--- stderr ---\n" + err if err.strip() else "")

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [line for line in self.lines() if _matches(line, event, fields)]

    def wait_for(self, event: str, timeout: float = DEADLINE_S, **fields: Any) -> dict[str, Any]:
        """The first line with this event and these field values; polls until it is there."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(event, **fields)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                found = self.find(event, **fields)
                if found:
                    return found[0]
                raise AssertionError(
                    f"waiting for {event} {fields}: the daemon exited ({self.proc.returncode})"
                    f"\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"waiting for {event} {fields}: timed out\n{self.tail()}")
            time.sleep(POLL_S)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send `sig` (None: none, it was sent already) and wait for the exit code."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit on {sig!r}\n{self.tail()}") from None
        finally:
            self._out.close()
            self._err.close()
        return code


def _matches(line: dict[str, Any], event: str, fields: dict[str, Any]) -> bool:
    return line.get("event") == event and all(line.get(k) == v for k, v in fields.items())


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


# -- a fake alert receiver ------------------------------------------------------------------


class Receiver:
    """A local HTTP server standing in for a webhook or the Telegram API: it records every
    request and answers with `code`."""

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(("POST", self.path, dict(self.headers), body))
                data = json.dumps({"ok": receiver.code == 200}).encode()
                self.send_response(receiver.code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the fixture ----------------------------------------------------------------------------


class Ops:
    """A state directory, a target service, a config writer and daemons, for one test."""

    def __init__(self, tmp_path: Path, service: DemoService) -> None:
        self.tmp = tmp_path
        self.service = service
        self.state = tmp_path / "state"
        self.config_path = tmp_path / "config.toml"
        self.daemons: list[Daemon] = []
        self.sockets: list[NotifySocket] = []
        self.receivers: list[Receiver] = []

    def repo(self, **overrides: Any) -> dict[str, Any]:
        """A `[repos.NAME]` table against the demo service, with fast window settings."""
        return {"base_url": self.service.url, "fivexx_paths": ["/status"], **FAST, **overrides}

    def write_config(self, repos: dict[str, dict[str, Any]] | None = None, **top: Any) -> Path:
        data: dict[str, Any] = {"state_dir": "state", "daemon": {"rescan_interval_s": 0.5}, **top}
        data["repos"] = repos if repos is not None else {"shop": self.repo()}
        self.config_path.write_text(render_toml(data), encoding="utf-8")
        return self.config_path

    def start(
        self, env: dict[str, str] | None = None, journal: bool = False, name: str = "daemon"
    ) -> Daemon:
        daemon = Daemon(self.config_path, self.tmp / f"{name}{len(self.daemons)}.out", env, journal)
        self.daemons.append(daemon)
        return daemon

    def notify_socket(self) -> NotifySocket:
        sock = NotifySocket(self.tmp)
        self.sockets.append(sock)
        return sock

    def receiver(self, code: int = 200) -> Receiver:
        receiver = Receiver(code)
        self.receivers.append(receiver)
        return receiver

    def item(self, repo: str, work_item: str) -> Path:
        return self.state / repo / work_item

    def arm(self, repo: str, work_item: str, metadata: dict[str, str] | None = None) -> Path:
        """Arm a window the way a deploy script does: mkdir, then write `armed`.

        The sentinel's mtime is then put a minute ahead: "a future mtime counts as now", so
        the window starts when the daemon takes it up. Windows here last a second, and the
        daemon may take a fresh sentinel up a rescan later (inotify starts after READY), so
        without this a test's tick counts would depend on how fast that was.
        """
        directory = self.item(repo, work_item)
        directory.mkdir(parents=True, exist_ok=True)
        armed = directory / "armed"
        armed.write_text(json.dumps(metadata) if metadata else "")
        ahead = time.time() + 60
        os.utime(armed, (ahead, ahead))
        return directory

    def rows(self, repo: str, work_item: str) -> list[dict[str, Any]]:
        """The window's `series.jsonl` rows."""
        path = self.item(repo, work_item) / "series.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    wait_until = staticmethod(wait_until)

    def wait_done(self, repo: str, work_item: str) -> dict[str, Any]:
        done = self.item(repo, work_item) / "done"
        wait_until(done.is_file, f"{done}")
        value: dict[str, Any] = json.loads(done.read_text())
        return value

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m postdeploy ARGS --config <this config>`."""
        return subprocess.run(
            [sys.executable, "-m", "postdeploy", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env=child_env({"COLUMNS": "120", **(env or {})}),
            check=False,
        )

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
        for sock in self.sockets:
            sock.close()
        for receiver in self.receivers:
            receiver.close()


@pytest.fixture
def service() -> Iterator[DemoService]:
    svc = DemoService().start()
    yield svc
    svc.stop()


@pytest.fixture
def ops(tmp_path: Path, service: DemoService) -> Iterator[Ops]:
    harness = Ops(tmp_path, service)
    yield harness
    harness.close()
