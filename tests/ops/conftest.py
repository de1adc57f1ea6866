"""The operations harness: the real daemon in a subprocess, a fake systemd notify socket.

The pieces are the shared kit's (`support.*`):

- `Daemon` (`support.daemon.DaemonProcess`) runs `python -m postdeploy run --config ...`;
  `start(journal=True)` makes its stdout the journal stream, as under systemd. Every stdout
  line is kept (`raw_lines()`), and one that is not JSON fails the test.
- `NotifySocket` (`support.notify`) is a unix datagram socket bound in the test's directory:
  pass its path as `$NOTIFY_SOCKET` and it collects what the daemon tells "systemd".
- `Receiver` (`support.http`) stands in for a webhook or the Telegram API.
- `Ops` (fixture `ops`) ties them to a `DemoService` target and a config writer.

Everything synchronises on events (a datagram, a log line, a file), with generous deadlines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postdeploy.demo_service import DemoService
from support.daemon import DaemonPool, DaemonProcess
from support.env import child_env
from support.http import Receiver, status
from support.notify import NotifySocket
from support.toml import render_toml
from support.wait import DEADLINE_S, wait_until
from support.workspace import Workspace

# Short windows: a whole window takes about a second.
FAST: dict[str, Any] = {
    "window_s": 1.0,
    "interval_s": 0.2,
    "initial_delay_s": 0.1,
    "probe_timeout_s": 0.15,
}

# Log events that are about one window: each line must carry `repo` and `work_item`.
WINDOW_EVENT_PREFIXES = ("window.", "rollback.", "probe", "series.", "intake.", "sentinel.rej")


# -- the pieces -----------------------------------------------------------------------------

# `ops.start()` returns one of these (`support.daemon`): its stdout lines are all kept, and a
# line that is not JSON fails the test.
Daemon = DaemonProcess


# -- the fixture ----------------------------------------------------------------------------


class Ops(Workspace):
    """A state directory, a target service, a config writer and daemons, for one test."""

    def __init__(self, tmp_path: Path, service: DemoService) -> None:
        super().__init__(tmp_path, service, DaemonPool(tmp_path, strict=True, keep_raw=True))
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
        """Start `postdeploy run` (not waiting for READY); with `journal`, its stdout is the
        journal stream (`$JOURNAL_STREAM` names it) and its lines carry `<N>` prefixes."""
        return self.daemons.start(self.config_path, env, ready=False, name=name, journal=journal)

    def notify_socket(self) -> NotifySocket:
        sock = NotifySocket(self.tmp)
        self.sockets.append(sock)
        return sock

    def receiver(self, code: int = 200) -> Receiver:
        """A fake webhook or Telegram API answering `code` to every request."""
        receiver = Receiver(responder=status(code))
        self.receivers.append(receiver)
        return receiver

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
        self.daemons.close()
        for sock in self.sockets:
            sock.close()
        for receiver in self.receivers:
            receiver.stop()


@pytest.fixture
def ops(tmp_path: Path, service: DemoService) -> Iterator[Ops]:
    harness = Ops(tmp_path, service)
    yield harness
    harness.close()
