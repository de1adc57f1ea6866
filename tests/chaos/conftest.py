"""The chaos harness: the real daemon in subprocesses, real targets, a real webhook receiver.

Everything here is real: `python -m postdeploy run` in a subprocess (its JSON log lines read
from its stdout by a thread), HTTP targets and a webhook receiver on 127.0.0.1 with random
ports, rollback hooks that are shell scripts, SIGKILL from the outside. Tests synchronise on
log lines, files appearing and requests arriving; deadlines are generous and only reached when
something is wrong.

The pieces, each exposed through a fixture because tests run with `--import-mode=importlib`
(the daemon process, the HTTP servers and `wait_until` are the shared kit's, `support.*`):

- `daemons`: starts `support.daemon.DaemonProcess`es (`wait_for`, `find`, `kill`,
  `unhandled`) and kills what is left after the test.
- `Target`: a watched service whose behaviour a test switches (health failing, 5xx, a broken
  feature) and which records when each request arrived (monotonic clock of this process).
- `Deliveries`: a webhook sink that records every delivery by `Idempotency-Key`, event kind
  and the daemon's "life" (epoch) it arrived in, and can refuse some deliveries with 503.
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
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postdeploy.config import Config, load_config
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from postdeploy.series import ProbeRow, replay
from postdeploy.verdict import Status, Thresholds, Verdict, classify, healthy
from support.daemon import DaemonPool
from support.files import front_matter
from support.http import Receiver, Reply, Request, Service
from support.toml import render_toml
from support.wait import DEADLINE_S

MODE = os.environ.get("CHAOS_MODE", "short")  # "long" in `make chaos`
LONG = MODE == "long"
INJECT_DIR = Path(__file__).parent / "inject"  # holds the sitecustomize.py fault injector


# -- the daemon process ----------------------------------------------------------------------


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonPool]:
    """Starts daemons (`support.daemon.DaemonProcess`) for one test; kills what is left.

    A write error the harness injected is handled by the daemon (retried at the next look),
    so `unhandled()` leaves those out."""
    pool = DaemonPool(tmp_path, handled_errors=("(injected",))
    yield pool
    pool.close()


# -- the watched service ---------------------------------------------------------------------

GOOD_STATE: dict[str, Any] = {"health": "ok", "code": 200, "feature": "ok"}


class Target(Service):
    """A watched service whose behaviour the test switches at run time (health failing, 5xx
    on /status and /queue, a broken /feature); every request's arrival is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self._state = dict(GOOD_STATE)
        self._lock = threading.Lock()
        self.route("/health", self._health)
        self.route("/status", self._fivexx)
        self.route("/queue", self._fivexx)
        self.route("/feature", self._feature)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def _health(self, _hit: int, _request: Request) -> Reply:
        if self.state()["health"] == "ok":
            return Reply(200, {"status": "ok"})
        return Reply(503, {"status": "failing"})

    def _fivexx(self, _hit: int, request: Request) -> Reply:
        return Reply(self.state()["code"], {"path": request.path})

    def _feature(self, _hit: int, _request: Request) -> Reply:
        return Reply(200, {"items": [{"sku": "A-1"}] if self.state()["feature"] == "ok" else []})

    def set(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    def restore(self) -> None:
        self.set(**GOOD_STATE)

    def arrivals(self, path: str = "/health") -> list[float]:
        """When each request for `path` arrived (monotonic clock of this process)."""
        return [r.at for r in self.requests(path)]

    def wait_arrivals(self, n: int, path: str = "/health", timeout: float = DEADLINE_S) -> None:
        """Block until at least `n` requests for `path` arrived."""
        self.wait_requests(n, path, timeout)


@pytest.fixture
def targets() -> Iterator[Callable[[], Target]]:
    """A factory of targets, all stopped after the test."""
    made: list[Target] = []

    def make() -> Target:
        made.append(Target())
        return made[-1]

    yield make
    for target in made:
        target.stop()


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


class Deliveries:
    """A webhook sink (a `support.http.Receiver`) that records every delivery by
    `Idempotency-Key`, event kind and the daemon's life it arrived in, and refuses a share of
    them with 503 (the daemon retries those)."""

    def __init__(self, fail_ratio: float = 0.0, seed: int = 0) -> None:
        self._lock = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._fail_ratio = fail_ratio
        self._rng = random.Random(seed)
        self._epoch = 0
        self._server = Receiver(responder=self._answer)

    def _answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        try:
            event = request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            event = {}
        if not isinstance(event, dict):
            event = {}
        with self._lock:
            code = 503 if self._rng.random() < self._fail_ratio else 200
            self._deliveries.append(
                Delivery(
                    request.headers.get("idempotency-key") or "",
                    str(event.get("kind", "")),
                    str(event.get("repo", "")),
                    str(event.get("work_item", "")),
                    self._epoch,
                    code,
                    request.at,
                )
            )
            self._lock.notify_all()
        return code, {}, b""

    @property
    def url(self) -> str:
        return f"{self._server.url}/hook"

    def set_epoch(self, epoch: int) -> None:
        with self._lock:
            self._epoch = epoch

    def set_fail_ratio(self, ratio: float) -> None:
        with self._lock:
            self._fail_ratio = ratio

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def acknowledged(self) -> set[str]:
        with self._lock:
            return {d.key for d in self._deliveries if d.code == 200}

    def wait_acknowledged(self, keys: set[str], timeout: float = DEADLINE_S) -> set[str]:
        """Wait until every key in `keys` was acknowledged; returns those still missing."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                missing = keys - self.acknowledged()
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._lock.wait(min(remaining, 0.5))

    def close(self) -> None:
        self._server.stop()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Deliveries]]:
    made: list[Deliveries] = []

    def make(fail_ratio: float = 0.0, seed: int = 0) -> Deliveries:
        made.append(Deliveries(fail_ratio, seed))
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
    """What one chaos run did and found (printed by `summary`)."""

    # What the harness did to the daemon.
    kills: int = 0
    sigterms: int = 0
    crash_points: int = 0  # kills at an injected crash point
    # What the daemon did and left on disk.
    windows: int = 0
    probes: int = 0
    hook_runs: int = 0
    torn_tails_left: int = 0
    repairs_logged: int = 0
    # Alerts: expected, delivered, refused by the receiver, sent again after a kill.
    events_expected: int = 0
    deliveries: int = 0
    refused_deliveries: int = 0
    redelivered_after_kill: int = 0
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
    )
