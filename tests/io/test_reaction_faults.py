"""The reaction survives the disk: a write error at any point of the reaction path never
loses the decision, never runs the hook twice, and never records a hook that ran as not run.

Each test runs a real `WindowRunner` in-process against a real HTTP target on 127.0.0.1
(always 503, so the window turns DEGRADED on its second tick), a real rollback hook (a
subprocess) and real files. The disk fault is injected into `durable.write_atomic_at`, the one
function every atomic write of a work item goes through: the first `times` writes of one file
fail with the given errno, as a full (ENOSPC), read-only (EROFS) or failing (EIO) disk would.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from postdeploy import durable, layout, reaction
from postdeploy.alerts import Outbox
from postdeploy.alerts import spool as spool_module
from postdeploy.alerts.config import OutboxSettings, WebhookSink
from postdeploy.config import RepoConfig, WindowSettings
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from postdeploy.probe import Prober
from postdeploy.runner import WindowRunner
from postdeploy.store import ItemStore
from postdeploy.window import Schedule, WindowStart
from support.aio import answering

DEADLINE_S = 30.0
KEY = ItemKey("shop", "release-1")
ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EIO]
POINTS = [layout.ROLLBACK_INTENT, layout.ROLLBACK_RESULT, layout.REPORT, layout.DONE]

HOOK = f"""#!{sys.executable}
import os, sys
item = sys.argv[1]
intent = os.path.exists(os.path.join(item, "rollback.intent"))
with open(sys.argv[2], "a") as f:
    f.write("ran intent=%s\\n" % intent)
print("rolled back")
"""


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """An HTTP service that answers every request 503."""
    reply = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    async with answering(reply) as url:
        yield url


class Faults:
    """Makes the first `times` atomic writes of `name` fail with `code`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plan: dict[str, tuple[int, int]] = {}
        self.refused: list[str] = []
        real = durable.write_atomic_at

        def write_atomic_at(dir_fd: int, name: str, data: bytes, mode: int = 0o664) -> None:
            code, left = self.plan.get(name, (0, 0))
            if left > 0:
                self.plan[name] = (code, left - 1)
                self.refused.append(name)
                raise OSError(code, f"{os.strerror(code)} (injected)")
            real(dir_fd, name, data, mode)

        monkeypatch.setattr(durable, "write_atomic_at", write_atomic_at)
        monkeypatch.setattr(reaction, "WRITE_RETRY_FIRST_S", 0.01)

    def fail(self, name: str, code: int, times: int) -> None:
        self.plan[name] = (code, times)


def make_runner(
    tmp_path: Path, base_url: str, events: list[Event] | None = None, outbox: Outbox | None = None
) -> WindowRunner:
    """A runner of one window (state in `tmp_path/state`), its hook appending to
    `tmp_path/ran`; its events go to `events`, or through a real `outbox`."""
    root = tmp_path / "state"
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    ran = tmp_path / "ran"
    item = root / KEY.repo / KEY.work_item
    item.mkdir(parents=True, exist_ok=True)
    pinned = ItemStore(root, KEY)
    pinned.pin()

    async def emit(event: Event) -> None:
        if events is not None:
            events.append(event)

    async def written_at_once(_: list[str]) -> None:
        """Without an outbox, every event is in `events` when `emit` returns."""

    settings = WindowSettings(
        window_s=5.0,
        interval_s=0.05,
        initial_delay_s=0.0,
        fail_threshold=2,
        probe_timeout_s=1.0,
        auto_rollback=True,
        verify_ticks=0,
        rollback_timeout_s=20.0,
    )
    repo = RepoConfig(
        base_url=base_url,
        auto_rollback=True,
        rollback_command=[str(hook), str(item), str(ran)],
    )
    now = time.time()
    start = WindowStart(Schedule(now, 0.0, 0.05, 100), now, {}, 5.0)
    return WindowRunner(
        pinned,
        start,
        repo,
        settings,
        Prober(),
        outbox.emit if outbox is not None else emit,
        first_seen=True,
        until_written=outbox.until_written if outbox is not None else written_at_once,
    )


def runner_with_outbox(tmp_path: Path, base_url: str) -> tuple[WindowRunner, Outbox]:
    """`make_runner`'s window, its events going to a real outbox in `tmp_path/state` whose
    one sink is never reached (they stay pending, in the outbox's spool)."""
    root = tmp_path / "state"
    root.mkdir(exist_ok=True)
    sink = WebhookSink(type="webhook", url="http://127.0.0.1:9/hook")
    outbox = Outbox(root, [sink], OutboxSettings(retry_initial_s=0.05, retry_max_s=0.1))
    return make_runner(tmp_path, base_url, outbox=outbox), outbox


def read_json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("point", POINTS)
async def test_write_error_on_the_reaction_path_is_retried_and_the_hook_runs_once(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch, point: str, code: int
) -> None:
    faults = Faults(monkeypatch)
    faults.fail(point, code, times=3)
    ran = tmp_path / "ran"
    events: list[Event] = []
    window = make_runner(tmp_path, target, events)
    try:
        with anyio.fail_after(DEADLINE_S):
            await window.run()
    finally:
        await window.prober.aclose()
    item = tmp_path / "state" / KEY.repo / KEY.work_item
    assert faults.refused == [point] * 3  # the fault really hit, three times
    # The decision survived: the hook ran exactly once, after its intent was durable.
    assert ran.read_text().splitlines() == ["ran intent=True"]
    assert read_json(item / layout.ROLLBACK_RESULT)["exit_code"] == 0
    done = read_json(item / layout.DONE)
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert "rolled back" in (item / layout.ROLLBACK_LOG).read_text()
    assert (item / layout.REPORT).exists()
    assert window.completed
    assert [e.kind for e in events if e.kind.startswith("rollback.")] == ["rollback.ok"]


async def test_shutdown_while_the_intent_cannot_be_written_runs_nothing(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that never takes the intent: the hook never runs, and a shutdown ends the wait
    without writing anything, so a restart decides again (nothing was started)."""
    faults = Faults(monkeypatch)
    faults.fail(layout.ROLLBACK_INTENT, errno.ENOSPC, times=10**9)
    ran = tmp_path / "ran"
    window = make_runner(tmp_path, target)
    try:
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(window.run)
                while len(faults.refused) < 3:
                    await anyio.sleep(0.01)
                window.stop(None)
    finally:
        await window.prober.aclose()
    item = tmp_path / "state" / KEY.repo / KEY.work_item
    assert not ran.exists()
    assert not (item / layout.ROLLBACK_INTENT).exists()
    assert not (item / layout.DONE).exists()
    assert not window.completed


async def test_hook_that_fills_the_disk_is_still_recorded_as_run(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror case: the hook succeeds, then the disk is full when its result is written
    (ENOSPC on rollback.json, report.md and done alike, for a while): the record says
    ROLLBACK_OK once the disk takes it, never ERROR / NONE."""
    faults = Faults(monkeypatch)
    for name in (layout.ROLLBACK_RESULT, layout.REPORT, layout.DONE):
        faults.fail(name, errno.ENOSPC, times=4)
    ran = tmp_path / "ran"
    window = make_runner(tmp_path, target)
    try:
        with anyio.fail_after(DEADLINE_S):
            await window.run()
    finally:
        await window.prober.aclose()
    done = read_json(tmp_path / "state" / KEY.repo / KEY.work_item / layout.DONE)
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert ran.read_text().splitlines() == ["ran intent=True"]


async def test_deleted_work_item_ends_its_window_without_a_verdict(
    tmp_path: Path, target: str
) -> None:
    """A work item directory deleted mid-window: the window ends (no endless retries), writes
    nothing anywhere, and a directory made again under the same name is left alone."""
    root = tmp_path / "state"
    window = make_runner(tmp_path, target)
    window.settings = window.settings.model_copy(update={"fail_threshold": 10**6})
    item = root / KEY.repo / KEY.work_item
    try:
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(window.run)
                while window.tally.checks_total < 2:
                    await anyio.sleep(0.01)
                for child in item.iterdir():
                    child.unlink()
                item.rmdir()
                item.mkdir()  # the same name, armed again: a new directory
                (item / "armed").touch()
    finally:
        await window.prober.aclose()
    assert not window.completed
    assert sorted(p.name for p in item.iterdir()) == ["armed"]


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
async def test_done_waits_until_the_windows_events_are_on_disk(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """The outbox's disk refuses the window's events (the real Outbox, its spool writes
    failing with `code`): `done` is not written while they are held in memory only, so a
    crash can never leave a finished window whose alert is lost; once the disk takes them,
    the window finishes."""
    refusing = [True]
    refused: list[str] = []
    real_write = spool_module.Spool.write_event

    def write_event(self: Any, event_id: str, data: Any) -> bool:
        if refusing[0]:
            refused.append(event_id)
            raise OSError(code, f"{os.strerror(code)} (injected)")
        return bool(real_write(self, event_id, data))

    monkeypatch.setattr(spool_module.Spool, "write_event", write_event)
    window, outbox = runner_with_outbox(tmp_path, target)
    root = tmp_path / "state"
    item = root / KEY.repo / KEY.work_item
    try:
        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(outbox.run)
                tg.start_soon(window.run)
                while not (item / layout.ROLLBACK_RESULT).exists() or len(refused) < 6:
                    await anyio.sleep(0.01)
                assert not (item / layout.DONE).exists()  # held back: events not on disk
                refusing[0] = False
                while not window.completed:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    finally:
        await window.prober.aclose()
    pending = root / ".outbox" / "pending"
    kinds = {json.loads((p / "event.json").read_text())["event"]["kind"] for p in pending.iterdir()}
    assert {"window.degraded", "rollback.ok"} <= kinds
    assert read_json(item / layout.DONE)["action_taken"] == "ROLLBACK_OK"


async def test_shutdown_while_events_wait_for_the_disk_pauses_the_window(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown while `done` waits for the window's events (the outbox's disk refuses
    them): the window pauses, nothing is written, and it is not an ERROR (the crash suite
    found `window.error` here: the interruption came out of a task group as an
    ExceptionGroup)."""

    def refuse(self: Any, event_id: str, data: Any) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(spool_module.Spool, "write_event", refuse)
    window, outbox = runner_with_outbox(tmp_path, target)
    item = tmp_path / "state" / KEY.repo / KEY.work_item
    try:
        with anyio.fail_after(DEADLINE_S), capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(outbox.run)
                tg.start_soon(window.run)
                while not (item / layout.ROLLBACK_RESULT).exists():
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # now waiting for its events to reach the disk
                window.stop(None)
                await window.ended.wait()
                tg.cancel_scope.cancel()
    finally:
        await window.prober.aclose()
    assert not (item / layout.DONE).exists()
    assert not window.completed
    events = [line["event"] for line in logs]
    assert "window.paused" in events
    assert "window.error" not in events and "window.error_unrecorded" not in events
