"""The daemon under a fake systemd: READY after recovery, WATCHDOG, RELOADING, STOPPING, and
what SIGHUP does with a good and a broken config, and exit code 2 on an invalid one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy.daemon import EXTEND_STOP_S
from postdeploy.notify import Notifier

if TYPE_CHECKING:
    from ops.conftest import Ops


def test_ready_after_recovery_then_watchdog_reload_and_stop(ops: Ops) -> None:
    """READY=1 comes only once every open window on disk is taken up again; then WATCHDOG=1
    keeps coming, SIGHUP gives RELOADING=1 (with MONOTONIC_USEC) then READY=1, and SIGTERM
    gives STOPPING=1 and a clean exit that leaves the open windows open."""
    # Windows long enough to stay open for the whole test (the daemon is stopped at the end).
    # Two repos: a second window of the same repo would supersede the first.
    ops.write_config(repos={"shop": ops.repo(window_s=60.0), "billing": ops.repo(window_s=60.0)})
    # An earlier daemon took up `w1` and probed it, then died without a word (SIGKILL)...
    first = ops.start(name="first")
    first.wait_for("daemon.ready")
    ops.arm("shop", "w1")
    ops.wait_until(lambda: ops.rows("shop", "w1"), "a first probe of w1")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # ... and `billing/w2` was armed while no daemon ran.
    ops.arm("billing", "w2")

    notify = ops.notify_socket()
    daemon = ops.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})

    ready = notify.wait_for(lambda m: m.get("READY") == "1")
    # READY's own STATUS says both windows were taken up before it was sent.
    assert notify.fields()[ready]["STATUS"] == "watching 2 open windows"
    assert (ops.item("billing", "w2") / "window.json").is_file()
    line = daemon.wait_for("daemon.ready")
    assert line["open_windows"] == 2
    assert line["work_items_found"] == 2
    daemon.wait_for("window.resumed", repo="shop", work_item="w1")

    # The watchdog: WATCHDOG=1 every WATCHDOG_USEC/2, from the event loop.
    index = ready
    for _ in range(3):
        index = notify.wait_for(lambda m: m.get("WATCHDOG") == "1", after=index + 1)

    daemon.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1", after=index + 1)
    usec = notify.fields()[reloading]["MONOTONIC_USEC"]
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - int(usec) < 30_000_000  # CLOCK_MONOTONIC, when the reload began
    reloaded = notify.wait_for(lambda m: m.get("READY") == "1", after=reloading + 1)
    assert notify.fields()[reloaded]["STATUS"] == "config reloaded"
    daemon.wait_for("config.reloaded")

    daemon.proc.send_signal(signal.SIGTERM)
    notify.wait_for(lambda m: m.get("STOPPING") == "1", after=reloaded + 1)
    assert daemon.stop(None) == 0
    daemon.wait_for("daemon.stopped")
    # No reaction was running: nothing asked systemd for more time to stop.
    assert not [m for m in notify.fields() if "EXTEND_TIMEOUT_USEC" in m]
    # Stopping pauses the open windows: they are resumed by the next start, not judged now.
    for repo, item in (("shop", "w1"), ("billing", "w2")):
        daemon.wait_for("window.paused", repo=repo, work_item=item)
        assert not (ops.item(repo, item) / "done").exists()


# A rollback hook that says it started (touches argv[1]), then runs until argv[2] exists.
HELD_HOOK = """
import pathlib, sys, time
pathlib.Path(sys.argv[1]).touch()
deadline = time.monotonic() + 120
while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def test_a_rollback_running_at_stop_extends_the_stop_timeout(ops: Ops) -> None:
    """SIGTERM while a rollback hook runs: the daemon waits for it, and meanwhile keeps
    asking systemd for more time (EXTEND_TIMEOUT_USEC, again and again), so TimeoutStopSec
    never SIGKILLs it mid-rollback; the verdict is written and the exit is clean."""
    started, release = ops.tmp / "hook-started", ops.tmp / "hook-release"
    hook = [sys.executable, "-c", HELD_HOOK, str(started), str(release)]
    shop = ops.repo(
        fail_threshold=2,
        auto_rollback=True,
        rollback_command=hook,
        rollback_timeout_s=120.0,
        verify_ticks=0,
    )
    ops.write_config(repos={"shop": shop})
    notify = ops.notify_socket()
    daemon = ops.start(env={"NOTIFY_SOCKET": str(notify.path)})
    daemon.wait_for("daemon.ready")
    ops.service.set(health="fail")
    ops.arm("shop", "w1")
    ops.wait_until(started.exists, "the rollback hook to start")

    daemon.proc.send_signal(signal.SIGTERM)
    stopping = notify.wait_for(lambda m: m.get("STOPPING") == "1")
    first = notify.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m, after=stopping + 1)
    second = notify.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m, after=first + 1)
    for index in (first, second):
        assert notify.fields()[index]["EXTEND_TIMEOUT_USEC"] == str(int(EXTEND_STOP_S * 1e6))
    status = notify.wait_for(lambda m: "STATUS" in m, after=stopping + 1)
    assert notify.fields()[status]["STATUS"] == "stopping: waiting for 1 reaction(s) to finish"
    assert daemon.proc.poll() is None  # still waiting for the hook
    assert not (ops.item("shop", "w1") / "done").exists()

    release.touch()
    assert daemon.stop(None) == 0
    done = ops.wait_done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    daemon.wait_for("daemon.stopped")


def test_sighup_with_a_broken_config_keeps_the_old_one(ops: Ops) -> None:
    """A broken config on SIGHUP is logged and ignored: windows armed afterwards are judged
    with the old thresholds. A valid one is then taken, and a window open during the reload
    keeps the schedule it started with."""
    # Only the health rule: the thresholds decide alone.
    service_repo: dict[str, Any] = {"fivexx_paths": []}
    old = {
        # 10 ticks: room for the verdicts below even if a loaded machine skips a few.
        "shop": ops.repo(fail_threshold=2, window_s=2.0, **service_repo),
        "slow": ops.repo(fail_threshold=100, window_s=4.0, **service_repo),
    }
    ops.write_config(repos=old)
    notify = ops.notify_socket()
    daemon = ops.start(env={"NOTIFY_SOCKET": str(notify.path)})
    daemon.wait_for("daemon.ready")
    ops.service.set(health="fail")

    # The broken config would make `shop` tolerate 100 failures, but it has an unknown key.
    broken = {**old, "shop": ops.repo(fail_threshold=100, window_s=2.0, **service_repo)}
    ops.write_config(repos=broken, bogus_key=1)
    daemon.proc.send_signal(signal.SIGHUP)
    failed = daemon.wait_for("config.reload_failed")
    assert any("bogus_key: unknown key" in p for p in failed["problems"]), failed
    assert failed["level"] == "error"
    reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1")
    after = notify.wait_for(lambda m: m.get("READY") == "1", after=reloading + 1)
    assert "old config in force" in notify.fields()[after]["STATUS"]

    ops.arm("shop", "w1")
    done = ops.wait_done("shop", "w1")
    assert done["status"] == "DEGRADED"
    assert "threshold 2" in done["reason"]
    assert done["checks_total"] == 2

    # A valid config is taken; `slow` changes its interval while a window of it is open.
    ops.arm("slow", "long")
    ops.wait_until(lambda: ops.rows("slow", "long"), "a first probe of slow/long")
    new = {
        "shop": ops.repo(fail_threshold=100, window_s=2.0, **service_repo),
        "slow": ops.repo(fail_threshold=100, window_s=4.0, interval_s=0.5, **service_repo),
    }
    ops.write_config(repos=new)
    reload_sent = time.time()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")
    ops.arm("shop", "w2")
    done = ops.wait_done("shop", "w2")
    # Every probe failed, 2 or more in a row (the old threshold), yet under the new one of 100.
    assert done["status"] == "HEALTHY", done
    assert done["checks_failed"] == done["checks_total"] == len(ops.rows("shop", "w2")) >= 2

    assert ops.wait_done("slow", "long")["status"] == "HEALTHY"
    rows = ops.rows("slow", "long")
    assert any(r["ts"] > reload_sent for r in rows), "the reload came after the window ended"
    armed_at = json.loads((ops.item("slow", "long") / "window.json").read_text())["armed_at"]
    for row in rows:  # every tick on the schedule the window started with: 0.2 s apart
        assert abs(row["scheduled_ts"] - (armed_at + 0.1 + row["tick"] * 0.2)) < 1e-3, row
    assert rows[-1]["tick"] == 19  # max_ticks = 4.0 / 0.2
    assert daemon.stop() == 0


def test_invalid_config_at_start_exits_2(ops: Ops) -> None:
    """Exit code 2 (the unit's RestartPreventExitStatus=2) with `PATH: key: message` lines."""
    path = ops.tmp / "config.toml"
    path.write_text(
        'state_dir = "state"\nbogus = 1\n[repos.shop]\nbase_url = "ftp://nowhere"\n',
        encoding="utf-8",
    )
    result = ops.cli("run")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert f"{path}: bogus: unknown key" in lines
    assert any(
        re.fullmatch(rf"{re.escape(str(path))}: repos\.shop\.base_url: .+", x) for x in lines
    )
    assert not (ops.tmp / "state").exists()  # nothing was started


def test_notifier_protocol_details(monkeypatch: pytest.MonkeyPatch) -> None:
    """An abstract-namespace socket (`@name`) works; STATUS stays one line; the variables
    are taken out of the environment, so a rollback hook does not inherit them."""
    name = f"postdeploy-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        notifier = Notifier()
        for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert variable not in os.environ
        assert notifier.enabled
        assert notifier.watchdog_interval_s == 1.5
        assert notifier.ready("line one\nline two")
        assert server.recv(4096) == b"READY=1\nSTATUS=line one line two"
        assert notifier.extend_timeout(2.5)
        assert server.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    other_pid = Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None  # the watchdog is meant for another process
    assert not Notifier({}).enabled
    assert Notifier({}).send("READY=1") is False
