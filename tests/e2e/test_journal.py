"""What journald shows: a window going bad before its verdict, and what a reload changed."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2e.conftest import Harness


def test_failed_probes_below_the_threshold_are_logged_with_the_streak(pd: Harness) -> None:
    pd.configure({"shop": pd.repo()})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    streaks = [line["streak"] for line in run.find("probe.failed", work_item="w1")]
    assert streaks[:3] == [
        f"health failed {n} of 3; 5xx 0/{2 * n} (over 0.2 after 4)" for n in (1, 2, 3)
    ]
    first = run.find("probe.failed", work_item="w1")[0]
    degraded = run.find("window.degraded", work_item="w1")[0]
    assert first["level"] == "info"
    assert run.lines.index(first) < run.lines.index(degraded)


def test_config_reloaded_says_what_changed(pd: Harness) -> None:
    pd.configure({"shop": pd.repo()})
    run = pd.start()
    pd.configure({"shop": pd.repo(fail_threshold=5), "web": pd.repo()})
    run.proc.send_signal(signal.SIGHUP)
    line = run.wait_for("config.reloaded")
    assert "repos.shop.fail_threshold" in line["changed"]
    assert "repos.web (added)" in line["changed"]


def test_first_start_without_a_state_dir_logs_no_error(pd: Harness) -> None:
    """The daemon makes the state directory before anything reads it: a first start on a
    new host logs no error (it used to log `outbox.unreadable`)."""
    pd.configure({"shop": pd.repo()})
    assert not pd.state.exists()
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    assert run.stop() == 0
    assert [line for line in run.lines if line.get("level") in ("error", "critical")] == []
