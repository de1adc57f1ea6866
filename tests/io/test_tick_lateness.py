"""A tick that runs late, or after skipped ticks, is logged as such, with its likely cause.

A real `WindowRunner` against a real HTTP target; the disk is made slow for one append by
wrapping the store's append (it sleeps in the worker thread, as a stalled disk
would), so the window's next tick can only start late."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import aiofiles.os
import anyio
import pytest
from structlog.testing import capture_logs

from postdeploy import store
from postdeploy.config import RepoConfig, WindowSettings
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from postdeploy.observe import LATE_TICK_S
from postdeploy.probe import Prober
from postdeploy.runner import WindowRunner
from postdeploy.store import ItemStore
from postdeploy.window import Schedule, WindowStart
from support.aio import answering

KEY = ItemKey("shop", "release-1")


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """An HTTP service that answers every request 200 with a JSON body."""
    body = b'{"status": "ok"}'
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    async with answering(reply) as url:
        yield url


async def run_window(
    tmp_path: Path, target: str, armed: float, ticks: int
) -> list[MutableMapping[str, Any]]:
    """Run one first-seen window of `ticks` ticks every 0.1 s from `armed`; its log lines."""
    (tmp_path / KEY.repo / KEY.work_item).mkdir(parents=True)

    async def emit(_: Event) -> None:
        pass

    window_s = ticks * 0.1
    window = WindowRunner(
        ItemStore(tmp_path, KEY),
        WindowStart(Schedule(armed, 0.0, 0.1, ticks), armed, {}, window_s),
        RepoConfig(base_url=target),
        WindowSettings(
            window_s=window_s, interval_s=0.1, initial_delay_s=0.0, probe_timeout_s=0.09
        ),
        Prober(),
        emit,
        first_seen=True,
    )
    try:
        with capture_logs() as logs, anyio.fail_after(30):
            await window.run()
    finally:
        await window.prober.aclose()
    return logs


async def test_a_slow_append_makes_the_next_tick_late_and_says_so(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ItemStore.append_lines_sync
    appends: list[int] = []

    def slow_once(self: ItemStore, name: str, data: bytes) -> None:
        appends.append(1)
        if len(appends) == 2:
            time.sleep(LATE_TICK_S + 0.3)
        real(self, name, data)

    monkeypatch.setattr(store, "_append", aiofiles.os.wrap(slow_once))
    # Armed a little ahead: a slow start on a loaded machine is no late take-up here.
    logs = await run_window(tmp_path, target, time.time() + 0.2, 30)
    said = [line for line in logs if line["event"] in ("tick.late", "tick.skipped")]
    assert said, f"the late tick was not logged: {[line['event'] for line in logs]}"
    first = said[0]
    assert first["event"] == "tick.skipped" and first["skipped"] >= 1
    assert first["late_s"] >= 0
    assert "slow disk" in first["cause"]
    assert os.path.exists(tmp_path / KEY.repo / KEY.work_item / "done")


async def test_ticks_due_before_a_late_take_up_are_said_to_be_skipped(
    tmp_path: Path, target: str
) -> None:
    """A window first seen after its first ticks were due (its arm found by the rescan, say)
    starts at the latest due tick; the ticks before it are logged as skipped, with that cause,
    and counted in `ticks_missed`."""
    # Ticks 0-3 (every 0.1 s from armed_at) are due already.
    logs = await run_window(tmp_path, target, time.time() - 0.35, 8)
    said = [line for line in logs if line["event"] == "tick.skipped"]
    assert said, f"nothing said: {[line['event'] for line in logs]}"
    first = said[0]
    assert first["skipped"] == first["tick"] >= 3
    assert "found late" in first["cause"]
    done = json.loads((tmp_path / KEY.repo / KEY.work_item / "done").read_text())
    assert done["ticks_missed"] >= first["skipped"]
