"""Faults production has, end to end through the real daemon: a second daemon on the same
state directory, a supersede storm, a work item directory deleted mid-window."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from support.env import child_env

if TYPE_CHECKING:
    from e2e.conftest import Harness

DEADLINE_S = 30.0


def test_second_daemon_on_the_same_state_dir_refuses_at_once(pd: Harness) -> None:
    """One daemon per state directory: a second `postdeploy run` exits 1 at once, naming the
    holder's pid, and touches no window; once the first is SIGKILLed (its lock file stays
    behind) a new daemon starts normally."""
    pd.configure({"shop": pd.repo(auto_rollback=True, rollback_command=pd.hook("ok"))})
    first = pd.start()
    second = subprocess.run(
        [sys.executable, "-m", "postdeploy", "run", "--config", str(pd.config_path)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        cwd=pd.tmp,
        env=child_env(),
    )
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stdout
    assert "daemon.state_dir_unavailable" in second.stdout
    assert "daemon.ready" not in second.stdout
    assert first.kill() == -signal.SIGKILL
    assert (pd.state / ".lock").exists()  # stale, and harmless: the kernel released it
    third = pd.start()
    pd.touch_armed("shop", "w1")
    third.wait_for("window.finished", work_item="w1")


def test_supersede_storm_logs_each_window_once(pd: Harness) -> None:
    """300 windows of one repo armed in the same instant: every window but the newest ends
    SUPERSEDED, and each is logged as superseded once (before: once per window armed after
    it, quadratic in the storm)."""
    pd.configure({"shop": pd.repo()}, defaults={"window_s": 3.0})
    run = pd.start()
    names = [f"w{i:04d}" for i in range(300)]
    staging = pd.tmp / "staging"
    instant = time.time() - 0.5
    for name in names:
        (staging / name).mkdir(parents=True)
        (staging / name / "armed").write_text("")
        os.utime(staging / name / "armed", (instant, instant))  # one instant: ties go by name
    (pd.state / "shop").mkdir(parents=True)
    for name in names:  # each rename is atomic: a whole item appears at once
        (staging / name).rename(pd.state / "shop" / name)
    pd.wait_until(
        "every superseded window is finished",
        lambda: all((pd.item("shop", n) / "done").exists() for n in names[:-1]),
    )
    counts = Counter(line["work_item"] for line in run.find("window.superseded"))
    assert set(counts) == set(names[:-1])
    assert max(counts.values()) == 1
    assert all(pd.done("shop", n)["status"] == "SUPERSEDED" for n in names[:-1])


def test_deleted_work_item_ends_its_window_and_the_name_can_be_armed_again(
    pd: Harness,
) -> None:
    """`rm -rf` of an open window's directory, then the same name armed again at once: the
    old window ends (logged, no reaction, no endless retries) and the new deploy is watched
    as a new window with its own series and verdict."""
    pd.configure(
        {"shop": pd.repo(auto_rollback=True, rollback_command=pd.hook("ok"))},
        defaults={"window_s": 2.0},
    )
    run = pd.start_window("shop", "w1", rows=2)
    shutil.rmtree(pd.item("shop", "w1"))
    pd.touch_armed("shop", "w1")
    run.wait_for("window.vanished", work_item="w1")
    run.wait_for("window.finished", work_item="w1", status="HEALTHY")
    rows = pd.rows("shop", "w1")
    assert rows[0]["tick"] == 0
    assert len(rows) == pd.done("shop", "w1")["checks_total"]
    assert pd.hook_calls() == []
    assert len(run.find("window.armed", work_item="w1")) == 2
    assert not run.find("window.write_failed")


def test_deleting_rejected_retries_the_item_without_a_restart(pd: Harness) -> None:
    """The README's promise: fix `armed`, delete `rejected`, and the daemon looks again within
    its rescan interval (before: a rejected item was never looked at until a restart)."""
    pd.configure({"shop": pd.repo()})
    run = pd.start()
    pd.touch_armed("shop", "w1", "{not json")
    rejected = pd.item("shop", "w1") / "rejected"
    pd.wait_until("the rejection", rejected.exists)
    pd.touch_armed("shop", "w1", '{"commit": "abc1234"}')
    rejected.unlink()
    run.wait_for("window.finished", work_item="w1", status="HEALTHY")
    assert json.loads((pd.item("shop", "w1") / "window.json").read_text())["metadata"] == {
        "commit": "abc1234"
    }


def test_the_seed_writers_armed_text_means_no_metadata(pd: Harness) -> None:
    pd.configure({"shop": pd.repo()})
    run = pd.start()
    pd.touch_armed("shop", "w1", "armed\n")
    run.wait_for("window.finished", work_item="w1", status="HEALTHY")
    assert not (pd.item("shop", "w1") / "rejected").exists()


def test_a_hung_dns_lookup_delays_no_other_window(pd: Harness, tmp_path: Path) -> None:
    """One repo's host name takes 120 s to resolve (libc's getaddrinfo hangs: an LD_PRELOAD
    shim): its window fails its ticks with "name resolution timed out", and the four other
    repos' windows probe their ticks (before: the lookups filled the thread pool the series
    appends share, and the healthy windows stalled until the lookups gave up). At most one
    tick of each may be skipped: this runs on loaded CI machines, and a skip there is load,
    not DNS; the old code missed nearly all of them."""
    from support.dns_shim import HUNG_NAME, build_hung_dns_shim

    shim = build_hung_dns_shim(tmp_path)
    port = pd.service.url.rsplit(":", 1)[1]
    healthy = [f"ok{i}" for i in range(4)]
    pd.configure(
        {
            "hung": pd.repo(
                base_url=f"http://{HUNG_NAME}:{port}", fail_threshold=100, fivexx_paths=[]
            ),
            **{name: pd.repo() for name in healthy},
        },
        defaults={"window_s": 3.0, "interval_s": 0.5, "probe_timeout_s": 0.3},
    )
    run = pd.start(env={"LD_PRELOAD": str(shim)})
    for name in ["hung", *healthy]:
        pd.touch_armed(name, "w1")
    for name in ["hung", *healthy]:
        run.wait_for("window.finished", work_item="w1", repo=name)
    for name in healthy:
        done = pd.done(name, "w1")
        assert done["status"] == "HEALTHY"
        assert done["checks_total"] + done["ticks_missed"] == 6
        assert done["ticks_missed"] <= 1, done
    rows = pd.rows("hung", "w1")
    assert len(rows) >= 5
    assert all("name resolution timed out" in row["detail"] for row in rows)
