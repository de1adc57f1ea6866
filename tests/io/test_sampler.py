"""The baseline task against real loopback services, real files and a real prober.

Each test opens its task group inside the test (pytest-asyncio runs async fixtures in their
own task, so a task group must never span a fixture's setup and teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing as closing
from pathlib import Path

import anyio
import pytest

from postdeploy.config import Config, load_config
from postdeploy.probe import Prober
from postdeploy.sampler import Plan, Sampler, next_due, plans
from postdeploy.samples import BASELINE, SampleFile
from support.http import HANG, Service
from support.wait import DEADLINE_S


@pytest.fixture
def target() -> Iterator[Service]:
    svc = Service()
    yield svc
    svc.stop()


def config(tmp: Path, url: str, interval: float = 0.02, keep: float = 3600.0) -> Config:
    path = tmp / "config.toml"
    path.write_text(
        f"""
state_dir = "state"
[defaults]
probe_timeout_s = 2
[repos.shop]
base_url = "{url}"
fivexx_paths = []
baseline_interval_s = {interval}
baseline_keep_s = {keep}
baseline_gap_s = 0
[repos.quiet]
base_url = "{url}"
"""
    )
    (tmp / "state").mkdir(exist_ok=True)
    return load_config(path)


async def until(predicate: object, what: str) -> None:
    """Poll `predicate()` on the event loop until true (events, not a fixed sleep)."""
    assert callable(predicate)
    with anyio.fail_after(DEADLINE_S):
        while not predicate():
            await anyio.sleep(0.005)
    assert predicate(), what


def rows(tmp: Path) -> int:
    return len(SampleFile(tmp / "state", "shop").load())


@pytest.mark.parametrize(
    ("scheduled", "interval", "now", "due"),
    [
        (100.0, 10.0, 100.0, 110.0),  # on time: one interval on
        (100.0, 10.0, 109.9, 110.0),
        (100.0, 10.0, 110.0, 120.0),  # fell behind: never a burst of made-up probes
        (100.0, 10.0, 500.0, 510.0),
    ],
)
def test_next_due(scheduled: float, interval: float, now: float, due: float) -> None:
    assert next_due(scheduled, interval, now) == due


def test_plans_only_for_repos_that_want_a_baseline(tmp_path: Path) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9", interval=5, keep=60)
    assert plans(cfg) == {"shop": Plan(5.0, 60.0, 2.0)}
    disabled = cfg.model_copy(update={"enabled": False})
    assert plans(disabled) == {}


async def test_samples_while_no_window_is_open_and_pauses_while_one_is(
    tmp_path: Path, target: Service
) -> None:
    cfg = config(tmp_path, target.url)
    busy: set[str] = set()
    async with closing(Prober()) as prober, anyio.create_task_group() as tg:
        sampler = Sampler(
            tmp_path / "state", config=lambda: cfg, prober=prober, busy=busy.__contains__
        )
        tg.start_soon(sampler.run)
        await until(lambda: rows(tmp_path) >= 3, "three baseline rows")
        busy.add("shop")  # a window opens: no more baseline probes
        await anyio.sleep(0.1)  # let a probe already in flight land
        frozen = target.hits("/health")
        await anyio.sleep(0.3)  # 15 intervals
        assert target.hits("/health") == frozen
        busy.clear()
        await until(lambda: target.hits("/health") > frozen, "sampling resumed")
        tg.cancel_scope.cancel()
    loaded = SampleFile(tmp_path / "state", "shop").load()
    assert all(r.health_ok and r.latency_ms > 0 for r in loaded)
    assert [r.ts for r in loaded] == sorted(r.ts for r in loaded)
    assert not (tmp_path / "state" / "quiet" / BASELINE).exists()  # not asked for


async def test_a_hung_baseline_probe_never_holds_a_windows_health_slot(
    tmp_path: Path, target: Service
) -> None:
    """One slot per class: the baseline's hung health request holds the non-urgent one, and a
    window's health request (urgent) still goes at once. Were the baseline's health request
    urgent, the window's would wait out the baseline's 30 s timeout."""
    hung = Service()
    hung.route("/health", lambda _hit, _req: HANG)
    try:
        cfg = config(tmp_path, hung.url)
        (tmp_path / "window").mkdir()
        window_cfg = config(tmp_path / "window", target.url)
        async with closing(Prober(max_inflight=1)) as prober, anyio.create_task_group() as tg:
            repo = cfg.repos["shop"]
            tg.start_soon(lambda: prober.probe(repo, 30.0, 0, 0.0, False, urgent=False))
            await anyio.to_thread.run_sync(lambda: hung.wait_requests(1, "/health"))
            with anyio.fail_after(DEADLINE_S / 3):
                row = await prober.probe(window_cfg.repos["shop"], 30.0, 0, 0.0, False)
            assert row.health_ok
            tg.cancel_scope.cancel()
    finally:
        hung.stop()


async def test_a_write_failure_is_logged_and_sampling_goes_on(
    tmp_path: Path, target: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, target.url)
    blocker = tmp_path / "state" / "shop" / BASELINE
    blocker.mkdir(parents=True)  # a directory where the file should be: every append fails
    async with closing(Prober()) as prober, anyio.create_task_group() as tg:
        sampler = Sampler(
            tmp_path / "state", config=lambda: cfg, prober=prober, busy=lambda _: False
        )
        tg.start_soon(sampler.run)
        await until(lambda: target.hits("/health") >= 2, "probes despite the failing file")
        blocker.rmdir()
        await until(lambda: rows(tmp_path) >= 2, "rows once the file can be written")
        tg.cancel_scope.cancel()


async def test_the_file_stays_bounded(tmp_path: Path, target: Service) -> None:
    cfg = config(tmp_path, target.url, interval=0.005, keep=0.2)
    path = tmp_path / "state" / "shop" / BASELINE
    compacted: list[int] = []

    def shrank() -> bool:
        count = rows(tmp_path) if path.exists() else 0
        if compacted and count < compacted[-1]:
            return True
        compacted.append(count)
        return False

    async with closing(Prober()) as prober, anyio.create_task_group() as tg:
        sampler = Sampler(
            tmp_path / "state", config=lambda: cfg, prober=prober, busy=lambda _: False
        )
        tg.start_soon(sampler.run)
        await until(shrank, "the file was compacted")
        tg.cancel_scope.cancel()
    assert max(compacted) < 200  # ~0.2 s of rows plus the compaction slack, never unbounded


async def test_a_reload_that_turns_it_off_stops_the_task(tmp_path: Path, target: Service) -> None:
    cfg = config(tmp_path, target.url)
    current = [cfg]
    async with closing(Prober()) as prober, anyio.create_task_group() as tg:
        sampler = Sampler(
            tmp_path / "state", config=lambda: current[0], prober=prober, busy=lambda _: False
        )
        tg.start_soon(sampler.run)
        await until(lambda: rows(tmp_path) >= 1, "sampling")
        current[0] = config(tmp_path, target.url, interval=0)
        sampler.reconfigure()
        await until(lambda: sampler.repos == [], "the task stopped")
        frozen = target.hits("/health")
        await anyio.sleep(0.2)
        assert target.hits("/health") == frozen
        tg.cancel_scope.cancel()


def test_rows_survive_a_restart(tmp_path: Path, target: Service) -> None:
    cfg = config(tmp_path, target.url)

    async def sample(count: int) -> None:
        async with closing(Prober()) as prober, anyio.create_task_group() as tg:
            sampler = Sampler(
                tmp_path / "state", config=lambda: cfg, prober=prober, busy=lambda _: False
            )
            tg.start_soon(sampler.run)
            await until(lambda: rows(tmp_path) >= count, f"{count} rows")
            tg.cancel_scope.cancel()

    anyio.run(sample, 2)
    anyio.run(sample, 4)
    times = [r.ts for r in SampleFile(tmp_path / "state", "shop").load()]
    assert len(times) >= 4 and times == sorted(set(times))  # the first run's rows kept


async def test_a_damaged_file_is_rewritten_with_its_rows_when_the_task_starts(
    tmp_path: Path, target: Service
) -> None:
    cfg = config(tmp_path, target.url)
    path = tmp_path / "state" / "shop" / BASELINE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage\n" * 1000 + b'{"ts": 1, "hea')  # bad lines, a torn tail
    async with closing(Prober()) as prober, anyio.create_task_group() as tg:
        sampler = Sampler(
            tmp_path / "state", config=lambda: cfg, prober=prober, busy=lambda _: False
        )
        tg.start_soon(sampler.run)
        await until(lambda: b"garbage" not in path.read_bytes(), "the file rewritten")
        await until(lambda: rows(tmp_path) >= 1, "sampling goes on")
        tg.cancel_scope.cancel()
