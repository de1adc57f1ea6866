"""The durable outbox: every event is on disk before any sink sees it, then each sink gets it.

- `emit` (called on a window's path) writes the event durably and returns; it never waits for
  a sink and never raises. If the disk refuses, the event is kept in memory and the write is
  retried by the housekeeping task; the event reaches no sink before it is on disk.
- An event's id is stable, so a second `emit` of it (after a crash and restart, say) is a no-op.
- The event's sinks (`targets`) are chosen when it is emitted: every configured sink whose
  `min_severity` it meets.
- Each sink has a task of its own (`worker.py`), taking its deliveries in order of when they
  are due, retried with backoff.
- A delivery mark is written durably before anything else happens (`keeper.py`), so after a
  restart nothing delivered is sent again and nothing pending is lost (at-least-once: a crash
  between the receiver's answer and the mark re-sends that one event, with the same
  Idempotency-Key).
- A delivery still pending `max_age_s` after the event was emitted is given up on: logged as an
  error once and kept on disk (`postdeploy status` lists it). Nothing is dropped silently.

This module is the front: `Outbox` wires the table of events in memory (`records.py`), the
record keeping on disk (`keeper.py`, over `spool.py`), one worker per sink (`worker.py`) and
the housekeeping (`housekeeping.py`); `pending` is what `postdeploy status` reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from postdeploy.alerts.config import AnySink, OutboxSettings, sink_names
from postdeploy.alerts.housekeeping import Housekeeping
from postdeploy.alerts.keeper import Keeper
from postdeploy.alerts.record import backoff, plain
from postdeploy.alerts.records import Records
from postdeploy.alerts.sinks import build_sink
from postdeploy.alerts.spool import SinkState, Spool
from postdeploy.alerts.worker import SinkWorker
from postdeploy.events import Event, Severity

__all__ = ["Outbox", "pending", "plain"]

log = structlog.get_logger("postdeploy.alerts")


class Outbox:
    """The outbox below state directory `root`, delivering to `sinks`."""

    def __init__(
        self,
        root: Path,
        sinks: Sequence[AnySink],
        settings: OutboxSettings,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.settings = settings
        self.spool = Spool(root)
        self._environ = environ
        self._configs = self._named(sinks)
        self._records = Records(wake=self._wake)
        self._keeper = Keeper(self.spool, self._records, lambda: self.settings)
        self._housekeeping = Housekeeping(self._keeper, lambda: self.settings, lambda: self.sinks)
        self._emitting: set[str] = set()
        self._workers: dict[str, SinkWorker] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def sinks(self) -> list[str]:
        """The names of the configured sinks."""
        return list(self._configs)

    @staticmethod
    def _named(sinks: Sequence[AnySink]) -> dict[str, AnySink]:
        named: dict[str, AnySink] = {}
        for name, config in zip(sink_names(sinks), sinks, strict=True):
            if name in named:
                log.error("alerts.duplicate_sink", sink=name, note="only the first is used")
                continue
            named[name] = config
        return named

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    # -- emit ---------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        """Record `event` durably for the sinks; never raises, never waits for a sink."""
        try:
            event_id = event.id
            if event_id in self._records or event_id in self._emitting:
                log.debug("alert.duplicate", event_id=event_id, kind=event.kind)
                return
            self._emitting.add(event_id)
            try:
                # Shielded: a window cancelled mid-write must not leave the event on disk but
                # unknown to this process.
                with anyio.CancelScope(shield=True):
                    await self._emit(event_id, event)
            finally:
                self._emitting.discard(event_id)
        except Exception as exc:
            log.exception(
                "alert.emit_failed", kind=event.kind, error=f"{type(exc).__name__}: {exc}"
            )

    def remembers(self, event_id: str) -> bool:
        """Whether `event_id` is still in memory: emitted, and not finished yet (a re-emit
        of it is then a no-op)."""
        return event_id in self._records

    def held_in_memory(self, event_id: str) -> bool:
        """Whether `event_id` was emitted but the disk refused it so far (see `until_written`)."""
        return self._records.held_in_memory(event_id)

    async def until_written(self, event_ids: Iterable[str]) -> None:
        """Wait until none of `event_ids` is held in memory only (the disk refused it at
        emit time and it waits for a retry): a window's `done` is written after its events
        are on disk, so a crash can never leave a finished window whose alert is lost."""
        await self._records.until_written(event_ids)

    def wants(self, event: Event) -> bool:
        """Whether any sink takes `event` (else `emit` has nothing to do)."""
        return bool(self._targets(event))

    def _targets(self, event: Event) -> list[str]:
        """The configured sinks whose `min_severity` `event` meets."""
        return [
            name
            for name, config in self._configs.items()
            if event.severity >= Severity.parse(config.min_severity)
        ]

    async def _emit(self, event_id: str, event: Event) -> None:
        targets = self._targets(event)
        if not targets:
            # No sink wants it: there is nothing to deliver, so nothing to keep on disk (this
            # keeps the fsyncs off the arming and reaction paths of a daemon without alerts).
            log.debug("alert.unrouted", event_id=event_id, kind=event.kind)
            return
        data = plain(event.to_dict())
        record = self._records.new(event_id, data, targets)
        try:
            new = await anyio.to_thread.run_sync(self.spool.write_event, event_id, record.stored())
        except OSError as exc:
            record.write_failures = 1
            record.write_due = time.monotonic() + backoff(self.settings, 1)
            self._records.adopt(record)
            log.error(
                "alert.write_failed",
                **record.context(),
                severity=data.get("severity"),
                outbox=str(self.spool.path),
                error=str(exc),
                note="kept in memory and retried; no sink gets it before it is on disk",
            )
            return
        if not new:
            log.debug("alert.duplicate", event_id=event_id, kind=event.kind)
            return
        record.written = True
        self._records.adopt(record)
        log.info("alert.queued", **record.context(), severity=data.get("severity"), sinks=targets)

    # -- run ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: one task per sink, and the housekeeping."""
        await self._housekeeping.load()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for name in self._configs:
                    self._start_worker(name)
                tg.start_soon(self._housekeeping.run)
        finally:
            self._tg = None

    def _wake(self, sinks: Sequence[str]) -> None:
        for sink in sinks:
            worker = self._workers.get(sink)
            if worker is not None:
                worker.wake()

    def _start_worker(self, name: str) -> None:
        if self._tg is None:
            return
        try:
            sink = build_sink(name, self._configs[name], self._env())
        except Exception as exc:
            log.exception("alert.sink_unusable", sink=name, error=f"{type(exc).__name__}: {exc}")
            return
        worker = SinkWorker(sink, self._keeper, lambda: self.settings)
        self._workers[name] = worker
        if sink.problem:
            log.error(
                "alert.sink_unavailable",
                **sink.describe(),
                problem=sink.problem,
                note="its deliveries wait on disk; set it and restart the daemon",
            )
        self._tg.start_soon(worker.run)

    def reconfigure(self, sinks: Sequence[AnySink], settings: OutboxSettings) -> None:
        """Take a reloaded config: restart the tasks of changed sinks, start new ones.

        Deliveries already planned stay with their sink names; those of a sink that is no
        longer configured wait (and expire) unless it comes back.
        """
        old, new = self._configs, self._named(sinks)
        self._configs, self.settings = new, settings
        changed = [n for n in new if n in old and old[n] != new[n]]
        added = [n for n in new if n not in old]
        removed = [n for n in old if n not in new]
        for name in changed + removed:
            worker = self._workers.pop(name, None)
            if worker is not None:
                worker.scope.cancel()
        for name in changed + added:
            self._start_worker(name)
        for name in removed:
            waiting = self._records.waiting_for(name)
            if waiting:
                log.warning(
                    "alert.sink_removed",
                    sink=name,
                    pending_deliveries=waiting,
                    note="kept; delivered if the sink comes back, else they expire",
                )
        log.info(
            "alerts.reconfigured", sinks=list(new), added=added, changed=changed, removed=removed
        )


def pending(root: Path) -> list[dict[str, Any]]:
    """Every undelivered (event, sink) pair on disk below state directory `root` (for status).

    Blocking and cheap: it reads `<root>/.outbox/pending/` only and writes nothing. Expired
    deliveries are included with `expired: true`. No outbox yet: `[]`. An outbox that cannot
    be read (permissions) raises OSError; an event directory that cannot be read is skipped.
    """
    stored, _problems = Spool(root).load()
    now = time.time()
    rows: list[dict[str, Any]] = []
    for item in stored:
        for sink in item.targets:
            state = item.states.get(sink, SinkState())
            if state.delivered_at is not None:
                continue
            rows.append(
                {
                    "event_id": item.event_id,
                    "kind": item.event.get("kind"),
                    "severity": item.event.get("severity"),
                    "repo": item.event.get("repo"),
                    "work_item": item.event.get("work_item"),
                    "sink": sink,
                    "attempts": state.attempts,
                    "next_attempt_at": state.next_attempt_at,
                    "last_error": state.last_error,
                    "emitted_at": item.emitted_at,
                    "age_s": round(max(0.0, now - item.emitted_at), 3),
                    "expired": state.expired_at is not None,
                }
            )
    rows.sort(key=lambda r: (r["emitted_at"], r["event_id"], r["sink"]))
    return rows
