"""The end-to-end harness: the real `postdeploy` CLI in subprocesses, a real HTTP target.

Each test gets a `Harness` (fixture `pd`) with its own state directory under `tmp_path`, a
`DemoService` on a random 127.0.0.1 port, and helpers to write the config, start the daemon
(`postdeploy run`), arm windows the way a deploy script would, and read what lands on disk.

The daemon's stdout is a pipe, so it logs one JSON object per line; a background thread
collects them, and `Run.wait_for(...)` blocks until a matching line arrives. Tests
synchronise on those lines and on files appearing, never on bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postdeploy.demo_service import DemoService
from support.daemon import DaemonPool, DaemonProcess
from support.env import child_env
from support.files import front_matter, read_jsonl
from support.toml import render_toml
from support.wait import DEADLINE_S, wait_until
from support.workspace import Workspace

# Window settings that keep a test to a second or two. Tests override per repo.
FAST: dict[str, Any] = {
    "window_s": 1.0,
    "interval_s": 0.2,
    "initial_delay_s": 0.1,
    "probe_timeout_s": 0.15,
    "fail_threshold": 3,
    "fivexx_threshold": 0.2,
    "min_samples": 4,
}

# Log events that are about one window; each must carry `repo` and `work_item`.
WINDOW_EVENT_PREFIXES = ("window.", "rollback.", "probe", "series.", "intake.")
WINDOW_EVENTS = {"sentinel.rejected", "event"}


# -- the daemon process ---------------------------------------------------------------------

# `pd.start()` returns one of these: `postdeploy run` and its log lines (`support.daemon`).
Run = DaemonProcess


# -- the rollback hook ----------------------------------------------------------------------

HOOK = """\
#!{python}
\"\"\"A rollback hook for the tests: appends one JSON line per run, then acts per its mode.\"\"\"
import json, os, signal, subprocess, sys, time

calls, mode = sys.argv[1], sys.argv[2]
record = {{k: v for k, v in os.environ.items() if k.startswith("POSTDEPLOY_")}}
record.update(argv=sys.argv[1:], pid=os.getpid(), ppid=os.getppid(),
              TARGET_SERVICE=os.environ.get("TARGET_SERVICE"),
              pgid=os.getpgid(0))
if mode == "hang":  # a background child in the same process group, then hang
    env = dict(os.environ, E2E_HOOK_TAG=calls)  # lets the teardown find it
    record["child"] = subprocess.Popen(["sleep", "60"], env=env).pid
with open(calls, "a") as f:
    f.write(json.dumps(record) + "\\n")
    f.flush()
    os.fsync(f.fileno())
if mode == "kill-parent":
    os.kill(os.getppid(), signal.SIGKILL)
if mode == "hang":
    time.sleep(60)
sys.exit(0 if mode in ("ok", "kill-parent") else 3)
"""


# -- the harness ----------------------------------------------------------------------------


class Harness(Workspace):
    """Everything one test needs: config, daemon runs, arming, and the files on disk."""

    def __init__(self, tmp_path: Path, service: DemoService) -> None:
        super().__init__(tmp_path, service, DaemonPool(tmp_path))
        self.calls = tmp_path / "hook-calls.jsonl"

    # -- config

    def repo(self, **overrides: Any) -> dict[str, Any]:
        """A `[repos.NAME]` table pointing at the demo service."""
        table: dict[str, Any] = {
            "base_url": self.service.url,
            "health_path": "/health",
            "fivexx_paths": ["/status", "/queue"],
        }
        table.update(overrides)
        return table

    def hook(self, mode: str = "ok") -> list[str]:
        """The argv of a rollback hook (a real executable script).

        `mode`: ok (exit 0), fail (exit 3), kill-parent (SIGKILL its parent, the daemon, then
        exit 0), hang (start a background `sleep 60` in its process group, then sleep).
        """
        path = self.tmp / "hook.py"
        if not path.exists():
            path.write_text(HOOK.format(python=sys.executable))
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return [str(path), str(self.calls), mode]

    def configure(
        self,
        repos: dict[str, dict[str, Any]] | None = None,
        *,
        defaults: dict[str, Any] | None = None,
        enabled: bool = True,
        log_level: str = "info",
    ) -> Path:
        """Write the config file (state_dir relative to it) and return its path."""
        data: dict[str, Any] = {
            "state_dir": "state",
            "enabled": enabled,
            "defaults": {**FAST, **(defaults or {})},
            "daemon": {"rescan_interval_s": 0.25, "log_level": log_level},
            "repos": repos if repos is not None else {"shop": self.repo()},
        }
        self.config_path.write_text(render_toml(data))
        return self.config_path

    # -- processes

    @property
    def runs(self) -> list[Run]:
        return self.daemons.runs

    def start(self, env: dict[str, str] | None = None) -> Run:
        """Start `postdeploy run` (with `env` added to its environment); wait for READY."""
        return self.daemons.start(self.config_path, env)

    def start_window(self, repo: str, work_item: str, rows: int = 1) -> Run:
        """Start the daemon, arm `repo/work_item` as a deploy script does (`touch_armed`) and
        wait until its series holds `rows` rows: a window open and being probed."""
        run = self.start()
        self.touch_armed(repo, work_item)
        self.wait_rows(repo, work_item, rows)
        return run

    def all_lines(self) -> list[dict[str, Any]]:
        return self.daemons.all_lines()

    def cli(
        self, *args: str, timeout: float = DEADLINE_S, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `postdeploy ARGS...` (with `env` added to its environment); capture its output."""
        return subprocess.run(
            [sys.executable, "-m", "postdeploy", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(env),
            cwd=self.tmp,
        )

    def close(self) -> None:
        """Kill what is left: daemons, and hooks (by the pids they recorded) that still run."""
        self.daemons.close()
        tag = str(self.calls).encode()
        for call in self.hook_calls():
            for pid in (call.get("pid"), call.get("child")):
                if not isinstance(pid, int):
                    continue  # a hook that started no child
                # Only a process that still names this test's calls file (the hook in its argv,
                # its child in its environment): pids get reused.
                with contextlib.suppress(OSError):
                    proc = Path(f"/proc/{pid}")
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    env = (proc / "environ").read_bytes().split(b"\0")
                    if tag in argv or b"E2E_HOOK_TAG=" + tag in env:
                        os.kill(pid, signal.SIGKILL)

    # -- arming

    def arm(self, repo: str, work_item: str, *meta: str) -> Path:
        """`postdeploy arm REPO ITEM --meta K=V...` (the real CLI); returns the `armed` path."""
        args = ["arm", repo, work_item, "--config", str(self.config_path)]
        for pair in meta:
            args += ["--meta", pair]
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        path = self.item(repo, work_item) / "armed"
        assert result.stdout.strip() == str(path)
        return path

    def touch_armed(self, repo: str, work_item: str, content: str = "") -> Path:
        """What a deploy script does: `mkdir -p DIR && echo CONTENT > DIR/armed`."""
        directory = self.item(repo, work_item)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "armed"
        path.write_text(content)
        return path

    # -- reading results

    def done(self, repo: str, work_item: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.item(repo, work_item) / "done").read_text())
        return data

    def report_front_matter(self, repo: str, work_item: str) -> dict[str, Any]:
        return front_matter((self.item(repo, work_item) / "report.md").read_text())

    def hook_calls(self) -> list[dict[str, Any]]:
        return read_jsonl(self.calls)

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
        """Poll `check` until it holds (for files, which have no log line of their own)."""
        wait_until(check, what, timeout, daemon=self.runs[-1] if self.runs else None)

    def wait_rows(self, repo: str, work_item: str, n: int) -> list[dict[str, Any]]:
        """Wait until the window's series holds at least `n` rows; returns them."""
        self.wait_until(
            f"{n} rows in {repo}/{work_item}", lambda: len(self.rows(repo, work_item)) >= n
        )
        return self.rows(repo, work_item)

    # -- checks

    @staticmethod
    def lines_missing_ids(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Log lines about a window that lack `repo` or `work_item`."""
        bad = []
        for line in lines:
            event = str(line.get("event") or "")
            about_window = event.startswith(WINDOW_EVENT_PREFIXES) or event in WINDOW_EVENTS
            has_one = "repo" in line or "work_item" in line
            if (about_window or has_one) and not (line.get("repo") and line.get("work_item")):
                bad.append(line)
        return bad

    @staticmethod
    def listing(path: Path) -> list[tuple[str, int, int]]:
        """Names, sizes and mtimes of everything below `path` (without following symlinks)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(path):
            for name in sorted(dirnames + filenames):
                st = (Path(dirpath) / name).lstat()
                out.append((str(Path(dirpath, name).relative_to(path)), st.st_size, st.st_mtime_ns))
        return sorted(out)


@pytest.fixture
def pd(tmp_path: Path, service: DemoService) -> Iterator[Harness]:
    harness = Harness(tmp_path, service)
    yield harness
    harness.close()
    # A promise of the contract for every test: each log line about a window names it.
    missing = harness.lines_missing_ids(harness.all_lines())
    assert not missing, "log lines about a window without repo/work_item:\n" + "\n".join(
        json.dumps(line) for line in missing[:10]
    )
