"""A window's schedule and transitions (`window.py`): when to probe, skip, catch up, finish."""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.config import WindowSettings
from postdeploy.series import ProbeRow, Tally, fold, replay
from postdeploy.verdict import Status, Thresholds
from postdeploy.window import (
    Admission,
    Finish,
    Probe,
    Schedule,
    Step,
    Wait,
    admit,
    missed,
    next_step,
)

TH = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=6)
# Ticks at 101.0, 101.5, 102.0, 102.5: the window ends at 102.5.
SCHED = Schedule(armed_at=100.0, initial_delay_s=1.0, interval_s=0.5, max_ticks=4)


def raw_row(tick: int, health_ok: bool = True, *, catch_up: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tick": tick,
        "scheduled_ts": SCHED.tick_time(tick),
        "ts": SCHED.tick_time(tick),
        "health_ok": health_ok,
        "health_code": 200 if health_ok else 503,
        "total": 2,
        "fivexx": 0,
        "latency_ms": 1.0,
        "detail": "",
    }
    if catch_up:
        row["catch_up"] = True
    return row


def tally_of(*ticks: int, failed: tuple[int, ...] = ()) -> Tally:
    return replay(raw_row(k, health_ok=k not in failed) for k in ticks)


# -- Schedule ---------------------------------------------------------------------------------


def test_schedule_times() -> None:
    assert [SCHED.tick_time(k) for k in range(4)] == [101.0, 101.5, 102.0, 102.5]
    assert SCHED.end == 102.5
    assert SCHED.window_s == 2.0


@pytest.mark.parametrize(
    ("window_s", "interval_s", "max_ticks"),
    [
        (900, 30, 30),
        (1.0, 0.1, 10),
        (0.05, 0.1, 1),  # shorter than one interval: still one tick
        (0.3, 0.1, 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats
        (0.7, 0.1, 7),  # 6.999999999999999
        (1.0, 0.05, 20),
        (1.0, 0.3, 3),
        (0.0001, 1, 1),
        (10, 3, 3),
    ],
)
def test_max_ticks(window_s: float, interval_s: float, max_ticks: int) -> None:
    settings = WindowSettings(window_s=window_s, interval_s=interval_s)
    assert settings.max_ticks == max_ticks


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (0.0, -1),
        (100.999, -1),
        (101.0, 0),
        (101.49, 0),
        (101.5, 1),
        (102.0, 2),
        (102.4999, 2),
        (102.5, 3),
        (500.0, 3),  # capped at the last tick
    ],
)
def test_due_tick(now: float, due: int) -> None:
    assert SCHED.due_tick(now) == due


def fractional_schedule(armed_at: float) -> Schedule:
    """A window of 1 s with 0.05 s ticks, sized the way the daemon sizes it."""
    settings = WindowSettings(window_s=1.0, interval_s=0.05, initial_delay_s=0.05)
    return Schedule(armed_at, settings.effective_initial_delay_s, 0.05, settings.max_ticks)


def test_fractional_intervals_small_armed_at() -> None:
    sched = fractional_schedule(0.0)
    assert sched.max_ticks == 20
    assert sched.window_s == pytest.approx(1.0)
    assert sched.end == pytest.approx(0.05 + 19 * 0.05)
    for k in range(sched.max_ticks):
        assert sched.due_tick(sched.tick_time(k)) == k
        assert sched.due_tick(sched.tick_time(k) - 0.001) == k - 1


# Real windows start at an epoch time, where a float's resolution is about 2e-7 s.
EPOCH = 1_795_763_584.0


def test_fractional_intervals_epoch_armed_at() -> None:
    """At a tick's own time that tick is due (the 1e-9 epsilon is too small at epoch scale)."""
    sched = fractional_schedule(EPOCH)
    assert [sched.due_tick(sched.tick_time(k)) for k in range(20)] == list(range(20))


def test_skip_rule_at_epoch_scale() -> None:
    """After a stall that ends exactly at tick 2's time, tick 1 is skipped."""
    sched = fractional_schedule(EPOCH)
    tally = replay([raw_row(0)])
    assert next_step(sched, tally, TH, sched.tick_time(2)) == Probe(2, sched.tick_time(2))


# -- admit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ticks", "now", "first_seen", "expected"),
    [
        ((), 100.0, True, Admission.RUN),  # before the first tick
        ((), 101.7, True, Admission.RUN),  # inside the window, first seen late: still runs
        ((), 102.5, True, Admission.RUN),  # exactly at the end: the last tick is due now
        ((), 102.6, True, Admission.MISSED),  # first seen after the end
        ((), 900.0, True, Admission.MISSED),
        ((0,), 102.6, False, Admission.CATCH_UP),  # resumed after the end, ticks left
        ((), 102.6, False, Admission.CATCH_UP),  # seen before, nothing probed yet
        ((0, 1, 2), 900.0, False, Admission.CATCH_UP),
        ((0, 1, 2, 3), 900.0, False, Admission.RUN),  # every tick recorded: just finish
        ((0, 3), 900.0, False, Admission.RUN),
        ((0, 1), 102.0, False, Admission.RUN),  # resumed inside the window
    ],
)
def test_admit(ticks: tuple[int, ...], now: float, first_seen: bool, expected: Admission) -> None:
    assert admit(SCHED, tally_of(*ticks), now, first_seen=first_seen) is expected


def test_missed_verdict_names_how_late() -> None:
    verdict = missed(SCHED, 112.5)
    assert verdict.status is Status.MISSED
    assert "10.0s after the window's end" in verdict.reason
    assert verdict.evidence == {"first_seen": 112.5, "window_end": 102.5}


@pytest.mark.parametrize(
    ("running_since", "daemon_was_down"),
    [
        (None, True),  # unknown: the historical wording
        (50.0, False),  # running before the window was armed: the sentinel came late
        (102.5, False),  # started exactly at the window's end: it saw the end
        (102.6, True),  # started after the end: it was down while the window was open
        (110.0, True),
    ],
)
def test_missed_reason_says_why(running_since: float | None, daemon_was_down: bool) -> None:
    reason = missed(SCHED, 112.5, running_since).reason
    assert ("the daemon was not running" in reason) is daemon_was_down
    assert ("the daemon was running, so its sentinel arrived late" in reason) is (
        not daemon_was_down
    )


# -- next_step --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ticks", "now", "expected"),
    [
        ((), 100.0, Wait(101.0)),  # before tick 0
        ((), 100.999, Wait(101.0)),
        ((), 101.0, Probe(0, 101.0)),  # at tick time
        ((), 101.2, Probe(0, 101.0)),  # late, but tick 1 is not due yet
        ((0,), 101.2, Wait(101.5)),
        ((0,), 101.5, Probe(1, 101.5)),
        ((), 101.6, Probe(1, 101.5)),  # tick 0's successor is due: tick 0 is skipped
        ((0,), 102.3, Probe(2, 102.0)),  # after a stall only the latest due tick runs
        ((0,), 900.0, Probe(3, 102.5)),  # never past the last tick
        ((0, 2), 102.1, Wait(102.5)),
        ((0, 1, 2, 3), 102.5, "HEALTHY"),  # after the last tick
        ((0, 3), 102.6, "HEALTHY"),  # skipped ticks are not invented
    ],
)
def test_next_step_on_schedule(ticks: tuple[int, ...], now: float, expected: Step | str) -> None:
    step = next_step(SCHED, tally_of(*ticks), TH, now)
    if isinstance(expected, str):
        assert isinstance(step, Finish)
        assert step.verdict.status is Status.HEALTHY
    else:
        assert step == expected


@pytest.mark.parametrize("now", [100.0, 101.0, 101.7, 102.5, 900.0])
@pytest.mark.parametrize("catch_up", [False, True])
def test_degraded_as_soon_as_a_rule_holds(now: float, catch_up: bool) -> None:
    """Three failed health probes finish the window whatever the time and ticks left."""
    sched = Schedule(armed_at=100.0, initial_delay_s=1.0, interval_s=0.5, max_ticks=10)
    step = next_step(sched, tally_of(0, 1, 2, failed=(0, 1, 2)), TH, now, catch_up=catch_up)
    assert isinstance(step, Finish)
    assert step.verdict.status is Status.DEGRADED
    assert "3 consecutive" in step.verdict.reason


def test_two_failures_keep_probing() -> None:
    step = next_step(SCHED, tally_of(0, 1, failed=(0, 1)), TH, 102.0)
    assert step == Probe(2, 102.0)


def test_degraded_on_the_last_tick_wins_over_healthy() -> None:
    step = next_step(SCHED, tally_of(0, 1, 2, 3, failed=(1, 2, 3)), TH, 102.5)
    assert isinstance(step, Finish) and step.verdict.status is Status.DEGRADED


@pytest.mark.parametrize(("ticks", "next_tick"), [((), 0), ((0,), 1), ((0, 2), 3)])
def test_catch_up_probe_numbering(ticks: tuple[int, ...], next_tick: int) -> None:
    """One probe right away, numbered after the last recorded tick."""
    now = 500.25
    step = next_step(SCHED, tally_of(*ticks), TH, now, catch_up=True)
    assert step == Probe(next_tick, now, catch_up=True)


def test_healthy_after_the_catch_up_probe() -> None:
    tally = replay([raw_row(0), raw_row(1, catch_up=True)])
    step = next_step(SCHED, tally, TH, 500.0, catch_up=True)
    assert isinstance(step, Finish)
    assert step.verdict.status is Status.HEALTHY


def test_failing_catch_up_probe_completes_a_streak() -> None:
    tally = replay([raw_row(0, False), raw_row(1, False), raw_row(2, False, catch_up=True)])
    step = next_step(SCHED, tally, TH, 500.0, catch_up=True)
    assert isinstance(step, Finish)
    assert step.verdict.status is Status.DEGRADED


# -- a whole window, driven the way the runner drives it, on a simulated clock ---------------


def drive(
    sched: Schedule,
    *,
    health: dict[int, bool] | None = None,
    stalls: dict[int, float] | None = None,
    probe_s: float = 0.001,
) -> tuple[list[int], Finish]:
    """Run next_step to the end; `stalls[k]` adds that many seconds before probing tick k."""
    health = health or {}
    stalls = stalls or {}
    now = sched.armed_at
    tally = Tally()
    probed: list[int] = []
    for _ in range(10 * sched.max_ticks + 10):
        step = next_step(sched, tally, TH, now)
        if isinstance(step, Finish):
            return probed, step
        if isinstance(step, Wait):
            assert step.until > now
            now = step.until
            continue
        stall = stalls.pop(step.tick, 0.0)
        if stall:
            now += stall  # the process was stopped: ask again
            continue
        probed.append(step.tick)
        row = ProbeRow(
            tick=step.tick,
            scheduled_ts=step.scheduled_ts,
            ts=now,
            health_ok=health.get(step.tick, True),
            health_code=200,
            total=1,
            fivexx=0,
            latency_ms=1.0,
            detail="",
        )
        tally = fold(tally, row)
        now += probe_s
    raise AssertionError("the window never finished")


def test_whole_window_probes_every_tick_once_then_healthy() -> None:
    sched = fractional_schedule(0.0)
    probed, finish = drive(sched)
    assert probed == list(range(20))
    assert finish.verdict.status is Status.HEALTHY


def test_whole_window_with_a_stall_skips_and_shows_the_gap() -> None:
    sched = fractional_schedule(0.0)
    # Stopped for 0.23 s just before tick 3 (due at 0.2): at 0.43 the latest due tick is 7.
    probed, finish = drive(sched, stalls={3: 0.23})
    assert probed == [0, 1, 2, *range(7, 20)]
    assert finish.verdict.status is Status.HEALTHY
    assert finish.verdict.evidence["checks_total"] == 16


def test_whole_window_stops_probing_at_the_verdict() -> None:
    sched = fractional_schedule(0.0)
    probed, finish = drive(sched, health={4: False, 5: False, 6: False})
    assert probed == list(range(7))
    assert finish.verdict.status is Status.DEGRADED
