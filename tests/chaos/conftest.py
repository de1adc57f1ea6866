"""The chaos harness: the real daemon in subprocesses, real targets, a real webhook receiver.

Everything here is real: `python -m postdeploy run` in a subprocess (its JSON log lines read
from its stdout by a thread), HTTP targets and a webhook receiver on 127.0.0.1 with random
ports, rollback hooks that are shell scripts, SIGKILL from the outside. Tests synchronise on
log lines, files appearing and requests arriving; deadlines are generous and only reached when
something is wrong.

The pieces, each exposed through a fixture because tests run with `--import-mode=importlib`:

- `Daemon`: one `postdeploy run` process and its log lines (`wait_for`, `find`, `kill`).
- `Target`: a watched service whose behaviour a test switches (health failing, 5xx, a broken
  feature) and which records when each request arrived (monotonic clock of this process).
- `Receiver`: a webhook sink that records every delivery by `Idempotency-Key`, event kind and
  the daemon's "life" (epoch) it arrived in, and can refuse some deliveries with 503.
- `Auditor`: the invariants, checked against the files on disk (see `Auditor.audit`).
- `inject/sitecustomize.py`: crash points and disk faults injected into the daemon process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from postdeploy.config import Config, load_config
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from postdeploy.series import ProbeRow, replay
from postdeploy.verdict import Status, Thresholds, Verdict, classify, healthy
from support.toml import render_toml

MODE = os.environ.get("CHAOS_MODE", "short")  # "long" in `make chaos`
LONG = MODE == "long"
DEADLINE_S = 30.0  # generous: only reached when something is wrong
INJECT_DIR = Path(__file__).parent / "inject"  # holds the sitecustomize.py fault injector

# Log events that mean an exception escaped where it should not have.
UNHANDLED_EVENTS = ("intake.failed", "window.error", "window.error_unrecorded")


# -- the daemon process ----------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that changes the daemon's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("POSTDEPLOY_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "CHAOS_", "FAKETIME")
        )
        and k not in ("LD_PRELOAD", "PYTHONPATH")
    }
    env["PYTHONUNBUFFERED"] = "1"
    extra = dict(extra or {})
    # The daemon imports the same postdeploy as this process (PYTHONPATH, if set, is kept),
    # with an injector directory in front of it when a test asks for one.
    paths = [extra.pop("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")]
    if any(paths):
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


class Daemon:
    """One `postdeploy run` process and the JSON log lines it printed."""

    def __init__(
        self, config_path: Path, stderr_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self._stderr = stderr_path.open("wb")
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postdeploy", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=config_path.parent,
            env=child_env(env),
        )
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

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
            shown = [json.dumps(line)[:600] for line in self.lines[-n:]]
        err = self.stderr_text()[-3000:]
        return "\n".join(shown) + ("\n--- stderr ---\n" + err if err.strip() else "")

    def stderr_text(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Every line so far with this event name and these field values."""
        with self._cond:
            return [line for line in self.lines if matches(line, event, fields)]

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(
        self,
        event: str | tuple[str, ...],
        timeout: float = DEADLINE_S,
        *,
        after: int = 0,
        fail: bool = True,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """The first line from index `after` on with this event name (or one of these names)
        and these field values; waits for it. Raises on timeout unless `fail` is False."""
        names = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = after
            while True:
                for line in self.lines[seen:]:
                    if any(matches(line, name, fields) for name in names):
                        return line
                seen = max(seen, len(self.lines))
                if self.eof:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        if not fail:
            return None
        why = "the daemon exited" if self.eof else f"no such line within {timeout:g}s"
        raise AssertionError(f"waiting for {names} {fields}: {why}\n{self.tail()}")

    def wait_ready(self) -> dict[str, Any]:
        line = self.wait_for("daemon.ready")
        assert line is not None
        return line

    def send(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send `sig` and wait for the exit; returns the exit code."""
        self.send(sig)
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
        if self.alive:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()

    def unhandled(self) -> list[str]:
        """Lines and stderr text that show an exception escaping where it should not."""
        found = [
            json.dumps(line)[:800]
            for name in UNHANDLED_EVENTS
            for line in self.find(name)
            # A write error the harness injected is handled (retried at the next look).
            if "(injected" not in str(line.get("error", ""))
        ]
        found += [json.dumps(line)[:800] for line in self.lines if line.get("_raw")]
        err = self.stderr_text()
        if "Traceback" in err:
            found.append("stderr: " + err[-2000:])
        return found


def wait_until(
    what: str, check: Callable[[], bool], run: Daemon, timeout: float = DEADLINE_S
) -> None:
    """Poll `check` (a file appearing, say) until it holds; fails with the daemon's log tail
    if the daemon exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline or not run.alive:
            raise AssertionError(f"timed out waiting for {what}\n{run.tail(12)}")
        time.sleep(0.01)


def matches(line: dict[str, Any], event: str, fields: dict[str, Any]) -> bool:
    return line.get("event") == event and all(line.get(k) == v for k, v in fields.items())


class Daemons:
    """Starts daemons for one test and makes sure none outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.runs: list[Daemon] = []

    def start(
        self, config_path: Path, env: dict[str, str] | None = None, *, ready: bool = True
    ) -> Daemon:
        run = Daemon(config_path, self.tmp / f"daemon-{len(self.runs)}.stderr", env)
        self.runs.append(run)
        if ready:
            run.wait_ready()
        return run

    def close(self) -> None:
        for run in self.runs:
            run.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    pool = Daemons(tmp_path)
    yield pool
    pool.close()


# -- the watched service ---------------------------------------------------------------------

GOOD_STATE: dict[str, Any] = {"health": "ok", "code": 200, "feature": "ok"}


class _TargetHandler(BaseHTTPRequestHandler):
    server: _TargetServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.arrive(self.path)
        if self.path == "/health":
            ok = state["health"] == "ok"
            code, body = (200, {"status": "ok"}) if ok else (503, {"status": "failing"})
        elif self.path in ("/status", "/queue"):
            code, body = state["code"], {"path": self.path}
        elif self.path == "/feature":
            items = [{"sku": "A-1"}] if state["feature"] == "ok" else []
            code, body = 200, {"items": items}
        else:
            code, body = 404, {"error": "not found"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _TargetServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.lock = threading.Condition()
        self.state = dict(GOOD_STATE)
        self.arrivals: list[tuple[str, float]] = []  # (path, monotonic time of arrival)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe timing out hangs up mid-request: not news here

    def arrive(self, path: str) -> dict[str, Any]:
        with self.lock:
            self.arrivals.append((path, time.monotonic()))
            self.lock.notify_all()
            return dict(self.state)


class Target:
    """A watched service on 127.0.0.1 whose behaviour the test switches at run time."""

    def __init__(self) -> None:
        self._server = _TargetServer()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set(self, **values: Any) -> None:
        with self._server.lock:
            self._server.state.update(values)

    def restore(self) -> None:
        self.set(**GOOD_STATE)

    def arrivals(self, path: str = "/health") -> list[float]:
        with self._server.lock:
            return [t for p, t in self._server.arrivals if p == path]

    def wait_arrivals(self, n: int, path: str = "/health", timeout: float = DEADLINE_S) -> None:
        """Block until at least `n` requests for `path` arrived."""
        deadline = time.monotonic() + timeout
        with self._server.lock:
            while sum(1 for p, _ in self._server.arrivals if p == path) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"fewer than {n} requests for {path} within {timeout}s")
                self._server.lock.wait(remaining)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def targets() -> Iterator[Callable[[], Target]]:
    """A factory of targets, all stopped after the test."""
    made: list[Target] = []

    def make() -> Target:
        made.append(Target())
        return made[-1]

    yield make
    for target in made:
        target.close()


# -- the webhook sink ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delivery:
    key: str  # the Idempotency-Key header
    kind: str
    repo: str
    work_item: str
    epoch: int  # which life of the daemon it arrived in (the harness counts restarts)
    code: int  # what the receiver answered
    at: float  # when it arrived (monotonic clock of this process)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _ReceiverServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            event = {}
        if not isinstance(event, dict):
            event = {}
        code = self.server.answer(self.headers.get("Idempotency-Key") or "", event)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fail_ratio: float, seed: int) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.lock = threading.Condition()
        self.deliveries: list[Delivery] = []
        self.fail_ratio = fail_ratio
        self.rng = random.Random(seed)
        self.epoch = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    def answer(self, key: str, event: dict[str, Any]) -> int:
        with self.lock:
            code = 503 if self.rng.random() < self.fail_ratio else 200
            self.deliveries.append(
                Delivery(
                    key,
                    str(event.get("kind", "")),
                    str(event.get("repo", "")),
                    str(event.get("work_item", "")),
                    self.epoch,
                    code,
                    time.monotonic(),
                )
            )
            self.lock.notify_all()
            return code


class Receiver:
    """A webhook sink that records deliveries; refuses a share of them with 503 (retried)."""

    def __init__(self, fail_ratio: float = 0.0, seed: int = 0) -> None:
        self._server = _ReceiverServer(fail_ratio, seed)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def set_epoch(self, epoch: int) -> None:
        with self._server.lock:
            self._server.epoch = epoch

    def set_fail_ratio(self, ratio: float) -> None:
        with self._server.lock:
            self._server.fail_ratio = ratio

    def deliveries(self) -> list[Delivery]:
        with self._server.lock:
            return list(self._server.deliveries)

    def acknowledged(self) -> set[str]:
        with self._server.lock:
            return {d.key for d in self._server.deliveries if d.code == 200}

    def wait_acknowledged(self, keys: set[str], timeout: float = DEADLINE_S) -> set[str]:
        """Wait until every key in `keys` was acknowledged; returns those still missing."""
        deadline = time.monotonic() + timeout
        with self._server.lock:
            while True:
                got = {d.key for d in self._server.deliveries if d.code == 200}
                missing = keys - got
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._server.lock.wait(min(remaining, 0.5))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(fail_ratio: float = 0.0, seed: int = 0) -> Receiver:
        made.append(Receiver(fail_ratio, seed))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def outbox_delivers() -> bool:
    """Whether the installed outbox delivers events (the alerts issue landed) or is the stub."""
    from postdeploy.alerts import outbox

    return "(stub" not in (outbox.__doc__ or "")


# -- files -----------------------------------------------------------------------------------


def listing(path: Path) -> list[tuple[str, str, int, int, str]]:
    """Everything below `path` without following symlinks: (name, kind, size, mtime, digest)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            kind = "link" if full.is_symlink() else "dir" if full.is_dir() else "file"
            digest = ""
            if kind == "file":
                digest = str(hash(full.read_bytes()))
            elif kind == "link":
                digest = os.readlink(full)
            out.append((str(full.relative_to(path)), kind, st.st_size, st.st_mtime_ns, digest))
    return sorted(out)


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a `report.md`."""
    assert text.startswith("---\n"), text[:200]
    front, sep, _ = text[4:].partition("\n---\n")
    assert sep, "report.md front matter is not closed by ---"
    data = yaml.safe_load(front)
    assert isinstance(data, dict)
    return data


@dataclasses.dataclass
class SeriesFile:
    rows: list[dict[str, Any]]  # every complete line, parsed
    torn: bytes  # an unterminated tail (a crash mid-append), b"" if none
    problems: list[str]


def read_series(path: Path) -> SeriesFile:
    """Parse `series.jsonl` strictly: every complete line must be a valid probe row."""
    if not path.exists():
        return SeriesFile([], b"", [])
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    rows, problems = [], []
    if complete or data.startswith(b"\n"):
        for number, line in enumerate(complete.split(b"\n"), start=1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                problems.append(f"line {number} is not JSON: {line[:120]!r}")
                continue
            if not isinstance(row, dict) or ProbeRow.from_dict(row) is None:
                problems.append(f"line {number} is not a valid probe row: {line[:120]!r}")
                continue
            rows.append(row)
    return SeriesFile(rows, torn, problems)


# -- invariants ------------------------------------------------------------------------------

# The event each final status sends (DEGRADED sends window.degraded before the reaction).
FINISH_EVENT = {
    "HEALTHY": "window.healthy",
    "SUPERSEDED": "window.superseded",
    "CANCELLED": "window.cancelled",
    "DISABLED": "window.disabled",
    "MISSED": "window.missed",
    "ERROR": "window.error",
}
ROLLBACK_EVENT = {
    "ROLLBACK_OK": "rollback.ok",
    "ROLLBACK_FAILED": "rollback.failed",
    "ROLLBACK_UNKNOWN": "rollback.unknown",
}


def event_id(key: ItemKey, kind: str, seq: str = "") -> str:
    """The id the daemon gives an event (stable: derived from what it is about)."""
    return Event(kind, key, "", 0.0, seq=seq).id


def thresholds_of(config: Config, repo: str) -> Thresholds:
    settings = config.window_settings(repo)
    checks = {
        c.name: c.fail_threshold for c in config.repos[repo].checks if c.fail_threshold is not None
    }
    return Thresholds(
        settings.fail_threshold, settings.fivexx_threshold, settings.min_samples, checks
    )


def offline_verdict(rows: list[dict[str, Any]], th: Thresholds, max_ticks: int) -> Verdict | None:
    """The verdict of a series judged offline: DEGRADED as soon as a rule holds, HEALTHY once
    the last tick (or the catch-up probe) is in, else None (no verdict yet)."""
    tally = replay(rows)
    verdict = classify(tally, th)
    if verdict is not None:
        return verdict
    if tally.catch_up_done or tally.last_tick >= max_ticks - 1:
        return healthy(tally, th)
    return None


@dataclasses.dataclass
class Armed:
    """What the harness knows about one window it armed."""

    key: ItemKey
    mtime: float  # `armed`'s mtime when written: the window's start
    while_down: bool  # armed while no daemon was running
    cancelled: bool = False


@dataclasses.dataclass
class Tallies:
    kills: int = 0
    sigterms: int = 0
    crash_points: int = 0
    windows: int = 0
    probes: int = 0
    events_expected: int = 0
    deliveries: int = 0
    redelivered_after_kill: int = 0
    refused_deliveries: int = 0
    hook_runs: int = 0
    torn_tails_left: int = 0
    repairs_logged: int = 0
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    actions: Counter[str] = dataclasses.field(default_factory=Counter)
    violations: list[str] = dataclasses.field(default_factory=list)

    def summary(self, seed: int, mode: str, alerts_checked: bool) -> str:
        alerts = "checked" if alerts_checked else "NOT checked: the outbox is still a stub"
        return "\n".join(
            [
                f"chaos summary (mode {mode}, seed {seed}; rerun with CHAOS_SEED={seed}):",
                f"  kills survived (SIGKILL)   {self.kills}"
                f"  (of which at injected crash points: {self.crash_points})",
                f"  graceful stops (SIGTERM)   {self.sigterms}",
                f"  windows                    {self.windows}",
                f"  statuses                   {dict(sorted(self.statuses.items()))}",
                f"  actions                    {dict(sorted(self.actions.items()))}",
                f"  probes (series rows)       {self.probes}",
                f"  rollback hook runs         {self.hook_runs}",
                f"  torn tails repaired/left   {self.repairs_logged}/{self.torn_tails_left}",
                f"  alert events expected      {self.events_expected} ({alerts})",
                f"  deliveries acknowledged    {self.deliveries}"
                f" (+{self.refused_deliveries} refused with 503 and retried,"
                f" {self.redelivered_after_kill} re-sent after a kill)",
                f"  violations found           {len(self.violations)}",
            ]
        )


class Auditor:
    """Checks the promises against the files on disk; collects violations instead of raising.

    A background thread records each `done` (inode and content) the first time it appears, so
    a `done` that is ever rewritten is caught even if it ends up with the same content.
    """

    def __init__(self, state: Path, config_path: Path) -> None:
        self.state = state
        self.config: Config = load_config(config_path)
        self.first_done: dict[ItemKey, tuple[int, bytes]] = {}
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the `done` watcher

    def poll_done(self) -> None:
        """Record every new `done`; flag any `done` whose inode or content changed."""
        if not self.state.exists():
            return
        for repo in os.scandir(self.state):
            if repo.name.startswith(".") or not repo.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(repo.path):
                if item.name.startswith("."):
                    continue  # the daemon's own files (.finished.tsv, .baseline.jsonl)
                path = Path(item.path) / "done"
                key = ItemKey(repo.name, item.name)
                try:
                    st = path.lstat()
                    content = path.read_bytes()
                except FileNotFoundError:
                    continue
                with self._lock:
                    first = self.first_done.setdefault(key, (st.st_ino, content))
                    if first != (st.st_ino, content):
                        self.violations.append(f"{key}: done was rewritten")
                        self.first_done[key] = (st.st_ino, content)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(0.05):
                with contextlib.suppress(OSError):
                    self.poll_done()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # -- series files, at any moment

    def series_problems(self) -> list[str]:
        """Every series file parses (a torn tail only at the end) and its ticks increase."""
        found = []
        for series in sorted(self.state.glob("*/*/series.jsonl")):
            key = f"{series.parent.parent.name}/{series.parent.name}"
            parsed = read_series(series)
            found += [f"{key}: series: {p}" for p in parsed.problems]
            ticks = [row["tick"] for row in parsed.rows]
            if any(a >= b for a, b in itertools.pairwise(ticks)):
                found.append(f"{key}: series: tick numbers do not strictly increase: {ticks}")
        return found

    # -- one finished window

    def audit_item(self, armed: Armed, hook_runs: int, tallies: Tallies) -> None:
        """Every promise about one window, once the run is over."""
        key, where = armed.key, f"{armed.key}"
        v = tallies.violations
        directory = self.state / key.repo / key.work_item
        if (directory / "rejected").exists():
            v.append(f"{where}: rejected: {(directory / 'rejected').read_text()!r}")
            return
        done_path, report_path = directory / "done", directory / "report.md"
        if not done_path.exists() or not report_path.exists():
            v.append(
                f"{where}: never finished (done: {done_path.exists()}, report.md: "
                f"{report_path.exists()})"
            )
            return
        done = json.loads(done_path.read_bytes())
        status, action = done["status"], done["action_taken"]
        tallies.statuses[status] += 1
        tallies.actions[action] += 1
        front = front_matter(report_path.read_text())
        mirrored = ("post_deploy_status", "action_taken", "checks_total", "checks_failed")
        if [front[k] for k in mirrored] != [
            status,
            action,
            done["checks_total"],
            done["checks_failed"],
        ]:
            v.append(f"{where}: report.md front matter {front} disagrees with done {done}")
        with self._lock:
            first = self.first_done.get(key)
        if first is not None and first != (done_path.lstat().st_ino, done_path.read_bytes()):
            v.append(f"{where}: done was rewritten")
        window = json.loads((directory / "window.json").read_text())
        if abs(window["armed_at"] - armed.mtime) > 1e-3:
            v.append(
                f"{where}: armed_at {window['armed_at']} is not armed's first mtime {armed.mtime}"
            )
        series = read_series(directory / "series.jsonl")
        tallies.probes += len(series.rows)
        tallies.torn_tails_left += bool(series.torn)
        rows = series.rows
        settings = self.config.window_settings(key.repo)
        repo = self.config.repos[key.repo]
        th = thresholds_of(self.config, key.repo)
        max_ticks = int(window["max_ticks"])
        for row in rows:
            expected = (
                window["armed_at"] + window["initial_delay_s"] + row["tick"] * window["interval_s"]
            )
            if row["tick"] >= max_ticks:
                v.append(f"{where}: tick {row['tick']} beyond max_ticks {max_ticks}")
            if not row.get("catch_up") and abs(row["scheduled_ts"] - expected) > 1e-3:
                v.append(
                    f"{where}: tick {row['tick']} scheduled at {row['scheduled_ts']}, "
                    f"the schedule says {expected}"
                )
        if sum(1 for row in rows if row.get("catch_up")) > 1:
            v.append(f"{where}: more than one catch-up probe")
        if status in ("HEALTHY", "DEGRADED"):
            self._audit_verdict(v, where, done, rows, th, max_ticks)
            if status == "HEALTHY" and action != "NONE":
                v.append(f"{where}: HEALTHY with action {action}")
            if status == "DEGRADED":
                if repo.self_hosting or not settings.auto_rollback:
                    wanted = {"ALERT_ONLY"}
                else:
                    wanted = {"ROLLBACK_OK", "ROLLBACK_FAILED", "ROLLBACK_UNKNOWN"}
                if action not in wanted:
                    v.append(f"{where}: DEGRADED with action {action}, expected one of {wanted}")
        else:
            if action != "NONE":
                v.append(f"{where}: {status} with action {action}")
            if status == "ERROR":
                v.append(f"{where}: ERROR: {done['reason']}")
            end = (
                window["armed_at"]
                + window["initial_delay_s"]
                + (max_ticks - 1) * window["interval_s"]
            )
            if status == "MISSED" and (rows or window["first_seen_at"] <= end):
                # Legitimate only for a window the daemon first saw after its end (armed while
                # it was down, or killed before it noticed the sentinel).
                v.append(f"{where}: MISSED although first seen before its end or with rows")
            if status == "CANCELLED" and not armed.cancelled:
                v.append(f"{where}: CANCELLED without a cancel file")
            if done["checks_total"] != len(rows):
                v.append(
                    f"{where}: {status} with checks_total {done['checks_total']} but "
                    f"{len(rows)} probe rows on disk"
                )
        # The rollback hook: at most once per work item, and only for a rollback.
        if hook_runs > 1:
            v.append(f"{where}: the rollback hook ran {hook_runs} times")
        if action in ("ROLLBACK_OK", "ROLLBACK_FAILED") and hook_runs != 1:
            v.append(f"{where}: {action} but the hook ran {hook_runs} times")
        if hook_runs and not action.startswith("ROLLBACK"):
            v.append(f"{where}: the hook ran but the action is {action}")

    @staticmethod
    def _audit_verdict(
        v: list[str],
        where: str,
        done: dict[str, Any],
        rows: list[dict[str, Any]],
        th: Thresholds,
        max_ticks: int,
    ) -> None:
        offline = offline_verdict(rows, th, max_ticks)
        if offline is None:
            v.append(
                f"{where}: {done['status']} but the series holds no verdict yet "
                f"(ticks {[r['tick'] for r in rows]})"
            )
            return
        tally = replay(rows)
        seen = (done["status"], done["reason"], done["checks_total"], done["checks_failed"])
        want = (str(offline.status), offline.reason, tally.checks_total, tally.checks_failed)
        if seen != want:
            v.append(f"{where}: done says {seen}, the series judged offline says {want}")
        # Probing stops at the verdict: no shorter prefix of the series had one already.
        for n in range(1, len(rows)):
            early = classify(replay(rows[:n]), th)
            if early is not None and early.status is Status.DEGRADED:
                v.append(f"{where}: probed on after the verdict (DEGRADED after {n} rows)")
                break

    def expected_events(self, armed: Armed) -> dict[str, str]:
        """The events a finished window must have sent (kinds that happen for sure), as
        {event id: "repo/work_item kind"}."""
        key = armed.key
        directory = self.state / key.repo / key.work_item
        if not (directory / "done").exists():
            return {}
        done = json.loads((directory / "done").read_bytes())
        kinds = ["window.armed"]
        status, action = done["status"], done["action_taken"]
        if status in FINISH_EVENT:
            kinds.append(FINISH_EVENT[status])
        if status == "DEGRADED":
            kinds.append("window.degraded")
        if action in ROLLBACK_EVENT:
            kinds.append(ROLLBACK_EVENT[action])
        verification = (done.get("rollback") or {}).get("verification")
        if isinstance(verification, dict):
            kinds.append(
                "rollback.verified" if verification.get("recovered") else "rollback.still_degraded"
            )
        return {event_id(key, kind): f"{key} {kind}" for kind in kinds}


@pytest.fixture
def kit() -> Any:
    """The harness's helpers for the test modules (which cannot import this conftest)."""
    import types

    return types.SimpleNamespace(
        MODE=MODE,
        LONG=LONG,
        DEADLINE_S=DEADLINE_S,
        INJECT_DIR=INJECT_DIR,
        Armed=Armed,
        Auditor=Auditor,
        Tallies=Tallies,
        event_id=event_id,
        front_matter=front_matter,
        listing=listing,
        offline_verdict=offline_verdict,
        outbox_delivers=outbox_delivers,
        read_series=read_series,
        render_toml=render_toml,
        thresholds_of=thresholds_of,
        wait_until=wait_until,
    )
