"""Rules of `window.py` that no other fast test pinned (found by `make mutate`).

`due_tick` against a brute-force oracle, on schedules where the division over-estimates the
tick (its downward correction runs) and in constant work whatever the window's length;
`Schedule.from_dict`'s validation (a resumed window.json); a normal probe is not a catch-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from postdeploy.series import Tally
from postdeploy.verdict import Thresholds
from postdeploy.window import Probe, Schedule, next_step

TH = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=6)

SCHEDULES = [
    # Just below tick 1 (nextafter), the division rounds up to 1: the downward correction.
    Schedule(armed_at=0.3, initial_delay_s=0.0, interval_s=0.7, max_ticks=6),
    Schedule(armed_at=0.3, initial_delay_s=0.3, interval_s=1.1, max_ticks=6),
    Schedule(armed_at=0.3, initial_delay_s=0.0, interval_s=0.2, max_ticks=6),
    # At epoch scale, exactly at a tick the division rounds down: the upward correction.
    Schedule(armed_at=1_795_763_584.123, initial_delay_s=0.0, interval_s=0.1, max_ticks=20),
    Schedule(armed_at=100.0, initial_delay_s=1.0, interval_s=0.5, max_ticks=4),
]


def oracle(schedule: Schedule, now: float) -> int:
    """The latest tick whose time is not after `now`, by looking at every tick."""
    due = [k for k in range(schedule.max_ticks) if schedule.tick_time(k) <= now]
    return due[-1] if due else -1


def moments(schedule: Schedule) -> list[float]:
    """Each tick's time, the floats just around it, and moments long after the end."""
    found = []
    for k in range(schedule.max_ticks):
        t = schedule.tick_time(k)
        found += [math.nextafter(t, -math.inf), t, math.nextafter(t, math.inf)]
    return [*found, schedule.end + schedule.interval_s, schedule.end + 1000 * schedule.interval_s]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.armed_at}+{s.interval_s}")
def test_due_tick_matches_the_oracle(schedule: Schedule) -> None:
    for now in moments(schedule):
        assert schedule.due_tick(now) == oracle(schedule, now), now


def test_the_downward_correction_is_exercised() -> None:
    # The premise of the first schedules above: the estimate alone would be one tick late.
    schedule = SCHEDULES[0]
    now = math.nextafter(schedule.tick_time(1), -math.inf)
    assert math.floor((now - schedule.tick_time(0)) / schedule.interval_s) == 1
    assert schedule.due_tick(now) == 0


@dataclass(frozen=True)
class Counted(Schedule):
    """A schedule that records every `tick_time` call."""

    calls: list[int] = field(default_factory=list)

    def tick_time(self, k: int) -> float:
        self.calls.append(k)
        return super().tick_time(k)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.999, 1.0, 3.0])
def test_due_tick_does_not_walk_the_ticks(fraction: float) -> None:
    # A window of a million ticks: finding the due one takes a few steps, not a walk.
    schedule = Counted(armed_at=100.0, initial_delay_s=1.0, interval_s=0.5, max_ticks=1_000_000)
    now = schedule.tick_time(0) + fraction * schedule.max_ticks * schedule.interval_s
    schedule.calls.clear()
    due = schedule.due_tick(now)
    assert due == min(int(fraction * schedule.max_ticks), schedule.max_ticks - 1)
    assert len(schedule.calls) <= 5, schedule.calls


GOOD: dict[str, Any] = {
    "armed_at": 100.0,
    "initial_delay_s": 1.0,
    "interval_s": 0.5,
    "max_ticks": 4,
}


def test_schedule_round_trips_through_window_json() -> None:
    schedule = Schedule(armed_at=100.0, initial_delay_s=1.0, interval_s=0.5, max_ticks=4)
    assert schedule.to_dict() == GOOD
    assert Schedule.from_dict(GOOD) == schedule


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"initial_delay_s": 0}, True),
        ({"max_ticks": 1}, True),
        ({"interval_s": 0.001}, True),
        ({"interval_s": 0}, False),
        ({"interval_s": -0.5}, False),
        ({"max_ticks": 0}, False),
        ({"max_ticks": -1}, False),
        ({"initial_delay_s": -0.001}, False),
    ],
)
def test_schedule_from_dict_validates_a_resumed_window(change: dict[str, Any], valid: bool) -> None:
    data = {**GOOD, **change}
    if valid:
        assert Schedule.from_dict(data).to_dict() == {k: float(v) for k, v in data.items()}
    else:
        with pytest.raises(ValueError, match="invalid schedule"):
            Schedule.from_dict(data)


def test_a_probe_on_schedule_is_not_a_catch_up() -> None:
    # A catch-up probe ends the window; a normal one must never be taken for one.
    schedule = Schedule(**GOOD)
    step = next_step(schedule, Tally(), TH, schedule.tick_time(0))
    assert isinstance(step, Probe)
    assert (step.tick, step.catch_up) == (0, False)
    assert Probe(tick=1, scheduled_ts=0.0).catch_up is False
