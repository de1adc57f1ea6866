"""A window's schedule and its transitions, all in one pure place (no I/O, no clock).

The shell (`observe.py`) asks `next_step(...)` what to do, does it, folds the result into the
tally and asks again. Every rule about *when* to probe and *when* to stop lives here.

Times are on the wall-clock axis of the window's schedule, but the shell measures "now" with
the monotonic clock from one fixed point taken when the window was loaded, so a later
wall-clock step neither fires nor delays a tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from postdeploy.config import WindowSettings
from postdeploy.series import Tally
from postdeploy.verdict import Status, Thresholds, Verdict, classify, healthy


@dataclass(frozen=True)
class Schedule:
    """Tick k is due at `armed_at + initial_delay_s + k * interval_s`, k < max_ticks."""

    armed_at: float
    initial_delay_s: float
    interval_s: float
    max_ticks: int

    def tick_time(self, k: int) -> float:
        return self.armed_at + self.initial_delay_s + k * self.interval_s

    @property
    def end(self) -> float:
        """The window's end: the last tick's time."""
        return self.tick_time(self.max_ticks - 1)

    @property
    def window_s(self) -> float:
        return self.max_ticks * self.interval_s

    def due_tick(self, now: float) -> int:
        """The latest tick whose time has come (-1 if none), capped at the last tick."""
        if now < self.tick_time(0):
            return -1
        k = min(math.floor((now - self.tick_time(0)) / self.interval_s), self.max_ticks - 1)
        # The division is inexact at epoch scale: settle k against tick_time itself.
        while k + 1 < self.max_ticks and self.tick_time(k + 1) <= now:
            k += 1
        while k > 0 and self.tick_time(k) > now:
            k -= 1
        return k

    def to_dict(self) -> dict[str, Any]:
        return {
            "armed_at": self.armed_at,
            "initial_delay_s": self.initial_delay_s,
            "interval_s": self.interval_s,
            "max_ticks": self.max_ticks,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        schedule = cls(
            armed_at=float(data["armed_at"]),
            initial_delay_s=float(data["initial_delay_s"]),
            interval_s=float(data["interval_s"]),
            max_ticks=int(data["max_ticks"]),
        )
        if not (
            schedule.interval_s > 0 and schedule.max_ticks >= 1 and schedule.initial_delay_s >= 0
        ):
            raise ValueError(f"invalid schedule {data}")
        return schedule


class Admission(StrEnum):
    """How a window is taken up when the daemon loads it."""

    RUN = "RUN"  # probe on schedule
    CATCH_UP = "CATCH_UP"  # its end passed while the daemon was down: one catch-up probe
    MISSED = "MISSED"  # first seen after its end: never judged on one probe


def admit(schedule: Schedule, tally: Tally, now: float, *, first_seen: bool) -> Admission:
    """Decide how a window found at `now` is taken up."""
    if now <= schedule.end or tally.last_tick >= schedule.max_ticks - 1:
        return Admission.RUN
    return Admission.MISSED if first_seen else Admission.CATCH_UP


@dataclass(frozen=True)
class Wait:
    """Sleep until `until` (schedule time), then ask again."""

    until: float


@dataclass(frozen=True)
class Probe:
    """Probe now, recording it as `tick`, planned for `scheduled_ts`."""

    tick: int
    scheduled_ts: float
    catch_up: bool = False


@dataclass(frozen=True)
class Finish:
    """The window has its verdict."""

    verdict: Verdict


Step = Wait | Probe | Finish


def next_step(
    schedule: Schedule, tally: Tally, th: Thresholds, now: float, *, catch_up: bool = False
) -> Step:
    """What a window does next, given its rows so far and the time.

    - DEGRADED as soon as a rule holds (probing stops at the verdict).
    - HEALTHY once the last tick (or the catch-up probe) is recorded.
    - With `catch_up`, one probe right away with the next tick number.
    - Otherwise the next tick: a tick whose successor is already due is skipped, so after a
      stall only the latest due tick runs, and the gap in tick numbers shows it.
    """
    verdict = classify(tally, th)
    if verdict is not None:
        return Finish(verdict)
    if tally.catch_up_done or tally.last_tick >= schedule.max_ticks - 1:
        return Finish(healthy(tally, th))
    if catch_up:
        return Probe(tally.last_tick + 1, now, catch_up=True)
    k = max(tally.last_tick + 1, schedule.due_tick(now))
    at = schedule.tick_time(k)
    return Probe(k, at) if at <= now else Wait(at)


def missed(schedule: Schedule, now: float, running_since: float | None = None) -> Verdict:
    """The verdict of a window first seen at `now`, after its end.

    `running_since` (the daemon's start, wall time) tells why: a daemon that was already
    running when the window ended did not miss it by being down; the sentinel appeared late
    with an old time (copied with its mtime, or touched with a past date)."""
    late = now - schedule.end
    if running_since is not None and running_since <= schedule.end:
        why = (
            "the daemon was running, so its sentinel arrived late with a time already past "
            "(armed's mtime is the deploy's moment: copied with its mtime, or touched -d?)"
        )
    else:
        why = "the daemon was not running while it was open"
    return Verdict(
        Status.MISSED,
        f"first seen {late:.1f}s after the window's end: {why}; a window is never judged on a "
        "single probe",
        {"first_seen": now, "window_end": schedule.end},
    )


@dataclass
class WindowStart:
    """`window.json`: the window's start, recorded durably the first time it is seen."""

    schedule: Schedule
    first_seen_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    window_s: float | None = None  # as configured (the schedule covers whole ticks of it)

    @classmethod
    def new(
        cls, settings: WindowSettings, armed_at: float, metadata: dict[str, str], seen_at: float
    ) -> WindowStart:
        """A new window's start, with the schedule of `settings` (its repo's, now)."""
        schedule = Schedule(
            armed_at, settings.effective_initial_delay_s, settings.interval_s, settings.max_ticks
        )
        return cls(schedule, seen_at, metadata, settings.window_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.schedule.to_dict(),
            "window_s": self.window_s,
            "first_seen_at": self.first_seen_at,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowStart:
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not an object")
        window_s = data.get("window_s")
        return cls(
            Schedule.from_dict(data),
            float(data["first_seen_at"]),
            metadata,
            float(window_s) if isinstance(window_s, int | float) else None,
        )
