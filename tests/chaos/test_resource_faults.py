"""Resource faults: a full or read-only state directory, rollback hooks that will not die, and
a wall clock that jumps by an hour mid-window.

- The disk: the state directory is a small tmpfs mounted by the test (we run as root); it is
  filled up, or remounted read-only, while windows are open. Where mounting is not permitted
  the disk fault is injected into the daemon's file layer instead (`inject/sitecustomize.py`).
- The hooks: one hangs, one forks children, one ignores SIGTERM (children too); each is
  killed with its whole process group at `rollback_timeout_s`, end to end through the daemon.
- The clock: the daemon runs under libfaketime (Debian package `faketime`) with a timestamp
  file the test rewrites at run time, and the monotonic clock left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support.wait import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from chaos.conftest import Target
    from support.daemon import DaemonPool

DEADLINE_S = 30.0


def _rows(directory: Path) -> list[dict[str, Any]]:
    """The complete lines of a series file (a torn last line, a write cut short, is left
    out); a complete line that is not a valid row fails the test."""
    path = directory / "series.jsonl"
    if not path.exists():
        return []
    complete = path.read_bytes().rpartition(b"\n")[0]
    return [json.loads(line) for line in complete.split(b"\n") if line.strip()]


# -- the disk --------------------------------------------------------------------------------


class Disk:
    """The state directory's file system, which the test can fill, freeze and give back."""

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        self.control = tmp / "disk-fault"  # used by the injected fault when mounting fails
        self.mounted = False
        self.why_not = ""
        self.filler = path / ".filler"
        path.mkdir(parents=True)
        if os.environ.get("CHAOS_NO_MOUNT"):  # exercise the fallback on a machine that mounts
            self.why_not = "CHAOS_NO_MOUNT is set"
            return
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        self.mounted = result.returncode == 0
        self.why_not = result.stderr.strip()

    @property
    def env(self) -> dict[str, str]:
        """What the daemon needs for the injected fallback."""
        if self.mounted:
            return {}
        inject = Path(__file__).parent / "inject"
        return {"PYTHONPATH": str(inject), "CHAOS_DISK_FAULT": str(self.control)}

    def _control(self, kind: str) -> None:
        """Switch the injected fault on, atomically (the daemon reads the file any time)."""
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(kind)
        tmp.replace(self.control)

    def fill(self) -> None:
        if not self.mounted:
            self._control("full")
            return
        with self.filler.open("wb") as f:
            chunk = b"\0" * 65536
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
                    f.flush()
        # Whatever is left (less than a chunk) goes too.
        with contextlib.suppress(OSError), self.filler.open("ab") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()

    def freeze(self) -> None:
        if not self.mounted:
            self._control("ro")
            return
        # Files open for writing make a read-only remount fail with EBUSY: retry briefly.
        remount = ["mount", "-o", "remount,ro", str(self.path)]
        wait_until(lambda: subprocess.run(remount).returncode == 0, "a read-only remount")

    def give_back(self) -> None:
        if not self.mounted:
            self.control.unlink(missing_ok=True)
            return
        subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)
        self.filler.unlink(missing_ok=True)

    def refuses_writes(self) -> bool:
        if not self.mounted:
            return self.control.exists()
        try:
            (self.path / ".probe").write_bytes(b"x" * 4096)
        except OSError as exc:
            return exc.errno in (errno.ENOSPC, errno.EROFS)
        (self.path / ".probe").unlink()
        return False

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    made = Disk(tmp_path / "state", tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_disk_full_or_read_only_then_back_loses_no_probe(
    tmp_path: Path,
    kit: Any,
    daemons: DaemonPool,
    targets: Callable[[], Target],
    disk: Disk,
    fault: str,
) -> None:
    """While the state directory refuses writes, the daemon logs it and keeps probing every
    open window on schedule, rows waiting in memory; once the disk is back every window ends
    with every probe on disk, its verdict equal to the series judged offline. (Regression,
    "full": a full disk takes part of an append; the half line was left for the retried
    append to glue onto, a corrupt line in the middle of the series.)"""
    if not disk.mounted:
        print(f"tmpfs not mountable ({disk.why_not}); injecting the fault in the file layer")
    services = {name: targets() for name in ("a", "b")}
    path = tmp_path / "config.toml"
    path.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "window_s": 30.0,  # ended early: the targets go bad once the disk is back
                    "interval_s": 0.1,
                    "initial_delay_s": 0.05,
                    "probe_timeout_s": 0.09,
                    "fail_threshold": 3,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "repos": {name: {"base_url": t.url} for name, t in services.items()},
            }
        )
    )
    run = daemons.start(path, disk.env)
    items = {name: tmp_path / "state" / name / "w1" for name in services}
    for directory in items.values():
        directory.mkdir(parents=True)
        (directory / "armed").touch()
    wait_until(
        lambda: all(len(_rows(d)) >= 3 for d in items.values()),
        "3 rows in every window",
        daemon=run,
        while_alive=True,
    )

    disk.fill() if fault == "full" else disk.freeze()
    assert disk.refuses_writes()
    mark = {name: len(_rows(d)) for name, d in items.items()}
    for name in items:
        run.wait_for("series.append_failed", repo=name)
    # Every window keeps probing on schedule while the disk refuses its rows.
    for name, service in services.items():
        want = len(service.arrivals()) + 3

        def probed(s: Target = service, n: int = want) -> bool:
            return len(s.arrivals()) >= n

        wait_until(
            probed,
            f"{want} probes at {name}",
            daemon=run,
            while_alive=True,
        )
        if fault == "read-only":
            assert len(_rows(items[name])) <= mark[name] + 1  # nothing new reached the disk
    disk.give_back()
    for service in services.values():
        service.set(health="fail")  # DEGRADED, judged over rows written late and on time
    for name, directory in items.items():
        wait_until((directory / "done").exists, f"done in {name}", daemon=run, while_alive=True)
    config = __import__("postdeploy.config", fromlist=["load_config"]).load_config(path)
    for name, directory in items.items():
        series = kit.read_series(directory / "series.jsonl")
        assert not series.problems and not series.torn, (series.problems, series.torn)
        rows = series.rows
        ticks = [row["tick"] for row in rows]
        assert ticks == sorted(set(ticks)), ticks
        # Every probe that reached the target is on disk (a probe that never reached it, a
        # timeout under load, is a row without an arrival).
        assert len(rows) >= len(services[name].arrivals()), (len(rows), ticks)
        done = json.loads((directory / "done").read_text())
        th = kit.thresholds_of(config, name)
        verdict = kit.offline_verdict(
            rows, th, int(json.loads((directory / "window.json").read_text())["max_ticks"])
        )
        assert verdict is not None
        assert (done["status"], done["reason"]) == (str(verdict.status), verdict.reason)
        assert done["status"] == "DEGRADED", done
        assert done["checks_total"] == len(rows)
    assert run.alive
    assert not run.find("window.error"), run.tail()
    assert run.stop() == 0


# -- rollback hooks that will not die --------------------------------------------------------

HOOKS = {
    # Hangs: the shell waits for a child that sleeps for ever.
    "hang": 'sleep 1000 & echo $! >> "$PIDS"\nwait\n',
    # Forks: children and a grandchild in the background, then waits.
    "fork": (
        'for i in 1 2 3; do sleep 1000 & echo $! >> "$PIDS"; done\n'
        '( sleep 1000 & echo $! >> "$PIDS"; wait ) &\necho $! >> "$PIDS"\nwait\n'
    ),
    # Ignores SIGTERM, and so do its children (an ignored signal stays ignored across exec).
    "stubborn": ("trap '' TERM\nsleep 1000 & echo $! >> \"$PIDS\"\nwhile :; do wait; done\n"),
}


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_hooks_that_hang_fork_or_ignore_sigterm_are_killed_with_their_group(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """At `rollback_timeout_s` the hook's whole process group is killed (SIGTERM, then
    SIGKILL): the window ends ROLLBACK_FAILED and no process of the hook is left."""
    repos = {}
    for name, body in HOOKS.items():
        script = tmp_path / f"{name}.sh"
        pid_file = tmp_path / f"{name}.pids"
        script.write_text(f'#!/bin/sh\nPIDS={pid_file}\necho $$ >> "$PIDS"\n{body}')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        target = targets()
        target.set(health="fail")
        repos[name] = {
            "base_url": target.url,
            "auto_rollback": True,
            "rollback_command": [str(script)],
            "rollback_timeout_s": 0.5,
        }
    path = tmp_path / "config.toml"
    path.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "window_s": 2.0,
                    "interval_s": 0.1,
                    "initial_delay_s": 0.05,
                    "probe_timeout_s": 0.09,
                    "fail_threshold": 1,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "repos": repos,
            }
        )
    )
    run = daemons.start(path)
    for name in HOOKS:
        (tmp_path / "state" / name / "w1").mkdir(parents=True)
        (tmp_path / "state" / name / "w1" / "armed").touch()
    leaders: dict[str, int] = {}
    try:
        for name in HOOKS:
            line = run.wait_for("window.finished", repo=name)
            assert line is not None
            assert line["action_taken"] == "ROLLBACK_FAILED", line
            result = json.loads((tmp_path / "state" / name / "w1" / "rollback.json").read_text())
            assert result["exit_code"] is None and "timed out" in result["detail"], result
            pids = [int(p) for p in (tmp_path / f"{name}.pids").read_text().split()]
            leaders[name] = pids[0]
            assert len(pids) >= 2, f"{name}: the hook did not get to start its children"
            # SIGKILL is delivered at once, but a process takes a moment to be gone.
            deadline = time.monotonic() + DEADLINE_S
            while left := [pid for pid in pids if _alive(pid)] + _group_members(pids[0]):
                assert time.monotonic() < deadline, f"{name}: processes left behind: {left}"
                time.sleep(0.01)
        assert run.alive and not run.unhandled()
    finally:
        for pgid in leaders.values():  # never leave sleepers behind, even on failure
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


# -- the wall clock --------------------------------------------------------------------------


def _walljump(tmp: Path) -> Path | None:
    """Compile the wall-clock shim (`inject/walljump.c`); None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source = Path(__file__).parent / "inject" / "walljump.c"
    library = tmp / "walljump.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True
    )
    return library


def test_wall_clock_jumps_neither_fire_nor_delay_ticks(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """The daemon's wall clock jumps an hour forward, then two hours back, mid-window: ticks
    keep arriving at the target one by one, none before its time (no burst), until the last
    one (no stall), and the rows show that the daemon really saw the jumps.

    The jump is made by an LD_PRELOAD shim that shifts every wall-clock read of the daemon
    process by the seconds written in a file (see `inject/walljump.c` for why not
    libfaketime); the monotonic clock is left alone, as it is by a real clock step."""
    library = _walljump(tmp_path)
    if library is None:
        pytest.skip("no C compiler (cc) to build the wall-clock shim")
    clock = tmp_path / "wall-offset"
    clock.write_text("0\n")
    env = {"LD_PRELOAD": str(library), "WALLJUMP_FILE": str(clock)}
    target = targets()
    interval, delay, max_ticks = 0.2, 0.2, 15
    path = tmp_path / "config.toml"
    path.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "window_s": interval * max_ticks,
                    "interval_s": interval,
                    "initial_delay_s": delay,
                    "probe_timeout_s": 0.15,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "repos": {"shop": {"base_url": target.url}},
            }
        )
    )
    run = daemons.start(path, env)
    directory = tmp_path / "state" / "shop" / "w1"
    directory.mkdir(parents=True)
    (directory / "armed").touch()
    wall_ref, mono_ref = time.time(), time.monotonic()

    target.wait_arrivals(4)
    clock.write_text("3600\n")  # an hour forward
    target.wait_arrivals(8)
    clock.write_text("-3600\n")  # two hours back
    wait_until((directory / "done").exists, "done", daemon=run, while_alive=True)
    done = json.loads((directory / "done").read_text())
    assert done["status"] == "HEALTHY", done

    rows = _rows(directory)
    arrivals = target.arrivals()
    # Ticks in order up to the last one, one health request each. (A loaded machine may make
    # the daemon skip a tick now and then; a clock-driven stall would last an hour and end
    # the test at its deadline, and a clock-driven burst is caught below.)
    ticks = [row["tick"] for row in rows]
    assert ticks == sorted(set(ticks)) and ticks[-1] == max_ticks - 1, ticks
    assert len(arrivals) <= len(rows), "more requests than ticks"
    # The daemon saw its wall clock jump both ways (else this test proves nothing).
    skews = [row["ts"] - row["scheduled_ts"] for row in rows]
    assert max(skews) > 3000 and min(skews) < -3000, skews
    # No tick ran before its time on the monotonic clock: a jump fired nothing early.
    armed_at = json.loads((directory / "window.json").read_text())["armed_at"]
    for row, arrived in zip(rows, arrivals, strict=False):
        due = mono_ref + (armed_at + delay + row["tick"] * interval - wall_ref)
        assert arrived >= due - 0.02, f"tick {row['tick']} arrived {due - arrived:.3f}s early"
    assert run.stop() == 0


async def test_window_clock_is_monotonic_once_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libfaketime: a runner's schedule time moves with the monotonic clock only, so
    a wall-clock step after the window was loaded changes nothing."""
    from postdeploy.config import RepoConfig, WindowSettings
    from postdeploy.layout import ItemKey
    from postdeploy.runner import WindowRunner
    from postdeploy.store import ItemStore
    from postdeploy.window import Schedule, WindowStart

    start = WindowStart(Schedule(time.time(), 0.1, 0.1, 10), time.time())
    window = WindowRunner(
        ItemStore(Path("/nonexistent"), ItemKey("shop", "w1")),
        start,
        RepoConfig(base_url="http://127.0.0.1:1"),
        WindowSettings(),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        first_seen=True,
    )
    before, mono = window.now(), time.monotonic()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    after = window.now()
    assert abs((after - before) - (time.monotonic() - mono)) < 0.05
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    assert abs(window.now() - before) < 1.0
