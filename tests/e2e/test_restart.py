"""Restarts: a crash (SIGKILL) or a stop (SIGTERM) mid-window, a window that ended or was
armed while the daemon was down, and a crash between a rollback's start and its result."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Harness, Run

DEADLINE_S = 30.0


def strictly_increasing(ticks: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ticks))


def start_failing_window(pd: Harness, hook: str, fail_threshold: int) -> Run:
    """The daemon watching shop/w1, armed, whose health fails: after `fail_threshold` probes
    the hook runs in mode `hook` (see `Harness.hook`)."""
    repo = pd.repo(
        auto_rollback=True,
        rollback_command=pd.hook(hook),
        fail_threshold=fail_threshold,
        window_s=5.0,
    )
    pd.configure({"shop": repo})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    return run


def test_sigkill_mid_window_then_restart_keeps_rows_and_rolls_back_once(pd: Harness) -> None:
    """Killed after a few failed probes, the daemon resumes the same window: the rows kept,
    no tick number twice, the verdict reached on the whole series, the hook run once."""
    run = start_failing_window(pd, "ok", fail_threshold=6)
    pd.wait_rows("shop", "w1", 2)
    assert run.kill() == -signal.SIGKILL
    before = pd.rows("shop", "w1")
    assert len(before) < 6, "the verdict came before the kill; the test proves nothing"

    run = pd.start()
    run.wait_for("window.finished", work_item="w1")
    rows = pd.rows("shop", "w1")
    assert rows[: len(before)] == before
    ticks = [row["tick"] for row in rows]
    assert strictly_increasing(ticks), ticks
    assert len(rows) == 6  # six failed probes in a row, counted across the restart
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert (done["checks_total"], done["checks_failed"]) == (6, 6)
    assert len(pd.hook_calls()) == 1


def test_window_that_ended_while_down_gets_one_catch_up_probe(pd: Harness) -> None:
    """The window's end passed while the daemon was down: one catch-up row, then the verdict."""
    interval, delay, max_ticks = 0.3, 0.3, 5
    pd.configure(
        {
            "shop": pd.repo(
                window_s=interval * max_ticks,
                interval_s=interval,
                initial_delay_s=delay,
                probe_timeout_s=0.25,
            )
        }
    )
    run = pd.start()
    armed = pd.touch_armed("shop", "w1")
    pd.wait_rows("shop", "w1", 1)
    assert run.kill() == -signal.SIGKILL
    before = pd.rows("shop", "w1")
    assert before[-1]["tick"] < max_ticks - 1, "the window ended before the kill"

    end = armed.stat().st_mtime + delay + (max_ticks - 1) * interval
    pd.wait_until("the window's end", lambda: time.time() > end + 0.1)

    run = pd.start()
    run.wait_for("window.finished", work_item="w1")
    rows = pd.rows("shop", "w1")
    assert rows[: len(before)] == before
    assert len(rows) == len(before) + 1, "missed ticks were invented"
    catch_up = rows[-1]
    assert catch_up.get("catch_up") is True
    assert catch_up["tick"] == before[-1]["tick"] + 1
    assert catch_up["scheduled_ts"] > end
    assert not any(row.get("catch_up") for row in before)
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("HEALTHY", "NONE")
    assert done["checks_total"] == len(rows)


def test_window_armed_and_ended_while_down_is_missed(pd: Harness) -> None:
    """A sentinel first seen after its window's end is MISSED, loudly, and never probed."""
    pd.configure({"shop": pd.repo(window_s=1.0)})
    armed = pd.touch_armed("shop", "w1", '{"commit": "abc123"}\n')
    long_ago = time.time() - 60
    os.utime(armed, (long_ago, long_ago))

    run = pd.start()
    finished = run.wait_for("window.finished", work_item="w1")
    assert finished["level"] in ("warning", "error", "critical"), "MISSED must be loud"
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("MISSED", "NONE")
    assert done["checks_total"] == 0
    assert pd.rows("shop", "w1") == []
    assert pd.service.hits("/health") == 0


def test_crash_between_rollback_intent_and_result_is_rollback_unknown(pd: Harness) -> None:
    """The hook kills the daemon (its parent) mid-rollback: after the restart the outcome is
    ROLLBACK_UNKNOWN and the hook is never run again."""
    run = start_failing_window(pd, "kill-parent", fail_threshold=2)
    try:
        code = run.proc.wait(DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the hook did not kill the daemon\n{run.tail()}")
    assert code == -signal.SIGKILL
    calls = pd.hook_calls()
    assert len(calls) == 1
    assert calls[0]["ppid"] == run.pid, "the hook's parent is the daemon itself"
    assert not (pd.item("shop", "w1") / "done").exists()

    run = pd.start()
    finished = run.wait_for("window.finished", work_item="w1")
    assert finished["level"] in ("error", "critical")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_UNKNOWN")
    assert len(pd.hook_calls()) == 1
    assert run.stop() == 0

    # And never again, however often the daemon restarts.
    run = pd.start()
    assert run.stop() == 0
    assert len(pd.hook_calls()) == 1
    assert pd.done("shop", "w1") == done


def test_sigterm_stops_gracefully_and_the_window_resumes(pd: Harness) -> None:
    """SIGTERM: exit 0 with the window left open; the next daemon resumes and finishes it."""
    pd.configure(
        {"shop": pd.repo(window_s=3.0, interval_s=0.25, initial_delay_s=0.25, probe_timeout_s=0.2)}
    )
    run = pd.start()
    armed = pd.touch_armed("shop", "w1")
    pd.wait_rows("shop", "w1", 2)
    assert run.stop(signal.SIGTERM) == 0
    assert run.find("daemon.stopped")
    assert not (pd.item("shop", "w1") / "done").exists()
    before = pd.rows("shop", "w1")
    # A touch while the daemon is down moves nothing: the start was recorded when first seen.
    armed_at = armed.stat().st_mtime
    os.utime(armed)

    run = pd.start()
    run.wait_for("window.finished", work_item="w1")
    rows = pd.rows("shop", "w1")
    assert rows[: len(before)] == before
    assert len(rows) > len(before), "the window was not resumed"
    ticks = [row["tick"] for row in rows]
    assert strictly_increasing(ticks), ticks
    for row in rows:
        if not row.get("catch_up"):
            expected = armed_at + 0.25 + row["tick"] * 0.25
            assert row["scheduled_ts"] == pytest.approx(expected, abs=1e-3)
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("HEALTHY", "NONE")
    assert done["checks_total"] == len(rows)


def test_window_that_cannot_be_resumed_ends_as_error_and_others_go_on(pd: Harness) -> None:
    """A window under way whose own files break (its series becomes a directory) finishes as
    ERROR, loudly; the daemon and the other windows go on. (A new window with such a file is
    rejected instead: see the chaos suite.)"""
    pd.configure({"shop": pd.repo(window_s=30.0), "blog": pd.repo(window_s=1.0)})
    first = pd.start()
    pd.touch_armed("shop", "w1")
    pd.wait_rows("shop", "w1", 1)
    first.kill()
    series = pd.item("shop", "w1") / "series.jsonl"
    series.unlink()
    series.mkdir()

    run = pd.start()
    pd.touch_armed("blog", "b1")
    run.wait_for("window.finished", repo="blog", work_item="b1")
    assert pd.done("blog", "b1")["status"] == "HEALTHY"
    # By now the broken window has long had its verdict: its task failed at once.
    finished = run.wait_for("window.finished", repo="shop", work_item="w1", timeout=3)
    assert finished["level"] in ("error", "critical")
    assert pd.done("shop", "w1")["status"] == "ERROR"
    assert run.proc.poll() is None
