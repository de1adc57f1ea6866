"""The clocks a window's schedule reads: wall time (to place ticks) and a monotonic clock (to
wait for them). Passed in, so a test can step the wall clock and watch nothing fire early."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (may step)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards (the waits are measured with these)."""
        ...


class SystemClock:
    """The process's own clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
