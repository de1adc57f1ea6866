"""An event in the outbox's memory, from `emit` until every sink has it (no I/O here).

A `Record` is one event and its `Delivery` to each sink it is for. The records are kept in
memory by `records.Records`, written by `keeper.Keeper` and the housekeeping, and delivered by
one `worker.SinkWorker` per sink.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import anyio

from postdeploy.alerts.config import OutboxSettings
from postdeploy.alerts.spool import EventFile, SinkState


@dataclass
class Delivery:
    """One (event, sink) pair in memory."""

    sink: str
    state: SinkState
    due: float  # monotonic time of the next attempt
    unsaved: bool = False  # the state on disk is behind (a write failed); retried

    @property
    def open(self) -> bool:
        """Neither delivered nor given up on: a sink still has work to do for it."""
        return self.state.delivered_at is None and self.state.expired_at is None


@dataclass
class Record:
    """One event in memory, from `emit` until every sink has it."""

    id: str
    event: dict[str, Any]
    targets: list[str]
    emitted_at: float
    seq: int  # emission order: deliveries due at the same time go oldest first
    written: bool  # on disk; a sink sees only written events
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    write_failures: int = 0
    write_due: float = 0.0
    disk_failures: int = 0  # consecutive failed writes of marks or of the archive move
    disk_due: float = 0.0  # monotonic: when housekeeping may retry them
    finished: bool = False
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def context(self) -> dict[str, Any]:
        """The keys every log line about this event carries."""
        return {
            "event_id": self.id,
            "kind": self.event.get("kind"),
            "repo": self.event.get("repo"),
            "work_item": self.event.get("work_item"),
        }

    def stored(self) -> EventFile:
        """The content of the event's `event.json` (see spool.py)."""
        return EventFile(self.event, self.targets, self.emitted_at)


def backoff(settings: OutboxSettings, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: exponential, with jitter
    (half the step fixed, half random), capped at `retry_max_s`."""
    step = settings.retry_initial_s * 2.0 ** min(max(attempts - 1, 0), 60)
    step = min(settings.retry_max_s, step)
    return step / 2 + random.uniform(0, step / 2)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        # A lone surrogate (from hostile input) cannot be encoded: it becomes "?".
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def plain(event: dict[str, Any]) -> dict[str, Any]:
    """The event as plain JSON data: what is stored is exactly what every sink sends, and
    nothing in it (an odd evidence value, a lone surrogate) can make a write or a send fail."""
    data: dict[str, Any] = _scrub(json.loads(json.dumps(event, default=str)))
    return data
