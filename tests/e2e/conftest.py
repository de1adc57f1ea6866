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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from postdeploy.demo_service import DemoService
from support.toml import render_toml

DEADLINE_S = 30.0  # generous: only reached when something is wrong

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


def _child_env() -> dict[str, str]:
    """This process's environment without anything that would change the daemon's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTDEPLOY_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Run:
    """One `postdeploy run` process and the log lines it printed."""

    def __init__(
        self, config_path: Path, stderr_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postdeploy", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=config_path.parent,
            env={**_child_env(), **(env or {})},
        )
        self.stderr_path = stderr_path
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                line = {"event": None, "_raw": text}
            if not isinstance(line, dict):
                line = {"event": None, "_raw": text}
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def tail(self, n: int = 40) -> str:
        with self._cond:
            shown = [json.dumps(line) for line in self.lines[-n:]]
        err = self.stderr_path.read_text(errors="replace")[-3000:]
        return "\n".join(shown) + ("\n--- stderr ---\n" + err if err.strip() else "")

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Every line so far with this event name and these field values."""
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
                if self.eof:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        why = "the daemon exited" if self.eof else f"no such line within {timeout:g}s"
        raise AssertionError(f"waiting for {event} {fields}: {why}\n{self.tail()}")

    def wait_ready(self) -> dict[str, Any]:
        return self.wait_for("daemon.ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send `sig` and wait for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit on {sig!r}\n{self.tail()}") from None
        self._reader.join(timeout)
        self._stderr.close()
        return code

    def kill(self) -> int:
        """SIGKILL: the daemon gets no chance to clean up."""
        return self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Kill the daemon if it still runs; release the pipe and the stderr file."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(DEADLINE_S)
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _matches(line: dict[str, Any], event: str, fields: dict[str, Any]) -> bool:
    return line.get("event") == event and all(line.get(k) == v for k, v in fields.items())


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


class Harness:
    """Everything one test needs: config, daemon runs, arming, and the files on disk."""

    def __init__(self, tmp_path: Path, service: DemoService) -> None:
        self.tmp = tmp_path
        self.service = service
        self.state = tmp_path / "state"
        self.config_path = tmp_path / "config.toml"
        self.calls = tmp_path / "hook-calls.jsonl"
        self.runs: list[Run] = []

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

    def start(self, env: dict[str, str] | None = None) -> Run:
        """Start `postdeploy run` (with `env` added to its environment); wait for READY."""
        run = Run(self.config_path, self.tmp / f"daemon-{len(self.runs)}.stderr", env)
        self.runs.append(run)
        run.wait_ready()
        return run

    def all_lines(self) -> list[dict[str, Any]]:
        return [line for run in self.runs for line in run.lines]

    def cli(
        self, *args: str, timeout: float = DEADLINE_S, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `postdeploy ARGS...` (with `env` added to its environment); capture its output."""
        return subprocess.run(
            [sys.executable, "-m", "postdeploy", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**_child_env(), **(env or {})},
            cwd=self.tmp,
        )

    def close(self) -> None:
        """Kill what is left: daemons, and hooks (by the pids they recorded) that still run."""
        for run in self.runs:
            run.close()
        tag = str(self.calls).encode()
        for call in self.hook_calls():
            for pid in (call.get("pid"), call.get("child")):
                # Only a process that still names this test's calls file (the hook in its argv,
                # its child in its environment): pids get reused.
                with contextlib.suppress(OSError):
                    proc = Path(f"/proc/{pid}")
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    env = (proc / "environ").read_bytes().split(b"\0")
                    if tag in argv or b"E2E_HOOK_TAG=" + tag in env:
                        os.kill(pid, signal.SIGKILL)

    # -- arming

    def item(self, repo: str, work_item: str) -> Path:
        return self.state / repo / work_item

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

    def rows(self, repo: str, work_item: str) -> list[dict[str, Any]]:
        path = self.item(repo, work_item) / "series.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def report_front_matter(self, repo: str, work_item: str) -> dict[str, Any]:
        text = (self.item(repo, work_item) / "report.md").read_text()
        assert text.startswith("---\n"), text[:200]
        front, sep, _body = text[4:].partition("\n---\n")
        assert sep, "report.md front matter is not closed by ---"
        data = yaml.safe_load(front)
        assert isinstance(data, dict)
        return data

    def hook_calls(self) -> list[dict[str, Any]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines() if line]

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
        """Poll `check` until it holds (for files, which have no log line of their own)."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                tails = "\n".join(run.tail(15) for run in self.runs[-1:])
                raise AssertionError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.01)

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
def service() -> Iterator[DemoService]:
    """The watched service: healthy until a test says otherwise."""
    svc = DemoService().start()
    yield svc
    # shutdown() waits for the server loop's next poll (up to 0.5 s): let it happen aside.
    threading.Thread(target=svc.stop, daemon=True).start()


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
