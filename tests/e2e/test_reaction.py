"""What the daemon does about a verdict: alert, roll back, or nothing (superseded, cancelled,
disabled)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Harness, Run


def rollback_repo(pd: Harness, mode: str = "ok", **overrides: Any) -> dict[str, Any]:
    """A repo that rolls back automatically with the test hook."""
    table: dict[str, Any] = {
        "auto_rollback": True,
        "rollback_command": pd.hook(mode),
        "rollback_env": {"TARGET_SERVICE": "shop"},
        "window_s": 5.0,
    }
    table.update(overrides)
    return pd.repo(**table)


def place_armed(pd: Harness, repo: str, work_item: str, mtime: float) -> Path:
    """Arm with a given sentinel time, as a deploy script that lost a race would: written
    under a hidden name, dated, then renamed into place, so the daemon only sees the result."""
    item = pd.item(repo, work_item)
    item.mkdir(parents=True, exist_ok=True)
    tmp = item / ".armed.tmp"
    tmp.write_text("")
    os.utime(tmp, (mtime, mtime))
    return tmp.rename(item / "armed")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_self_hosting_repo_only_alerts_even_with_auto_rollback(pd: Harness) -> None:
    """A self-hosting repo never rolls back: ALERT_ONLY, and the hook never runs."""
    pd.configure({"shop": rollback_repo(pd, self_hosting=True)})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")

    run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    assert pd.hook_calls() == []
    assert not run.find("rollback.started")


def test_auto_rollback_runs_the_hook_once_with_its_environment(pd: Harness) -> None:
    """DEGRADED with auto_rollback: the hook runs once, in its own process group, with the
    contract's environment -> ROLLBACK_OK."""
    pd.configure({"shop": rollback_repo(pd)}, log_level="debug")
    pd.service.set(health="fail")
    run = pd.start()
    pd.arm("shop", "w1", "commit=abc123", "branch=main", "ticket=PD-7")

    run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert pd.report_front_matter("shop", "w1")["action_taken"] == "ROLLBACK_OK"

    calls = pd.hook_calls()
    assert len(calls) == 1
    call = calls[0]
    assert call["POSTDEPLOY_REPO"] == "shop"
    assert call["POSTDEPLOY_WORK_ITEM"] == "w1"
    assert call["POSTDEPLOY_REASON"].strip()
    assert call["POSTDEPLOY_META_COMMIT"] == "abc123"
    assert call["POSTDEPLOY_META_BRANCH"] == "main"
    assert call["POSTDEPLOY_META_TICKET"] == "PD-7"  # unknown keys are passed on too
    assert call["TARGET_SERVICE"] == "shop"  # from rollback_env
    assert call["argv"] == [str(pd.calls), "ok"]  # the configured argv, untouched
    assert call["pgid"] == call["pid"], "the hook runs in a process group of its own"
    assert call["ppid"] == run.pid


@pytest.mark.parametrize("mode", ["fail", "missing", "hang"])
def test_failing_hook_is_rollback_failed(pd: Harness, mode: str) -> None:
    """A hook that exits non-zero, cannot start, or outlives rollback_timeout_s:
    ROLLBACK_FAILED, loudly, and it is not retried."""
    argv = pd.hook(mode)
    if mode == "missing":
        argv[0] = str(pd.tmp / "no-such-hook")
    pd.configure({"shop": rollback_repo(pd, rollback_timeout_s=0.5, rollback_command=argv)})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")

    finished = run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_FAILED")
    assert finished["level"] in ("error", "critical"), "a failed rollback is loud"
    calls = pd.hook_calls()
    assert len(calls) == (0 if mode == "missing" else 1)
    if mode == "hang":
        # The timeout kills the hook's whole process group, its background child too.
        for pid in (calls[0]["pid"], calls[0]["child"]):

            def gone(pid: int = pid) -> bool:
                return not alive(pid)

            pd.wait_until(f"pid {pid} to be gone", gone)


def w1_superseded_w2_rolled_back(pd: Harness, run: Run) -> None:
    """w1 ends SUPERSEDED with no reaction; w2 is DEGRADED and rolled back, the hook running
    for it alone."""
    run.wait_for("window.finished", work_item="w1")
    old = pd.done("shop", "w1")
    assert (old["status"], old["action_taken"]) == ("SUPERSEDED", "NONE")
    run.wait_for("window.finished", work_item="w2")
    new = pd.done("shop", "w2")
    assert (new["status"], new["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert [call["POSTDEPLOY_WORK_ITEM"] for call in pd.hook_calls()] == ["w2"]


def test_newer_window_supersedes_the_older_one_without_reaction(pd: Harness) -> None:
    """Two windows of one repo: the older ends SUPERSEDED with no reaction; the newer one
    reacts on its own."""
    # The first tick comes 1.5 s after arming, so w1 cannot reach a verdict before w2 exists.
    pd.configure({"shop": rollback_repo(pd, initial_delay_s=1.5)})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.armed", work_item="w1")
    pd.touch_armed("shop", "w2")
    w1_superseded_w2_rolled_back(pd, run)


def test_older_window_found_later_is_superseded(pd: Harness) -> None:
    """A window armed earlier but found after the current one is superseded at once."""
    pd.configure({"shop": rollback_repo(pd, initial_delay_s=1.5)})
    pd.service.set(health="fail")
    run = pd.start()
    newer = pd.touch_armed("shop", "w2")
    run.wait_for("window.armed", work_item="w2")
    place_armed(pd, "shop", "w1", newer.stat().st_mtime - 1.0)
    w1_superseded_w2_rolled_back(pd, run)


def test_equal_armed_times_keep_the_larger_work_item(pd: Harness) -> None:
    """Two sentinels with the same time: the larger work_item name is current."""
    pd.configure({"shop": pd.repo(window_s=0.6, initial_delay_s=1.0)})
    run = pd.start()
    now = time.time()
    place_armed(pd, "shop", "r-b", now)
    place_armed(pd, "shop", "r-a", now)

    run.wait_for("window.finished", work_item="r-a")
    run.wait_for("window.finished", work_item="r-b")
    assert pd.done("shop", "r-a")["status"] == "SUPERSEDED"
    assert pd.done("shop", "r-b")["status"] == "HEALTHY"


def test_older_window_found_after_the_newer_one_finished_is_superseded(pd: Harness) -> None:
    """The window with the latest armed_at is current even once it has finished: an older
    deploy's sentinel that shows up afterwards must not be judged nor roll back again."""
    pd.configure({"shop": rollback_repo(pd, fail_threshold=2)})
    pd.service.set(health="fail")
    run = pd.start()
    newer = pd.touch_armed("shop", "w2")
    run.wait_for("window.finished", work_item="w2")
    assert pd.done("shop", "w2")["action_taken"] == "ROLLBACK_OK"

    place_armed(pd, "shop", "w1", newer.stat().st_mtime - 0.5)
    run.wait_for("window.finished", work_item="w1")
    assert pd.done("shop", "w1")["status"] == "SUPERSEDED"
    assert len(pd.hook_calls()) == 1


def test_cancel_ends_the_window_without_reaction(pd: Harness) -> None:
    """`postdeploy cancel` on a failing window: CANCELLED/NONE, no rollback, no more probes."""
    pd.configure({"shop": rollback_repo(pd, fail_threshold=100)})
    pd.service.set(health="fail")
    run = pd.start()
    pd.arm("shop", "w1")
    pd.wait_rows("shop", "w1", 1)

    result = pd.cli("cancel", "shop", "w1", "--config", str(pd.config_path))
    assert result.returncode == 0, result.stderr
    assert (pd.item("shop", "w1") / "cancel").exists()

    run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("CANCELLED", "NONE")
    assert pd.hook_calls() == []
    rows = len(pd.rows("shop", "w1"))
    assert done["checks_total"] == rows
    assert run.stop(signal.SIGTERM) == 0
    assert len(pd.rows("shop", "w1")) == rows, "probing went on after the cancel"


def test_kill_switch_disables_open_and_new_windows(pd: Harness) -> None:
    """`enabled = false`: an open window and a new one both end DISABLED, with no reaction."""
    pd.configure({"shop": rollback_repo(pd, fail_threshold=100)})
    pd.service.set(health="fail")
    run = pd.start_window("shop", "w1")
    assert run.stop(signal.SIGTERM) == 0
    assert not (pd.item("shop", "w1") / "done").exists()
    rows_before = pd.rows("shop", "w1")

    pd.configure({"shop": rollback_repo(pd, fail_threshold=100)}, enabled=False)
    run = pd.start()
    run.wait_for("window.finished", work_item="w1")
    assert pd.done("shop", "w1")["status"] == "DISABLED"
    assert pd.done("shop", "w1")["action_taken"] == "NONE"

    hits = pd.service.hits("/health")
    pd.touch_armed("shop", "w2")
    run.wait_for("window.finished", work_item="w2")
    done = pd.done("shop", "w2")
    assert (done["status"], done["action_taken"]) == ("DISABLED", "NONE")

    assert pd.rows("shop", "w1") == rows_before
    assert pd.rows("shop", "w2") == []
    assert pd.service.hits("/health") == hits, "a disabled daemon probed"
    assert pd.hook_calls() == []


def test_kill_switch_by_reload_disables_the_open_window(pd: Harness) -> None:
    """`enabled = false` loaded with SIGHUP (the documented reload) ends the open window as
    DISABLED at once, and the next one too."""
    pd.configure({"shop": rollback_repo(pd, fail_threshold=100)})
    pd.service.set(health="fail")
    run = pd.start_window("shop", "w1")

    pd.configure({"shop": rollback_repo(pd, fail_threshold=100)}, enabled=False)
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for("window.finished", work_item="w1")
    assert pd.done("shop", "w1")["status"] == "DISABLED"
    pd.touch_armed("shop", "w2")
    run.wait_for("window.finished", work_item="w2")
    assert pd.done("shop", "w2")["status"] == "DISABLED"
    assert pd.rows("shop", "w2") == []
    assert pd.hook_calls() == []
