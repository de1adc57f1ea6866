"""Fixtures and helpers for the feature-check tests.

Everything here is real: HTTP services on 127.0.0.1 with random ports, the `postdeploy` CLI
and daemon in subprocesses, a rollback hook that is a real executable script, and (in
`test_prometheus.py`) a real Prometheus. The daemon's stdout is a pipe, so it logs one JSON
object per line; `Daemon.wait_for` blocks until a matching line arrives. Tests synchronise on
those lines and on files appearing, never on bare sleeps.

The daemon process, the scripted HTTP service (`Service`, whose routes answer
`service.Reply(...)`) and `wait_until` are the shared kit's (`support.*`); nothing here is
imported from another test directory.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.daemon import DaemonProcess
from support.env import child_env
from support.http import Reply, Request, Service, free_port
from support.toml import render_toml
from support.wait import DEADLINE_S, WaitTimeout, wait_until

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


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.stop()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (a port bound, then released)."""
    return f"http://127.0.0.1:{free_port()}"


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


class Daemon(DaemonProcess):
    """One `postdeploy run` process (`support.daemon`), with this suite's file helpers."""

    def __init__(self, config_path: Path, **env: str) -> None:
        super().__init__(config_path, config_path.parent / "daemon.stderr", env)
        self.state = config_path.parent / "state"

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
        rows: list[dict[str, Any]] = []

        def check() -> bool:
            rows[:] = self.rows(repo, work_item)
            return until(rows)

        try:
            wait_until(check, what, timeout, daemon=self, while_alive=True)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\nrows: {rows}") from None
        return rows


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Daemon]]:
    """Start `postdeploy run` on a config (extra keyword args go to its environment) and wait
    for `daemon.ready`; every daemon started is stopped (SIGTERM) after the test."""
    daemons: list[Daemon] = []

    def start(config_path: Path, **env: str) -> Daemon:
        daemon = Daemon(config_path, **env)
        daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.close(signal.SIGTERM)


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
            port = free_port()
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
