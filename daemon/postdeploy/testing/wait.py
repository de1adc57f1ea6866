"""Waiting for something that has no event of its own (a file appearing, a request arriving).

Tests synchronise on events where there are some (a log line, a datagram, a request: see
`postdeploy.testing.daemon`, the tests' `support.notify` and `support.http`); for the rest,
`wait_until` polls. Its
deadline is generous: it is only reached when something is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

DEADLINE_S = 30.0  # generous: only reached when something is wrong
POLL_S = 0.01

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait that ran out: a test failure for pytest, a `TimeoutError` for the benchmarks."""


class Watched(Protocol):
    """What `wait_until` needs of a daemon it watches (`testing.daemon.DaemonProcess`)."""

    @property
    def alive(self) -> bool: ...

    def tail(self, n: int = ...) -> str: ...


def wait_until(
    check: Callable[[], T],
    what: str,
    timeout: float = DEADLINE_S,
    *,
    poll: float = POLL_S,
    daemon: Watched | None = None,
    while_alive: bool = False,
) -> T:
    """Poll `check` until it returns something truthy, and return that.

    Fails (`WaitTimeout`) after `timeout` seconds, naming `what` and showing the tail of
    `daemon`'s log when one is given; with `while_alive`, also as soon as `daemon` exited
    (nothing it would still write can come).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        exited = while_alive and daemon is not None and not daemon.alive
        if exited or time.monotonic() > deadline:
            why = "the daemon exited" if exited else f"timed out after {timeout:g}s"
            tail = f"\n{daemon.tail(15)}" if daemon is not None else ""
            raise WaitTimeout(f"{why} waiting for {what}{tail}")
        time.sleep(poll)
