"""The daemon built in-process: its network is an `httpx.MockTransport`, everything else real
(files, inotify, the rollback hook as a subprocess). Intake, supersede, reload and the
reaction get tests that take milliseconds; what needs a process of its own (signals, SIGKILL,
journald, systemd's notify socket) stays in the subprocess suites.

Each test opens its task group inside the test (pytest-asyncio runs async fixtures in their
own task, so a task group must never span a fixture's setup and teardown).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from postdeploy import timeline
from postdeploy.config import Config, load_config
from postdeploy.daemon import Daemon
from postdeploy.probe import Prober

DEADLINE_S = 30.0

HOOK = f"""#!{sys.executable}
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(os.environ["POSTDEPLOY_WORK_ITEM"] + "\\n")
"""


class Service:
    """What the mock network answers: health ok or failing, per host."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.url.host in self.failing:
            return httpx.Response(503, json={"status": "down"})
        return httpx.Response(200, json={"status": "ok"})


def write_config(tmp: Path, extra: str = "") -> Path:
    hook = tmp / "hook.py"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    path = tmp / "config.toml"
    path.write_text(
        f"""
state_dir = "state"
[defaults]
window_s = 0.6
interval_s = 0.1
initial_delay_s = 0.02
probe_timeout_s = 0.05
fail_threshold = 2
[daemon]
rescan_interval_s = 0.2
[repos.shop]
base_url = "http://shop.test"
fivexx_paths = []
auto_rollback = true
rollback_command = ["{hook}", "{tmp / "hook-calls"}"]
{extra}
"""
    )
    return path


@asynccontextmanager
async def running(config: Config, service: Service, path: Path) -> AsyncIterator[Daemon]:
    prober = Prober(transport=httpx.MockTransport(service))
    daemon = Daemon(config, str(path), prober=prober, handle_signals=False)
    async with anyio.create_task_group() as tg:
        codes: list[int] = []

        async def serve() -> None:
            codes.append(await daemon.serve())

        tg.start_soon(serve)
        with anyio.fail_after(DEADLINE_S):
            await daemon.ready.wait()
        try:
            yield daemon
        finally:
            daemon.stop()
    assert codes == [0]


def arm(root: Path, repo: str, item: str, mtime: float | None = None) -> Path:
    directory = root / repo / item
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "armed").touch()
    if mtime is not None:
        os.utime(directory / "armed", (mtime, mtime))
    return directory


async def until(what: str, check: Callable[[], bool]) -> None:
    with anyio.fail_after(DEADLINE_S):
        while not check():
            await anyio.sleep(0.01)


def rows(path: Path) -> int:
    """How many lines a JSON Lines file holds."""
    return path.read_text().count("\n")


def done(directory: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((directory / "done").read_text())
    return value


async def test_healthy_and_degraded_windows_with_the_rollback(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load_config(path)
    service = Service()
    service.failing.add("shop.test")
    async with running(config, service, path) as daemon:
        item = arm(daemon.root, "shop", "w1")
        await until("the verdict", lambda: (item / "done").exists())
    result = done(item)
    assert (result["status"], result["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert (tmp_path / "hook-calls").read_text() == "w1\n"
    assert service.requests >= 2


async def test_a_newer_window_supersedes_an_older_one(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = Service()
    async with running(load_config(path), service, path) as daemon:
        old = arm(daemon.root, "shop", "a-old")
        await until("the old window's first tick", lambda: (old / "series.jsonl").exists())
        new = arm(daemon.root, "shop", "b-new")
        await until("both verdicts", lambda: (old / "done").exists() and (new / "done").exists())
    assert done(old)["status"] == "SUPERSEDED"
    assert "superseded by b-new" in done(old)["reason"]
    assert done(new)["status"] == "HEALTHY"


async def test_a_reload_takes_new_thresholds_for_the_open_window(tmp_path: Path) -> None:
    """A reload raising fail_threshold keeps an open window with failing health going: it
    ends DEGRADED only after the new threshold's run of failures."""
    path = write_config(tmp_path)
    service = Service()
    service.failing.add("shop.test")
    async with running(load_config(path), service, path) as daemon:
        path.write_text(path.read_text().replace("fail_threshold = 2", "fail_threshold = 4"))
        await daemon.reload()
        item = arm(daemon.root, "shop", "w1")
        await until("the verdict", lambda: (item / "done").exists())
    result = done(item)
    assert result["status"] == "DEGRADED"
    assert result["checks_total"] == 4


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "rescan-only"])
async def test_intake_with_and_without_inotify(tmp_path: Path, inotify: bool) -> None:
    """Without inotify (a watcher that cannot be made: the kernel's limit is used up),
    the rescan alone finds new sentinels."""
    path = write_config(tmp_path)

    def no_watcher(_: Path) -> Any:
        raise OSError(24, "Too many open files (inotify instances)")

    prober = Prober(transport=httpx.MockTransport(Service()))
    config = load_config(path)
    kwargs: dict[str, Any] = {} if inotify else {"watcher_factory": no_watcher}
    daemon = Daemon(config, str(path), prober=prober, handle_signals=False, **kwargs)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.serve)
        with anyio.fail_after(DEADLINE_S):
            await daemon.ready.wait()
        item = arm(daemon.root, "shop", "w1")
        await until("the verdict", lambda: (item / "done").exists())
        daemon.stop()
    assert done(item)["status"] == "HEALTHY"


class SlowService(Service):
    """A service whose health answers take `delay_s` (0: at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0

    async def answer(self, request: httpx.Request) -> httpx.Response:
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        return self(request)


BASELINE = """
baseline_interval_s = 0.02
baseline_gap_s = 0
latency_increase = 1.0
min_samples = 5
"""


async def _baseline_window(
    tmp_path: Path, service: SlowService, after: Callable[[], None], extra: str = ""
) -> dict[str, Any]:
    """Let the daemon sample the baseline, change the service (`after`: the deploy), arm a
    window and return its `done` (`extra`: more of the repo's table, e.g. a check)."""
    path = write_config(tmp_path, BASELINE + extra)
    text = path.read_text().replace("window_s = 0.6", "window_s = 2.4")
    text = text.replace("interval_s = 0.1", "interval_s = 0.15")
    path.write_text(text.replace("probe_timeout_s = 0.05", "probe_timeout_s = 0.14"))
    config = load_config(path)
    prober = Prober(transport=httpx.MockTransport(service.answer))
    daemon = Daemon(config, str(path), prober=prober, handle_signals=False)
    baseline = daemon.root / "shop" / ".baseline.jsonl"
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.serve)
        with anyio.fail_after(DEADLINE_S):
            await daemon.ready.wait()
        await until("a baseline", lambda: baseline.exists() and rows(baseline) >= 12)
        after()
        item = arm(daemon.root, "shop", "w1")
        await until("the verdict", lambda: (item / "done").exists())
        daemon.stop()
    assert rows(item / "baseline.jsonl") >= 10  # the window's own copy
    # No baseline probe while the window was open (the daemon samples every 20 ms otherwise).
    ticks = [json.loads(line)["ts"] for line in (item / "series.jsonl").read_text().splitlines()]
    sampled = [json.loads(line)["ts"] for line in baseline.read_text().splitlines()]
    assert not [ts for ts in sampled if min(ticks) < ts < max(ticks)]
    return done(item)


async def test_a_latency_regression_against_the_baseline_is_rolled_back(tmp_path: Path) -> None:
    """Health stays 200 and fast enough for every fixed threshold; only the comparison with
    the baseline before the deploy sees it."""
    service = SlowService()
    service.delay_s = 0.02

    def deploy() -> None:
        service.delay_s = 0.08  # 4x: far beyond the machine's own jitter

    result = await _baseline_window(tmp_path, service, deploy)
    assert (result["status"], result["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert "before the deploy" in result["reason"]
    assert result["preexisting"] is False
    assert result["baseline"]["tripped"] == "latency"
    assert result["baseline"]["latency"]["p_value"] < 0.01
    assert 'class="band"' in (tmp_path / "state" / "shop" / "w1" / "timeline.svg").read_text()
    assert "Against the baseline" in (tmp_path / "state" / "shop" / "w1" / "report.md").read_text()


async def test_a_service_failing_before_the_deploy_is_not_rolled_back(tmp_path: Path) -> None:
    service = SlowService()
    service.failing.add("shop.test")
    result = await _baseline_window(tmp_path, service, lambda: None)
    assert (result["status"], result["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    assert result["preexisting"] is True
    assert "already failing before the deploy" in result["reason"]
    assert not (tmp_path / "hook-calls").exists()


async def test_a_deploy_that_changes_nothing_stays_healthy_against_the_baseline(
    tmp_path: Path,
) -> None:
    service = SlowService()
    service.delay_s = 0.02  # the sleep, not the machine's jitter, sets the latency
    result = await _baseline_window(tmp_path, service, lambda: None)
    assert result["status"] == "HEALTHY"
    assert result["preexisting"] is False
    assert result["baseline"]["reference"]["rows"] >= 10


class ErrorRateService(SlowService):
    """A service whose Prometheus (host `prom.test`) reports its request error ratio."""

    def __init__(self) -> None:
        super().__init__()
        self.error_ratio = 0.001

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "prom.test":
            sample = {"metric": {}, "value": [0, str(self.error_ratio)]}
            data = {"resultType": "vector", "result": [sample]}
            return httpx.Response(200, json={"status": "success", "data": data})
        return super().__call__(request)


ERROR_RATE_CHECK = """
[[repos.shop.checks]]
name = "errors"
type = "prometheus"
url = "http://prom.test"
query = "sum(rate(http_requests_total{code=~'5..'}[10s])) / sum(rate(http_requests_total[10s]))"
max = 0.5
baseline_min_shift = 0.01
"""


async def test_a_request_error_ratio_against_the_baseline_is_rolled_back(
    tmp_path: Path,
) -> None:
    """The error ratio Prometheus reports goes from 0.1 % to 3 %: far under the check's own
    bound (50 %), so only the comparison of its value with the baseline's sees it."""
    service = ErrorRateService()
    service.delay_s = 0.02

    def deploy() -> None:
        service.error_ratio = 0.03

    result = await _baseline_window(tmp_path, service, deploy, ERROR_RATE_CHECK)
    assert (result["status"], result["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert result["baseline"]["tripped"] == "check errors"
    figures = result["baseline"]["checks"]["errors"]
    assert (figures["baseline"], figures["window"]) == (0.001, 0.03)
    assert figures["p_value"] < 0.01
    assert result["baseline"]["reference"]["checks"]["errors"] >= 10
    assert 'check "errors" 0.03 vs 0.001 before the deploy' in result["reason"]
    sampled = (tmp_path / "state" / "shop" / ".baseline.jsonl").read_text().splitlines()
    assert json.loads(sampled[0])["checks"]["errors"]["value"] == 0.001


async def test_an_unchanged_error_ratio_stays_healthy_against_the_baseline(
    tmp_path: Path,
) -> None:
    service = ErrorRateService()
    service.delay_s = 0.02
    result = await _baseline_window(tmp_path, service, lambda: None, ERROR_RATE_CHECK)
    assert result["status"] == "HEALTHY"
    assert result["baseline"]["checks"]["errors"]["regressed"] is False


async def test_an_arm_in_a_repo_directory_made_before_the_start_is_seen_by_inotify(
    tmp_path: Path,
) -> None:
    """A repo directory that exists at start-up with no work item in it (a repo with only
    its `.baseline.jsonl`, say) is watched from the start: with the rescan an hour away,
    only inotify can bring the window in."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("rescan_interval_s = 0.2", "rescan_interval_s = 3600"))
    (tmp_path / "state" / "shop").mkdir(parents=True)
    (tmp_path / "state" / "shop" / ".baseline.jsonl").write_text("")
    async with running(load_config(path), Service(), path) as daemon:
        item = arm(daemon.root, "shop", "w1")
        await until("the verdict", lambda: (item / "done").exists())
    assert done(item)["status"] == "HEALTHY"


async def test_windows_ending_together_draw_their_pictures_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finished window draws `timeline.svg` in a worker thread, and only one at a time:
    dozens at once kept the event loop from the interpreter (ticks 40 ms late at p99 in the
    precision benchmark). Each drawing here takes 50 ms, so windows that end together would
    overlap without the one-thread limiter."""
    real = timeline.attach
    lock = threading.Lock()
    running_now, most, drawn = [0], [0], [0]

    def slow_attach(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                running_now[0] -= 1
                drawn[0] += 1

    monkeypatch.setattr(timeline, "attach", slow_attach)
    repos = [f"r{i}" for i in range(5)]
    extra = "".join(
        f'\n[repos.{name}]\nbase_url = "http://{name}.test"\nfivexx_paths = []\n' for name in repos
    )
    path = write_config(tmp_path, extra)
    async with running(load_config(path), Service(), path) as daemon:
        items = [arm(daemon.root, name, "w1") for name in ["shop", *repos]]
        await until("every verdict", lambda: all((i / "done").exists() for i in items))
    assert drawn[0] == len(items)
    assert most[0] == 1
    assert all((i / "timeline.svg").exists() for i in items)
