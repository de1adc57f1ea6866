"""Crash consistency: the real daemon, SIGKILLed and restarted at random points, keeps every
promise about every window.

One seeded `random.Random` decides everything the harness does: which windows are armed in
which repo and how, when the daemon is killed (after a random delay, right after a chosen log
line, or at an injected crash point between two writes), how long it stays down, which
windows are cancelled. The watched services go bad at random moments on their own thread
(health failing, 5xx, a broken feature). At the end the daemon runs until every window is
finished, and every invariant is checked against the files on disk (see `Auditor`):

- every armed window ends exactly once, with `done` and `report.md`; `done` is never rewritten;
- every series file parses (a torn tail only at the end) and its tick numbers strictly increase;
- HEALTHY and DEGRADED verdicts equal the verdict of the same series judged offline;
- no rollback hook ever ran twice for one work item;
- every alert event was delivered at least once, and never twice to the sink within one life
  of the daemon (re-sending after a SIGKILL is at-least-once delivery; `Idempotency-Key` is
  what lets the receiver drop it).

In about 40 % of the lives, random writes fail too (ENOSPC, EROFS or EIO on every write path:
see `inject/sitecustomize.py`), so every promise must also hold on a failing disk.

`CHAOS_MODE=long` (`make chaos`) survives at least 100 kills and 100 injected write errors;
the default short mode a few of each.
`CHAOS_SEED=N` replays a run's decisions (the timing of a loaded machine is never the same).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy.layout import ItemKey

if TYPE_CHECKING:
    from collections.abc import Callable

    from chaos.conftest import Target
    from support.daemon import DaemonPool


LONG = os.environ.get("CHAOS_MODE") == "long"
KILLS = 110 if LONG else 4
IO_FAULTS = 100 if LONG else 0  # injected write errors (ENOSPC, EROFS, EIO) at least
IO_FAULT_RATE = 0.08  # in a life with disk faults, the share of writes that fail
RESEND_GRACE_S = 2.0  # a delivery acknowledged this long before a kill must not be re-sent

HOOK = """\
#!/bin/sh
# A rollback hook for the chaos suite. It counts its own runs: one line per start, appended
# (">>" opens with O_APPEND), before it does anything else. Metadata "hook" picks its behaviour.
printf 'start %s %s %s\\n' "$POSTDEPLOY_REPO" "$POSTDEPLOY_WORK_ITEM" "$$" >> "$1"
case "$POSTDEPLOY_META_HOOK" in
  slow) sleep 0.4 ;;
  fail) exit 3 ;;
esac
printf 'end %s %s %s\\n' "$POSTDEPLOY_REPO" "$POSTDEPLOY_WORK_ITEM" "$$" >> "$1"
"""

# Where an injected crash may land: right before or after an atomic write of these files, or
# in the middle of an append (a torn line).
CRASH_FILES = ("window.json", "report.md", "done", "rollback.intent", "rollback.json")
# Log lines worth killing the daemon right after.
KILL_AFTER = (
    "daemon.ready",
    "window.armed",
    "probe",
    "window.degraded",
    "rollback.started",
    "rollback.finished",
    "window.finished",
    "window.resumed",
    "window.superseded",
)


def _repos(targets: dict[str, Any], hook: list[str]) -> dict[str, dict[str, Any]]:
    """Four repos that differ in pace and in reaction."""
    feature = [{"name": "feature", "path": "/feature", "expect": ["$.items length > 0"]}]
    return {
        "api": {
            "base_url": targets["api"].url,
            "fivexx_paths": ["/status", "/queue"],
            "interval_s": 0.1,
            "window_s": 1.0,
            "probe_timeout_s": 0.09,
            "auto_rollback": True,
            "rollback_command": hook,
            "checks": feature,
        },
        "web": {
            "base_url": targets["web"].url,
            "fivexx_paths": ["/status"],
            "interval_s": 0.15,
            "window_s": 1.5,
            "auto_rollback": True,
            "rollback_command": hook,
        },
        "jobs": {  # alerts only
            "base_url": targets["jobs"].url,
            "fivexx_paths": ["/status", "/queue"],
            "interval_s": 0.2,
            "window_s": 2.0,
        },
        "infra": {  # hosts the deploy machinery: never rolled back
            "base_url": targets["infra"].url,
            "fivexx_paths": ["/queue"],
            "interval_s": 0.15,
            "window_s": 1.2,
            "self_hosting": True,
            "auto_rollback": True,
            "checks": feature,
        },
    }


class Weather:
    """Makes the services go bad and recover at random moments, on its own thread."""

    def __init__(self, targets: dict[str, Any], seed: int) -> None:
        self.targets = targets
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        names = sorted(self.targets)
        while not self.stop.wait(self.rng.uniform(0.1, 0.6)):
            target = self.targets[self.rng.choice(names)]
            roll = self.rng.random()
            target.restore()
            if roll < 0.15:
                target.set(health="fail")
            elif roll < 0.3:
                target.set(code=500)
            elif roll < 0.4:
                target.set(feature="broken")

    def __enter__(self) -> Weather:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for target in self.targets.values():
            target.restore()


class Driver:
    """The harness's side of the story: arming, cancelling, killing, restarting."""

    def __init__(self, tmp: Path, kit: Any, daemons: DaemonPool, receiver: Any, rng: random.Random):
        self.tmp, self.kit, self.daemons, self.receiver, self.rng = tmp, kit, daemons, receiver, rng
        self.state = tmp / "state"
        self.config = tmp / "config.toml"
        self.calls = tmp / "hook-calls.txt"
        self.io_log = tmp / "io-faults.log"  # one line per injected write error
        self.ledger: dict[ItemKey, Any] = {}
        self.tallies = kit.Tallies()
        self.epoch = 0
        self.deaths: dict[int, float] = {}  # life -> when it was over (monotonic)
        self.runs: list[Any] = []
        self._names = 0

    # -- the deploy side

    def arm(self, *, while_down: bool) -> None:
        repo = self.rng.choice(["api", "web", "jobs", "infra"])
        self._names += 1
        key = ItemKey(repo, f"w{self._names:04d}-{self.rng.randrange(16**4):04x}")
        directory = self.state / key.repo / key.work_item
        directory.mkdir(parents=True, exist_ok=True)
        armed = directory / "armed"
        if self.rng.random() < 0.5:
            armed.touch()  # what `touch` does: an empty sentinel
        else:
            hook = self.rng.choice(["ok", "ok", "slow", "fail"])
            meta = {"commit": f"{self.rng.randrange(16**7):07x}", "hook": hook}
            armed.write_text(json.dumps(meta))  # like `echo '{...}' > armed`
        self.ledger[key] = self.kit.Armed(key, armed.stat().st_mtime, while_down)

    def retouch_or_cancel(self) -> None:
        """Touch an already recorded `armed` again (changes nothing), or cancel a window."""
        open_ = [k for k in self.ledger if not (self._dir(k) / "done").exists()]
        if not open_:
            return
        key = self.rng.choice(sorted(open_))
        if self.rng.random() < 0.5:
            if (self._dir(key) / "window.json").exists():
                os.utime(self._dir(key) / "armed")
        else:
            (self._dir(key) / "cancel").touch()
            self.ledger[key].cancelled = True

    def _dir(self, key: ItemKey) -> Path:
        return self.state / key.repo / key.work_item

    # -- the daemon's lives

    def start(self, env: dict[str, str] | None = None) -> Any:
        self.epoch += 1
        self.receiver.set_epoch(self.epoch)
        run = self.daemons.start(self.config, env, ready=False)
        self.runs.append(run)
        return run

    def crash_point(self) -> dict[str, str]:
        """An injected crash: before/after an atomic write of a file, or a torn append."""
        roll = self.rng.random()
        if roll < 0.3:
            crash = f"torn:{self.rng.randint(1, 12)}"
        else:
            where = "before-write" if roll < 0.55 else "after-write"
            crash = f"{where}:{self.rng.choice(CRASH_FILES)}:{self.rng.randint(1, 3)}"
        return {"PYTHONPATH": str(self.kit.INJECT_DIR), "CHAOS_CRASH": crash}

    def io_faults(self) -> dict[str, str]:
        """Random write errors (ENOSPC, EROFS, EIO) on every write path for one life."""
        seed = self.rng.randrange(2**32)
        return {
            "PYTHONPATH": str(self.kit.INJECT_DIR),
            "CHAOS_IO_FAULT": f"{seed}:{IO_FAULT_RATE}:{self.io_log}",
        }

    def injected_io_errors(self) -> int:
        return len(self.io_log.read_text().splitlines()) if self.io_log.exists() else 0

    def life(self) -> None:
        """One life of the daemon: start, arm a few windows, die."""
        crash = self.crash_point() if self.rng.random() < 0.3 else None
        if crash is not None:
            print(f"life {self.epoch + 1}: crash point {crash['CHAOS_CRASH']}")
        env = crash
        if self.rng.random() < 0.4:
            env = {**(crash or {}), **self.io_faults()}
        run = self.start(env)
        run.try_wait_for("daemon.ready", timeout=self.kit.DEADLINE_S)
        for _ in range(self.rng.choice([0, 1, 1, 2, 2, 3])):
            self.arm(while_down=False)
        if self.rng.random() < 0.15:
            self.retouch_or_cancel()
        if crash is not None:
            # Let it run into its crash point, or kill it if it never gets there.
            try:
                run.proc.wait(self.rng.uniform(0.3, 1.5))
            except Exception:
                run.kill()
            else:
                run.stop()
            self.deaths[self.epoch] = time.monotonic()
            self.tallies.crash_points += run.proc.returncode == -signal.SIGKILL
            self.tallies.kills += 1
            return
        roll = self.rng.random()
        if roll < 0.45:
            time.sleep(self.rng.uniform(0.05, 1.2))
        else:
            event = self.rng.choice(KILL_AFTER)
            run.try_wait_for(event, timeout=self.rng.uniform(0.3, 1.2))
            time.sleep(self.rng.uniform(0, 0.03))
        if self.rng.random() < 0.08:
            code = run.stop(signal.SIGTERM)
            if code != 0:
                self.tallies.violations.append(f"SIGTERM: exit code {code}\n{run.tail(10)}")
            self.tallies.sigterms += 1
        else:
            run.kill()
            self.tallies.kills += 1
        self.deaths[self.epoch] = time.monotonic()

    def downtime(self) -> None:
        """While the daemon is down: maybe arm windows; sometimes stay down past their end."""
        if self.rng.random() < 0.2:
            self.arm(while_down=True)
        roll = self.rng.random()
        time.sleep(2.0 if roll < 0.06 else self.rng.uniform(0, 0.3))

    def hook_runs(self) -> Counter[ItemKey]:
        runs: Counter[ItemKey] = Counter()
        if self.calls.exists():
            for line in self.calls.read_text().splitlines():
                word, repo, item, _pid = line.split()
                if word == "start":
                    runs[ItemKey(repo, item)] += 1
        return runs


@pytest.mark.timeout(900 if LONG else 120)
def test_sigkill_and_restart_at_random_points_keeps_every_promise(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], receivers: Any
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nchaos seed {seed} (mode {kit.MODE}; rerun with CHAOS_SEED={seed})")
    rng = random.Random(seed)
    services = {name: targets() for name in ("api", "web", "jobs", "infra")}
    receiver = receivers(fail_ratio=0.1, seed=seed)
    driver = Driver(tmp_path, kit, daemons, receiver, rng)
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    driver.config.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "initial_delay_s": 0.1,
                    "probe_timeout_s": 0.12,
                    "fail_threshold": 3,
                    "fivexx_threshold": 0.3,
                    "min_samples": 6,
                    "rollback_timeout_s": 5.0,
                    "verify_ticks": 1,
                },
                "daemon": {"rescan_interval_s": 0.3, "log_level": "debug"},
                "outbox": {"retry_initial_s": 0.05, "retry_max_s": 0.5},
                "alerts": [
                    {
                        "type": "webhook",
                        "name": "chaos",
                        "url": receiver.url,
                        "min_severity": "info",
                        "timeout_s": 2.0,
                    }
                ],
                "repos": _repos(services, [str(hook), str(driver.calls)]),
            }
        )
    )
    auditor = kit.Auditor(driver.state, driver.config)
    auditor.start()
    tallies = driver.tallies
    try:
        with Weather(services, seed + 1):
            while tallies.kills < KILLS or driver.injected_io_errors() < IO_FAULTS:
                driver.life()
                tallies.violations += [
                    f"series between lives: {p}" for p in auditor.series_problems()
                ]
                driver.downtime()
        # The last life: no more faults; every window runs to its end.
        final = driver.start()
        final.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all((driver._dir(k) / "done").exists() for k in driver.ledger):
                break
            time.sleep(0.1)
        checked = kit.outbox_delivers()
        expected: dict[str, str] = {}
        for armed in driver.ledger.values():
            expected.update(auditor.expected_events(armed))
        missing = receiver.wait_acknowledged(set(expected)) if checked else set()
        code = final.stop(signal.SIGTERM)
        if code != 0:
            tallies.violations.append(f"final SIGTERM: exit code {code}")
    finally:
        auditor.stop()
    auditor.poll_done()
    _audit(driver, auditor, receiver, tallies, expected, missing, checked)
    known = {
        v: test for v in tallies.violations for rx, test in KNOWN_BUGS.items() if re.search(rx, v)
    }
    new = [v for v in tallies.violations if v not in known]
    io_errors = driver.injected_io_errors()
    print(tallies.summary(seed, kit.MODE, checked))
    print(f"  injected write errors      {io_errors} (ENOSPC, EROFS, EIO)")
    print(f"  of which new                {len(new)}")
    print(f"  of which known bugs         {len(known)} (each tracked by an xfail test)")
    for violation in new[:50]:
        print("VIOLATION:", violation)
    for violation, test in list(known.items())[:50]:
        print(f"KNOWN BUG ({test}):", violation)
    assert tallies.kills >= KILLS
    assert io_errors >= IO_FAULTS, f"only {io_errors} write errors were injected"
    assert not new, f"{len(new)} new violations (seed {seed})"


def _audit(
    driver: Driver,
    auditor: Any,
    receiver: Any,
    tallies: Any,
    expected: dict[str, str],
    missing: set[str],
    checked: bool,
) -> None:
    """Check every promise once the last life is over; adds to `tallies.violations`."""
    v = tallies.violations
    v += auditor.violations
    v += auditor.series_problems()
    hook_runs = driver.hook_runs()
    tallies.hook_runs = sum(hook_runs.values())
    tallies.windows = len(driver.ledger)
    for key, armed in sorted(driver.ledger.items()):
        auditor.audit_item(armed, hook_runs.get(key, 0), tallies)
    if set(hook_runs) - set(driver.ledger):
        v.append(f"the hook ran for unknown work items: {set(hook_runs) - set(driver.ledger)}")
    # Each window ends exactly once: at most one `window.finished` line across every life.
    finished: Counter[tuple[str, str]] = Counter(
        (line.get("repo"), line.get("work_item"))
        for run in driver.runs
        for line in run.find("window.finished")
    )
    v += [f"{k[0]}/{k[1]}: window.finished logged {n} times" for k, n in finished.items() if n > 1]
    # SUPERSEDED only by a window of the same repo that is current over it.
    starts = {}
    for key in driver.ledger:
        window = driver._dir(key) / "window.json"
        if window.exists():
            starts[key] = (json.loads(window.read_text())["armed_at"], key.work_item)
    for key in driver.ledger:
        done = driver._dir(key) / "done"
        if done.exists() and json.loads(done.read_text())["status"] == "SUPERSEDED":
            newer = [k for k in starts if k.repo == key.repo and starts[k] > starts[key]]
            if not newer:
                v.append(f"{key}: SUPERSEDED but no window of {key.repo} is newer")
    for run in driver.runs:
        v += run.unhandled()
        tallies.repairs_logged += len(run.find("series.repaired"))
    # Alerts: at least once, and never twice within one life of the daemon.
    tallies.events_expected = len(expected)
    deliveries = receiver.deliveries()
    tallies.refused_deliveries = sum(1 for d in deliveries if d.code != 200)
    acked = [d for d in deliveries if d.code == 200]
    tallies.deliveries = len(acked)
    lives: dict[str, set[int]] = defaultdict(set)
    per_life: Counter[tuple[str, int]] = Counter()
    first: dict[str, Any] = {}
    for d in acked:
        lives[d.key].add(d.epoch)
        per_life[(d.key, d.epoch)] += 1
        first.setdefault(d.key, d)
    resent = [key for key, epochs in lives.items() if len(epochs) > 1]
    tallies.redelivered_after_kill = len(resent)
    # A re-send after a kill is only excused when the kill came right after the delivery
    # (before its mark could be written); the outbox writes the mark at once.
    for event_id in resent:
        d = first[event_id]
        gap = driver.deaths.get(d.epoch, d.at) - d.at
        if checked and gap > RESEND_GRACE_S:
            v.append(
                f"alert {d.kind} of {d.repo}/{d.work_item} acknowledged {gap:.1f}s before the "
                f"daemon died, sent again after the restart: its delivery mark was not durable"
            )
    if checked:
        v += [f"alert {expected[key]} (id {key}) never delivered" for key in sorted(missing)]
        v += [
            f"alert {key} delivered {n} times in life {epoch} of the daemon"
            for (key, epoch), n in per_life.items()
            if n > 1
        ]


# -- regression tests for what the chaos run found ----------------------------------------

# Violations of bugs that are reported but not fixed yet, each tracked by an
# `xfail(strict=True)` regression test: {regex of the violation: that test's name}. The chaos
# run prints them apart and does not fail on them. Empty: every bug found so far is fixed.
KNOWN_BUGS: dict[str, str] = {}


def _small_config(kit: Any, tmp: Path, url: str, receiver_url: str, **repo: Any) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "window_s": 3.0,
                    "interval_s": 0.1,
                    "initial_delay_s": 0.05,
                    "probe_timeout_s": 0.09,
                    "verify_ticks": 0,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "outbox": {"retry_initial_s": 0.05, "retry_max_s": 0.5},
                "alerts": [{"type": "webhook", "url": receiver_url, "min_severity": "info"}],
                "repos": {"shop": {"base_url": url, **repo}},
            }
        )
    )
    return path


def _wait_file(path: Path, run: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and run.alive, f"no {path}\n{run.tail(10)}"
        time.sleep(0.01)


def test_window_armed_event_survives_a_crash_right_after_window_json(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], receivers: Any
) -> None:
    """A crash right after `window.json` is written: the restarted daemon takes the window for
    one it already announced, so the `window.armed` event must be in the outbox by then.
    (Regression: it was emitted after `window.json` and lost for good.)"""
    receiver = receivers()
    path = _small_config(kit, tmp_path, targets().url, receiver.url, window_s=0.5)
    first = daemons.start(
        path, {"PYTHONPATH": str(kit.INJECT_DIR), "CHAOS_CRASH": "after-write:window.json:1"}
    )
    directory = tmp_path / "state" / "shop" / "w1"
    directory.mkdir(parents=True)
    (directory / "armed").touch()
    assert first.proc.wait(30) == -signal.SIGKILL  # the injected crash point was reached
    assert (directory / "window.json").exists()
    second = daemons.start(path)
    _wait_file(directory / "done", second)
    key = ItemKey("shop", "w1")
    healthy = kit.event_id(key, "window.healthy")
    assert not receiver.wait_acknowledged({healthy}), "window.healthy never delivered"
    # Deliveries go out in the order the events were emitted: window.armed, if it was
    # emitted at all, was delivered before window.healthy.
    assert kit.event_id(key, "window.armed") in receiver.acknowledged()


def _park(directory: Path, parking: Path) -> None:
    """Take a work item out of the state directory (it turns up again later)."""
    parking.mkdir(exist_ok=True)
    directory.rename(parking / directory.name)


def test_window_superseded_after_a_restart_counts_the_ticks_it_probed(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], receivers: Any
) -> None:
    """A window that probed a few ticks, then is superseded when the restarted daemon finds
    it again, reports the ticks it probed. (Regression: the runner stopped before it replayed
    its series, so `checks_total` was 0.)"""
    path = _small_config(kit, tmp_path, targets().url, receivers().url)
    run = daemons.start(path)
    shop = tmp_path / "state" / "shop"
    (shop / "w1").mkdir(parents=True)
    (shop / "w1" / "armed").touch()
    while len(kit.read_series(shop / "w1" / "series.jsonl").rows) < 2:
        assert run.alive
        time.sleep(0.01)
    run.kill()
    probed = len(kit.read_series(shop / "w1" / "series.jsonl").rows)
    _park(shop / "w1", tmp_path / "parked")
    (shop / "w2").mkdir()
    (shop / "w2" / "armed").touch()  # newer than w1
    run = daemons.start(path)
    run.wait_for("window.armed", work_item="w2")
    (tmp_path / "parked" / "w1").rename(shop / "w1")  # w1 turns up again
    _wait_file(shop / "w1" / "done", run)
    done = json.loads((shop / "w1" / "done").read_text())
    assert done["status"] == "SUPERSEDED"
    assert done["checks_total"] == probed, (done, probed)


SLOW_HOOK = """\
#!/bin/sh
printf 'start %s\\n' "$POSTDEPLOY_WORK_ITEM" >> "$1"
[ "$POSTDEPLOY_WORK_ITEM" = w1 ] && sleep 2
exit 0
"""


def test_rollback_cut_short_by_a_crash_is_not_hidden_by_superseding(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], receivers: Any
) -> None:
    """The daemon dies while w1's rollback runs (`rollback.intent`, no result); after the
    restart a newer window of the repo turns up before w1 is found again. w1 must end
    DEGRADED / ROLLBACK_UNKNOWN, never SUPERSEDED: a rollback already running is never
    interrupted, and an unknown result is said loudly. (Regression: it ended SUPERSEDED/NONE,
    hiding a rollback that had run.)"""
    target = targets()
    target.set(health="fail")
    hook = tmp_path / "hook.sh"
    hook.write_text(SLOW_HOOK)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls"
    path = _small_config(
        kit,
        tmp_path,
        target.url,
        receivers().url,
        fail_threshold=1,
        auto_rollback=True,
        rollback_command=[str(hook), str(calls)],
    )
    run = daemons.start(path)
    shop = tmp_path / "state" / "shop"
    (shop / "w1").mkdir(parents=True)
    (shop / "w1" / "armed").touch()
    run.wait_for("rollback.started", work_item="w1")
    deadline = time.monotonic() + 30
    while "start w1" not in (calls.read_text() if calls.exists() else ""):
        assert time.monotonic() < deadline, run.tail(10)
        time.sleep(0.01)
    run.kill()  # the hook goes on in its own session; its result is never recorded
    _park(shop / "w1", tmp_path / "parked")
    (shop / "w2").mkdir()
    (shop / "w2" / "armed").touch()
    run = daemons.start(path)
    run.wait_for("window.armed", work_item="w2")
    (tmp_path / "parked" / "w1").rename(shop / "w1")
    _wait_file(shop / "w1" / "done", run)
    done = json.loads((shop / "w1" / "done").read_text())
    assert calls.read_text().count("start w1") == 1
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_UNKNOWN"), done
