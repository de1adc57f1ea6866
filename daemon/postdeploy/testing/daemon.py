"""The daemon as the tests, the benchmarks and the demo run it: `postdeploy run` in a
subprocess.

`DaemonProcess` starts `python -m postdeploy run --config PATH` (or another argv) with
`support.env.child_env`, its stdout on a pipe and its stderr in a file. The daemon logs one
JSON object per line when stdout is not a terminal; a background thread parses each line as
it arrives, and `wait_for(event, **fields)` blocks until a matching line is there. Tests
synchronise on those lines, never on sleeps.

What differs between the suites is an option, not another copy:

- `journal=True`: stdout *is* the journal stream (`$JOURNAL_STREAM` names the pipe's device
  and inode, as systemd sets it), so the daemon prefixes each line with `<N>`; the reader
  strips the prefix before parsing (`raw_lines()` keeps it).
- `strict=True`: a stdout line that is not a JSON object fails `find` and `wait_for`.
- `handled_errors`: error texts `unhandled()` leaves out (a fault a test injected on purpose).
- `argv`, `cwd`, `preexec_fn`: another program speaking the same protocol (the benchmarks'
  reference implementation), CPU pinning.
- `on_line`: called (in the reader thread) with each line as it arrives; a line that is not
  JSON comes as `{"event": None, "_raw": text}` (the demo narrates them).

`DaemonPool` starts daemons for one test (optionally waiting for `daemon.ready`) and kills
whatever is left at teardown.

The test suites and the benchmarks reach it as `support.daemon` (tests/support re-exports
the package's kit); the demo, which ships in the package, imports it from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from postdeploy.testing.env import child_env
from postdeploy.testing.wait import DEADLINE_S, WaitTimeout

# Log events that mean an exception escaped where it should not have.
UNHANDLED_EVENTS = ("intake.failed", "window.error", "window.error_unrecorded")
_JOURNAL_PRIORITY = re.compile(r"<[0-7]>")


def matches(line: dict[str, Any], event: str, fields: dict[str, Any]) -> bool:
    """Whether a log line has this event name and these field values."""
    return line.get("event") == event and all(line.get(k) == v for k, v in fields.items())


def run_argv(config_path: Path) -> list[str]:
    """`postdeploy run --config PATH`, with this interpreter."""
    return [sys.executable, "-m", "postdeploy", "run", "--config", str(config_path)]


class DaemonProcess:
    """One daemon process and the log lines it printed (`lines`, in order)."""

    def __init__(
        self,
        config_path: Path,
        stderr_path: Path,
        env: dict[str, str] | None = None,
        *,
        argv: list[str] | None = None,
        cwd: Path | None = None,
        journal: bool = False,
        strict: bool = False,
        keep_raw: bool = False,
        handled_errors: tuple[str, ...] = (),
        preexec_fn: Callable[[], None] | None = None,
        on_line: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config_path, self.stderr_path = config_path, stderr_path
        self.journal = journal
        self.strict = strict
        self.handled_errors = handled_errors
        self._on_line = on_line
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self._raw: list[str] | None = [] if keep_raw or journal else None
        self._not_json: list[str] = []
        self._cond = threading.Condition()
        # A pipe of our own rather than `stdout=PIPE`: its inode must be known before the
        # daemon starts, for `$JOURNAL_STREAM`.
        read_fd, write_fd = os.pipe()
        extra = dict(env or {})
        if journal:
            st = os.fstat(write_fd)
            extra["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self._stdout = os.fdopen(read_fd, "rb")
        self._stderr = stderr_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                argv or run_argv(config_path),
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=self._stderr,
                cwd=cwd or config_path.parent,
                env=child_env(extra),
                preexec_fn=preexec_fn,
            )
        except BaseException:
            self._stdout.close()
            self._stderr.close()
            raise
        finally:
            os.close(write_fd)  # the daemon has its copy: EOF comes when it exits
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- the process

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send `sig` (None: none, it was sent already) and wait for the exit; returns the
        exit code. Fails the test if the daemon does not exit within `timeout`."""
        if sig is not None:
            self.send(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit on {sig!r}\n{self.tail()}") from None
        self._release(timeout)
        return code

    def kill(self) -> int:
        """SIGKILL: the daemon gets no chance to clean up."""
        return self.stop(signal.SIGKILL)

    def close(self, sig: int = signal.SIGKILL, timeout: float = DEADLINE_S) -> int:
        """Teardown: send `sig` if the daemon still runs, SIGKILL it if it outlives `timeout`,
        release the pipe and the stderr file; returns the exit code."""
        self.send(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._release(5.0)
        return code

    def _release(self, timeout: float) -> None:
        # The reader ends at EOF, once every holder of the pipe is gone. A grandchild that
        # inherited it (a hook left running) may hold it longer: then leave the pipe to it.
        self._reader.join(timeout)
        self._stderr.close()
        if not self._reader.is_alive():
            with contextlib.suppress(OSError):
                self._stdout.close()

    # -- the log lines

    def _read(self) -> None:
        for raw in self._stdout:
            text = raw.decode("utf-8", errors="replace").removesuffix("\n")
            body = text.strip()
            if self.journal and _JOURNAL_PRIORITY.match(body):
                body = body[3:]
            parsed: Any = None
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(body) if body else None
            is_json = isinstance(parsed, dict)
            line: dict[str, Any] = parsed if is_json else {"event": None, "_raw": text}
            if body and self._on_line is not None:
                self._on_line(line)  # before a waiter sees it: what it does comes after
            with self._cond:
                if self._raw is not None:
                    self._raw.append(text)
                if not body:
                    continue
                if not is_json:
                    self._not_json.append(text)
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def _check_json(self) -> None:
        if self.strict and self._not_json:
            raise AssertionError(f"not a JSON log line: {self._not_json[0]!r}\n{self.tail()}")

    def count(self) -> int:
        """How many lines so far (an index for `wait_for(after=...)`)."""
        with self._cond:
            return len(self.lines)

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Every line so far with this event name and these field values."""
        with self._cond:
            self._check_json()
            return [line for line in self.lines if matches(line, event, fields)]

    def wait_for(
        self,
        event: str | tuple[str, ...],
        timeout: float = DEADLINE_S,
        *,
        after: int = 0,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first line from index `after` on with this event name (or one of these names)
        and these field values; waits for it. Fails the test if the daemon exits or `timeout`
        passes first."""
        line = self.try_wait_for(event, timeout, after=after, **fields)
        if line is None:
            why = "the daemon exited" if self.eof else f"no such line within {timeout:g}s"
            raise WaitTimeout(f"waiting for {event} {fields}: {why}\n{self.tail()}")
        return line

    def try_wait_for(
        self,
        event: str | tuple[str, ...],
        timeout: float = DEADLINE_S,
        *,
        after: int = 0,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """`wait_for`, but None where it would fail (a moment to act at, if it comes)."""
        names = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = after
            while True:
                self._check_json()
                for line in self.lines[seen:]:
                    if any(matches(line, name, fields) for name in names):
                        return line
                seen = max(seen, len(self.lines))
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_count(self, event: str, n: int, timeout: float = DEADLINE_S) -> None:
        """Wait until `n` lines with this event name arrived; fails if the daemon exits or
        `timeout` passes first."""
        deadline = time.monotonic() + timeout
        got, seen = 0, 0
        with self._cond:
            while True:
                got += sum(line.get("event") == event for line in self.lines[seen:])
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if got >= n:
                    return
                if self.eof or remaining <= 0:
                    raise WaitTimeout(f"{got}/{n} {event} lines within {timeout:g}s")
                self._cond.wait(remaining)

    def wait_ready(self) -> dict[str, Any]:
        """The `daemon.ready` line; waits for it."""
        return self.wait_for("daemon.ready")

    def raw_lines(self) -> list[str]:
        """Every stdout line as printed (`keep_raw` or `journal` only)."""
        assert self._raw is not None, "raw lines are kept only with keep_raw=True"
        with self._cond:
            return list(self._raw)

    def stderr_text(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def text(self) -> str:
        """Everything printed so far, on stdout (`keep_raw` only) and stderr."""
        return "\n".join(self.raw_lines()) + "\n" + self.stderr_text()

    def tail(self, n: int = 30, width: int = 600) -> str:
        """The last `n` lines (each cut at `width` characters) and the end of stderr."""
        with self._cond:
            shown = [json.dumps(line, ensure_ascii=False)[:width] for line in self.lines[-n:]]
        err = self.stderr_text()[-3000:]
        return "\n".join(shown) + ("\n--- stderr ---\n" + err if err.strip() else "")

    def unhandled(self, events: tuple[str, ...] = UNHANDLED_EVENTS) -> list[str]:
        """Lines and stderr text that show an exception escaping where it should not: one of
        `events` (unless its error names one of `handled_errors`), a line that is not JSON,
        a traceback on stderr."""
        found = [
            json.dumps(line)[:800]
            for name in events
            for line in self.find(name)
            if not any(handled in str(line.get("error", "")) for handled in self.handled_errors)
        ]
        with self._cond:
            found += [json.dumps(line)[:800] for line in self.lines if line.get("_raw")]
        err = self.stderr_text()
        if "Traceback" in err:
            found.append("stderr: " + err[-2000:])
        return found


class DaemonPool:
    """Starts daemons for one test, with the options this suite uses, and makes sure none
    outlives it (`close`)."""

    def __init__(self, directory: Path, **options: Any) -> None:
        self.directory = directory
        self.options = options  # DaemonProcess keyword options for every daemon
        self.runs: list[DaemonProcess] = []

    def start(
        self,
        config_path: Path,
        env: dict[str, str] | None = None,
        *,
        ready: bool = True,
        name: str = "daemon",
        **options: Any,
    ) -> DaemonProcess:
        """Start a daemon (`env` added to its environment); with `ready`, wait for
        `daemon.ready`. Its stderr goes to `<directory>/<name>-<n>.stderr`."""
        stderr_path = self.directory / f"{name}-{len(self.runs)}.stderr"
        run = DaemonProcess(config_path, stderr_path, env, **{**self.options, **options})
        self.runs.append(run)
        if ready:
            run.wait_ready()
        return run

    def all_lines(self) -> list[dict[str, Any]]:
        """The lines of every daemon started, in start order."""
        return [line for run in self.runs for line in run.lines]

    def close(self, sig: int = signal.SIGKILL) -> None:
        """Stop what still runs (`sig`, then SIGKILL after the deadline)."""
        for run in self.runs:
            run.close(sig)
