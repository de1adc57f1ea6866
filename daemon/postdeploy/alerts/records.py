"""The outbox's table of events in memory (no I/O): which records wait, and for which sink.

An event is in the table from `emit` (or from the load of the spool at start) until nothing
is left to do for it: every sink has it (it is archived) or the rest expired. Each sink's
worker asks the table for its next delivery; the table wakes the workers when an event they
are for becomes deliverable.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio

from postdeploy import metrics
from postdeploy.alerts.record import Delivery, Record
from postdeploy.alerts.spool import SinkState, Stored


class Records:
    """The events in memory, by id."""

    def __init__(self, wake: Callable[[Sequence[str]], None]) -> None:
        self._by_id: dict[str, Record] = {}
        self._seq = itertools.count()
        self._wake_sinks = wake  # wakes the workers of the named sinks
        self._written = anyio.Event()  # set (and replaced) when a refused write succeeds

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._by_id

    def __iter__(self) -> Iterator[Record]:
        """A snapshot of the records: the caller may drop or add records meanwhile."""
        return iter(list(self._by_id.values()))

    # -- records coming in and going out ----------------------------------------------

    def new(self, event_id: str, event: dict[str, Any], targets: list[str]) -> Record:
        """A record for an event emitted now, not yet on disk (nor in the table)."""
        return Record(event_id, event, targets, time.time(), next(self._seq), written=False)

    def from_stored(self, item: Stored) -> Record:
        """A record for an event read back from the spool, each delivery due as planned."""
        record = Record(
            item.event_id, item.event, item.targets, item.emitted_at, next(self._seq), True
        )
        now_wall, now = time.time(), time.monotonic()
        for sink in item.targets:
            state = item.states.get(sink, SinkState())
            wait = 0.0 if state.next_attempt_at is None else state.next_attempt_at - now_wall
            record.deliveries[sink] = Delivery(sink, state, now + max(0.0, wait))
        return record

    def adopt(self, record: Record) -> None:
        """Take `record` into memory (unless known) and wake the sinks it is for."""
        if record.id in self._by_id:
            return
        now = time.monotonic()
        for sink in record.targets:
            record.deliveries.setdefault(sink, Delivery(sink, SinkState(), now))
        self._by_id[record.id] = record
        if record.written:
            self.wake(record.targets)
        self.backlog()

    def wake(self, sinks: Sequence[str]) -> None:
        """Tell the workers of `sinks` to look for their next delivery."""
        self._wake_sinks(sinks)

    def drop(self, event_id: str) -> None:
        """Forget an event: nothing in memory is left to do for it."""
        self._by_id.pop(event_id, None)

    # -- events the disk refused at emit time ------------------------------------------

    def held_in_memory(self, event_id: str) -> bool:
        """Whether `event_id` was emitted but the disk refused it so far."""
        record = self._by_id.get(event_id)
        return record is not None and not record.written

    async def until_written(self, event_ids: Iterable[str]) -> None:
        """Wait until none of `event_ids` is held in memory only."""
        ids = set(event_ids)
        while any(r.id in ids and not r.written for r in self._by_id.values()):
            await self._written.wait()

    def written_late(self) -> None:
        """Wake `until_written`: a held event was written (or dropped as a duplicate)."""
        self._written.set()
        self._written = anyio.Event()

    # -- a sink's deliveries -----------------------------------------------------------

    def next_for(self, sink: str) -> tuple[Record, Delivery] | None:
        """The sink's delivery to make next: the earliest due, oldest event first."""
        best: tuple[float, int] | None = None
        found: tuple[Record, Delivery] | None = None
        for record in self._by_id.values():
            delivery = record.deliveries.get(sink)
            if not record.written or delivery is None or not delivery.open:
                continue
            rank = (delivery.due, record.seq)
            if best is None or rank < best:
                best, found = rank, (record, delivery)
        return found

    def hurry(self, sink: str) -> None:
        """Make every open delivery of `sink` due now: its receiver answers again, so what
        waits for it need not sit out its backoff."""
        now = time.monotonic()
        for record in self._by_id.values():
            waiting = record.deliveries.get(sink)
            if waiting is not None and waiting.open:
                waiting.due = min(waiting.due, now)

    def waiting_for(self, sink: str) -> int:
        """How many deliveries to `sink` are still open."""
        return sum(
            1 for r in self._by_id.values() if sink in r.deliveries and r.deliveries[sink].open
        )

    def backlog(self) -> None:
        """Publish how many deliveries wait (the `postdeploy_outbox_backlog` metric)."""
        count = sum(d.open for r in self._by_id.values() for d in r.deliveries.values())
        metrics.outbox_backlog(count)
