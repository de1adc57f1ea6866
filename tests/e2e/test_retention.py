"""History with the real daemon: finished windows past `retention_days` are removed and open
ones kept; a finished window's name deleted and armed again is a new deploy, also after a
restart; `status` reads the daemon's index and says what it said without it."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postdeploy import history
from support.toml import render_toml

if TYPE_CHECKING:
    from e2e.conftest import Harness


def configure(pd: Harness, repos: dict[str, dict[str, Any]], **top: Any) -> None:
    """`pd.configure`, with top-level keys it does not take (`retention_days`)."""
    pd.configure(repos)
    text = pd.config_path.read_text()
    pd.config_path.write_text(render_toml(top) + text)


def finished_on_disk(pd: Harness, repo: str, item: str, finished_at: float) -> Path:
    """A window that finished while no daemon ran (written the way the daemon writes it)."""
    d = pd.item(repo, item)
    d.mkdir(parents=True)
    (d / "armed").touch()
    when = datetime.fromtimestamp(finished_at, UTC).isoformat()
    done = {
        "status": "HEALTHY",
        "action_taken": "NONE",
        "reason": "all good",
        "checks_total": 4,
        "checks_failed": 0,
        "window_s": 1.0,
        "finished_at": when,
    }
    (d / "done").write_text(json.dumps(done))
    return d


def test_retention_removes_finished_windows_and_keeps_open_ones(pd: Harness) -> None:
    """retention_days = 0.00001 (0.86 s): a window finished long ago goes at start-up, one
    that finishes while the daemon runs goes soon after; the open one stays and goes on."""
    configure(
        pd,
        {"shop": pd.repo(), "long": pd.repo(window_s=60.0)},
        retention_days=0.00001,
    )
    outside = pd.tmp / "precious.txt"
    outside.write_text("keep me")
    old = finished_on_disk(pd, "shop", "old", time.time() - 3600)
    (old / "report.md").symlink_to(outside)  # removed as a link, never followed
    run = pd.start()
    pd.arm("long", "open")
    pd.arm("shop", "w1")
    run.wait_for("window.finished", work_item="w1")

    def swept() -> list[str]:
        return sorted(w for line in run.find("history.swept") for w in line["work_items"])

    pd.wait_until("the finished windows removed", lambda: len(swept()) == 2)
    assert swept() == ["shop/old", "shop/w1"]
    assert not old.exists() and not pd.item("shop", "w1").exists()
    assert outside.read_text() == "keep me"
    # The open window is still there, and still probed.
    rows = len(pd.rows("long", "open"))
    pd.wait_rows("long", "open", rows + 1)
    assert not (pd.item("long", "open") / "done").exists()
    assert not run.find("history.kept")


def test_a_finished_name_deleted_and_armed_again_is_a_new_window(pd: Harness) -> None:
    """Deleting a finished window's directory and arming the same name again arms a new
    deploy, whether the daemon saw the first window finish or read it from its journal."""
    configure(pd, {"shop": pd.repo()})
    run = pd.start()
    pd.arm("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    first = pd.done("shop", "w1")
    shutil.rmtree(pd.item("shop", "w1"))
    pd.arm("shop", "w1")
    pd.wait_until("a second window of w1", lambda: len(run.find("window.armed")) == 2)
    run.wait_for("window.finished", work_item="w1", timeout=30.0)
    pd.wait_until("w1's second done", lambda: (pd.item("shop", "w1") / "done").exists())
    assert pd.done("shop", "w1")["finished_at"] != first["finished_at"]
    pd.wait_until("w1 journalled", lambda: "w1\t" in journal_text(pd, "shop"))
    run.stop()

    run = pd.start()  # the index from the journal: w1 is not looked at again...
    ready = run.wait_for("daemon.ready")
    assert ready["finished_windows"] == 1 and ready["open_windows"] == 0
    shutil.rmtree(pd.item("shop", "w1"))  # ... until it is made anew
    pd.arm("shop", "w1")
    run.wait_for("window.armed", work_item="w1")
    run.wait_for("window.finished", work_item="w1")


def journal_text(pd: Harness, repo: str) -> str:
    path = pd.state / repo / history.JOURNAL
    return path.read_text() if path.exists() else ""


def test_status_reads_the_index_and_says_the_same(pd: Harness) -> None:
    """`status --json` before any daemon ran (every directory opened) and after one has
    indexed the finished windows (none opened) is the same, but for `now`."""
    configure(pd, {"shop": pd.repo(), "billing": pd.repo()})
    base = time.time() - 600
    for i in range(30):  # more than status lists; two finishing at the same moment
        finished_on_disk(pd, ("shop", "billing")[i % 2], f"w{i:02d}", base + i // 2)
    (pd.item("shop", "w04") / "done").write_text("{not json")

    def status() -> dict[str, Any]:
        result = pd.cli("status", "--json", "--config", str(pd.config_path))
        assert result.returncode == 0, result.stderr
        value: dict[str, Any] = json.loads(result.stdout)
        value.pop("now")
        return value

    before = status()
    run = pd.start()
    pd.wait_until(
        "30 windows journalled",
        lambda: sum(journal_text(pd, r).count("\n") for r in ("shop", "billing")) == 30,
    )
    run.stop()
    assert status() == before
    assert [r["work_item"] for r in before["recent"][:3]] == ["w29", "w28", "w27"]
