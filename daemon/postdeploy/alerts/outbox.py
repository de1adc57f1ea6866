"""The durable outbox: every event is on disk before any sink sees it, then each sink gets it.

- `emit` (called on a window's path) writes the event durably and returns; it never waits for
  a sink and never raises. If the disk refuses, the event is kept in memory and the write is
  retried by the housekeeping task; the event reaches no sink before it is on disk.
- An event's id is stable, so a second `emit` of it (after a crash and restart, say) is a no-op.
- The event's sinks (`targets`) are chosen when it is emitted: every configured sink whose
  `min_severity` it meets.
- Each sink has a task of its own, taking its deliveries in order of when they are due. An
  attempt has a hard timeout, so a hanging receiver holds up nothing but its own sink's queue.
  A failed attempt is retried with exponential backoff and jitter (longer if the receiver said
  Retry-After); once a sink takes an event again, its other waiting deliveries go at once.
- A delivery mark is written durably before anything else happens, so after a restart nothing
  delivered is sent again and nothing pending is lost (at-least-once: a crash between the
  receiver's answer and the mark re-sends that one event, with the same Idempotency-Key).
- A delivery still pending `max_age_s` after the event was emitted is given up on: logged as an
  error once and kept on disk (`postdeploy status` lists it). Nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from postdeploy import metrics
from postdeploy.alerts.config import AnySink, OutboxSettings, sink_names
from postdeploy.alerts.sinks import Result, Sink, build_sink
from postdeploy.alerts.spool import PENDING, SinkState, Spool, Stored
from postdeploy.events import Event, Severity

log = structlog.get_logger("postdeploy.alerts")

HOUSEKEEPING_S = 0.5  # how often unwritten events, unsaved marks and expiry are looked at
PRUNE_EVERY_S = 3600.0
RELOAD_EVERY_S = 10.0  # retrying to read an outbox the disk refused at start


@dataclass
class _Delivery:
    """One (event, sink) pair in memory."""

    sink: str
    state: SinkState
    due: float  # monotonic time of the next attempt
    unsaved: bool = False  # the state on disk is behind (a write failed); retried

    @property
    def open(self) -> bool:
        return self.state.delivered_at is None and self.state.expired_at is None


@dataclass
class _Record:
    """One event in memory, from `emit` until every sink has it."""

    id: str
    event: dict[str, Any]
    targets: list[str]
    emitted_at: float
    seq: int  # emission order: deliveries due at the same time go oldest first
    written: bool  # on disk; a sink sees only written events
    deliveries: dict[str, _Delivery] = field(default_factory=dict)
    write_failures: int = 0
    write_due: float = 0.0
    disk_failures: int = 0  # consecutive failed writes of marks or of the archive move
    disk_due: float = 0.0  # monotonic: when housekeeping may retry them
    finished: bool = False
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def context(self) -> dict[str, Any]:
        return {
            "event_id": self.id,
            "kind": self.event.get("kind"),
            "repo": self.event.get("repo"),
            "work_item": self.event.get("work_item"),
        }


class _Worker:
    """The task of one sink."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.scope = anyio.CancelScope()
        self.wake = anyio.Event()
        self.not_before = 0.0  # monotonic: a receiver's rate limit holds every delivery back


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


class Outbox:
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
        self._records: dict[str, _Record] = {}
        self._late_write = anyio.Event()  # set (and replaced) when a refused write succeeds
        self._emitting: set[str] = set()
        self._workers: dict[str, _Worker] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._seq = itertools.count()
        self._loaded = False
        self._load_due = 0.0
        self._next_prune = 0.0

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

    def held_in_memory(self, event_id: str) -> bool:
        """Whether `event_id` was emitted but the disk refused it so far (see `until_written`)."""
        record = self._records.get(event_id)
        return record is not None and not record.written

    async def until_written(self, event_ids: Iterable[str]) -> None:
        """Wait until none of `event_ids` is held in memory only (the disk refused it at
        emit time and it waits for a retry): a window's `done` is written after its events
        are on disk, so a crash can never leave a finished window whose alert is lost."""
        ids = set(event_ids)
        while any(r.id in ids and not r.written for r in self._records.values()):
            await self._late_write.wait()

    def wants(self, event: Event) -> bool:
        """Whether any sink takes `event` (else `emit` has nothing to do)."""
        return any(
            event.severity >= Severity.parse(config.min_severity)
            for config in self._configs.values()
        )

    async def _emit(self, event_id: str, event: Event) -> None:
        targets = [
            name
            for name, config in self._configs.items()
            if event.severity >= Severity.parse(config.min_severity)
        ]
        if not targets:
            # No sink wants it: there is nothing to deliver, so nothing to keep on disk (this
            # keeps the fsyncs off the arming and reaction paths of a daemon without alerts).
            log.debug("alert.unrouted", event_id=event_id, kind=event.kind)
            return
        data = plain(event.to_dict())
        emitted_at = time.time()
        record = _Record(event_id, data, targets, emitted_at, next(self._seq), written=False)
        try:
            new = await anyio.to_thread.run_sync(
                self.spool.write_event, event_id, self._stored(record)
            )
        except OSError as exc:
            record.write_failures = 1
            record.write_due = time.monotonic() + self._backoff(1)
            self._adopt(record)
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
        self._adopt(record)
        log.info("alert.queued", **record.context(), severity=data.get("severity"), sinks=targets)
        if not targets:
            await self._maybe_finish(record)

    @staticmethod
    def _stored(record: _Record) -> dict[str, Any]:
        return {"event": record.event, "targets": record.targets, "emitted_at": record.emitted_at}

    def _adopt(self, record: _Record) -> None:
        """Take `record` into memory (unless known) and wake the sinks it is for."""
        if record.id in self._records:
            return
        now = time.monotonic()
        for sink in record.targets:
            record.deliveries.setdefault(sink, _Delivery(sink, SinkState(), now))
        self._records[record.id] = record
        if record.written:
            self._wake(record.targets)
        self._backlog()

    def _wake(self, sinks: Sequence[str]) -> None:
        for sink in sinks:
            worker = self._workers.get(sink)
            if worker is not None:
                worker.wake.set()

    def _backlog(self) -> None:
        count = sum(d.open for r in self._records.values() for d in r.deliveries.values())
        metrics.outbox_backlog(count)

    # -- run ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: one task per sink, and the housekeeping."""
        await self._load()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for name in self._configs:
                    self._start_worker(name)
                tg.start_soon(self._housekeeping)
        finally:
            self._tg = None

    async def _load(self) -> None:
        """Take up the events left pending on disk (by an earlier run)."""
        self._load_due = time.monotonic() + RELOAD_EVERY_S
        try:
            await anyio.to_thread.run_sync(self.spool.remove_stale_tmp)
            stored, problems = await anyio.to_thread.run_sync(self.spool.load)
        except Exception as exc:
            log.error(
                "outbox.unreadable",
                outbox=str(self.spool.path),
                error=str(exc),
                note="retried; events emitted meanwhile are kept in memory",
            )
            return
        for problem in problems:
            log.error("outbox.entry_unreadable", problem=problem, note="left on disk as it is")
        expired = 0
        for item in sorted(stored, key=lambda s: s.emitted_at):  # oldest first, as emitted
            record = self._record_from(item)
            expired += sum(d.state.expired_at is not None for d in record.deliveries.values())
            self._adopt(record)
        self._loaded = True
        pending = [r for r in self._records.values() if r.written]
        log.info(
            "outbox.loaded",
            outbox=str(self.spool.path),
            pending_events=len(pending),
            pending_deliveries=sum(d.open for r in pending for d in r.deliveries.values()),
            sinks=list(self._configs),
        )
        if expired:
            log.warning(
                "outbox.expired_kept",
                deliveries=expired,
                outbox=str(self.spool.path / PENDING),
                note="given up on earlier (max_age_s); kept on disk, see postdeploy status",
            )
        for record in pending:
            await self._maybe_finish(record)

    def _record_from(self, item: Stored) -> _Record:
        record = _Record(
            item.event_id, item.event, item.targets, item.emitted_at, next(self._seq), True
        )
        now_wall, now = time.time(), time.monotonic()
        for sink in item.targets:
            state = item.states.get(sink, SinkState())
            wait = 0.0 if state.next_attempt_at is None else state.next_attempt_at - now_wall
            record.deliveries[sink] = _Delivery(sink, state, now + max(0.0, wait))
        return record

    # -- sinks --------------------------------------------------------------------------

    def _start_worker(self, name: str) -> None:
        if self._tg is None:
            return
        try:
            sink = build_sink(name, self._configs[name], self._env())
        except Exception as exc:
            log.exception("alert.sink_unusable", sink=name, error=f"{type(exc).__name__}: {exc}")
            return
        worker = _Worker(sink)
        self._workers[name] = worker
        if sink.problem:
            log.error(
                "alert.sink_unavailable",
                **sink.describe(),
                problem=sink.problem,
                note="its deliveries wait on disk; set it and restart the daemon",
            )
        self._tg.start_soon(self._work, worker)

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
            waiting = sum(
                1
                for r in self._records.values()
                if name in r.deliveries and r.deliveries[name].open
            )
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

    async def _work(self, worker: _Worker) -> None:
        name = worker.sink.name
        try:
            with worker.scope:
                if worker.sink.problem:
                    await anyio.sleep_forever()
                while True:
                    worker.wake = anyio.Event()
                    found = self._next(name)
                    if found is None:
                        await worker.wake.wait()
                        continue
                    record, delivery = found
                    wait = max(delivery.due, worker.not_before) - time.monotonic()
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await worker.wake.wait()
                        continue
                    try:
                        if self._too_old(record):
                            await self._expire(record, delivery)
                        else:
                            await self._attempt(worker, record, delivery)
                    except Exception as exc:
                        # A bug here must not take the daemon down: log it, pause, go on.
                        log.exception(
                            "alert.worker_error",
                            **record.context(),
                            sink=name,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                        delivery.due = time.monotonic() + self.settings.retry_max_s
        finally:
            with anyio.CancelScope(shield=True):
                await worker.sink.aclose()

    def _next(self, sink: str) -> tuple[_Record, _Delivery] | None:
        """The sink's delivery to make next: the earliest due, oldest event first."""
        best: tuple[float, int] | None = None
        found: tuple[_Record, _Delivery] | None = None
        for record in self._records.values():
            delivery = record.deliveries.get(sink)
            if not record.written or delivery is None or not delivery.open:
                continue
            rank = (delivery.due, record.seq)
            if best is None or rank < best:
                best, found = rank, (record, delivery)
        return found

    async def _attempt(self, worker: _Worker, record: _Record, delivery: _Delivery) -> None:
        sink = worker.sink
        result: Result | None = None
        with anyio.move_on_after(sink.attempt_timeout_s):
            try:
                result = await sink.deliver(record.event)
            except Exception as exc:
                log.exception("alert.sink_error", **record.context(), **sink.describe())
                result = Result(False, f"internal error: {type(exc).__name__}: {exc}")
        if result is None:
            result = Result(False, f"timed out after {sink.attempt_timeout_s:g}s")
        metrics.alert_delivered(sink.name, result.ok)
        state = delivery.state
        state.attempts += 1
        state.last_attempt_at = time.time()
        if result.ok:
            state.delivered_at, state.next_attempt_at, state.last_error = time.time(), None, None
            await self._save(record, delivery)
            log.info(
                "alert.delivered",
                **record.context(),
                **sink.describe(),
                attempts=state.attempts,
                detail=result.detail,
            )
            # The receiver is up again: what waits for it need not sit out its backoff.
            now = time.monotonic()
            for other in self._records.values():
                waiting = other.deliveries.get(sink.name)
                if waiting is not None and waiting.open:
                    waiting.due = min(waiting.due, now)
            await self._maybe_finish(record)
        else:
            delay = self._backoff(state.attempts)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
                worker.not_before = time.monotonic() + result.retry_after
            delivery.due = time.monotonic() + delay
            state.next_attempt_at = time.time() + delay
            state.last_error = result.detail
            await self._save(record, delivery)
            log.warning(
                "alert.delivery_failed",
                **record.context(),
                **sink.describe(),
                attempt=state.attempts,
                error=result.detail,
                retry_in_s=round(delay, 3),
                retry_after_s=result.retry_after,
            )
        self._backlog()

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: half the step fixed, half random."""
        step = self.settings.retry_initial_s * 2.0 ** min(max(attempts - 1, 0), 60)
        step = min(self.settings.retry_max_s, step)
        return step / 2 + random.uniform(0, step / 2)

    def _too_old(self, record: _Record) -> bool:
        return time.time() - record.emitted_at > self.settings.max_age_s

    async def _expire(self, record: _Record, delivery: _Delivery) -> None:
        delivery.state.expired_at = time.time()
        delivery.state.next_attempt_at = None
        log.error(
            "alert.expired",
            **record.context(),
            sink=delivery.sink,
            severity=record.event.get("severity"),
            attempts=delivery.state.attempts,
            age_s=round(time.time() - record.emitted_at, 3),
            max_age_s=self.settings.max_age_s,
            last_error=delivery.state.last_error,
            kept=str(self.spool.path / PENDING / record.id),
            note="no longer retried; the event stays on disk",
        )
        await self._save(record, delivery)
        await self._maybe_finish(record)
        self._backlog()

    async def _save(self, record: _Record, delivery: _Delivery) -> None:
        """Write a delivery's state durably; on failure keep it in memory and retry later."""
        async with record.lock:
            if record.finished:
                return  # the whole directory is archived: every sink has the event
            try:
                await anyio.to_thread.run_sync(
                    self.spool.write_state, record.id, delivery.sink, delivery.state
                )
            except OSError as exc:
                delivery.unsaved = True
                retry = self._disk_failed(record)
                log.error(
                    "alert.mark_failed",
                    **record.context(),
                    sink=delivery.sink,
                    error=str(exc),
                    retry_in_s=retry,
                    note="kept in memory and retried",
                )
                return
            delivery.unsaved = False
            record.disk_failures = 0

    def _disk_failed(self, record: _Record) -> float:
        """Note a failed write for `record`; returns the seconds until housekeeping retries."""
        record.disk_failures += 1
        delay = self._backoff(record.disk_failures)
        record.disk_due = time.monotonic() + delay
        return round(delay, 3)

    async def _maybe_finish(self, record: _Record) -> None:
        """Archive the event once every sink has it; forget it once nothing is left to do."""
        async with record.lock:
            if record.finished or not record.written:
                return
            deliveries = record.deliveries.values()
            if any(d.open or d.unsaved for d in deliveries):
                return
            if any(d.state.delivered_at is None for d in deliveries):
                # Expired for some sink: it stays in pending/ on disk (status lists it; a
                # re-emit of it is still a no-op), but nothing in memory waits for it.
                self._records.pop(record.id, None)
                return
            try:
                await anyio.to_thread.run_sync(self.spool.finish, record.id)
            except OSError as exc:
                retry = self._disk_failed(record)
                log.error(
                    "alert.archive_failed", **record.context(), error=str(exc), retry_in_s=retry
                )
                return
            record.finished = True
            self._records.pop(record.id, None)

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self._housekeep()
            except Exception as exc:
                log.exception("outbox.housekeeping_failed", error=f"{type(exc).__name__}: {exc}")
            await anyio.sleep(HOUSEKEEPING_S)

    async def _housekeep(self) -> None:
        if not self._loaded and time.monotonic() >= self._load_due:
            await self._load()
        now = time.monotonic()
        for record in list(self._records.values()):
            if not record.written:
                if now >= record.write_due:
                    await self._rewrite(record)
                continue
            for delivery in record.deliveries.values():
                if delivery.open and self._too_old(record):
                    await self._expire(record, delivery)
            if now < record.disk_due:
                continue  # the disk refused a moment ago: wait for the backoff
            for delivery in record.deliveries.values():
                if delivery.unsaved:
                    await self._save(record, delivery)
            await self._maybe_finish(record)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            await self._prune()

    async def _rewrite(self, record: _Record) -> None:
        """Retry the write of an event the disk refused at emit time."""
        try:
            new = await anyio.to_thread.run_sync(
                self.spool.write_event, record.id, self._stored(record)
            )
        except OSError as exc:
            record.write_failures += 1
            delay = self._backoff(record.write_failures)
            record.write_due = time.monotonic() + delay
            log.error(
                "alert.write_failed",
                **record.context(),
                attempt=record.write_failures,
                error=str(exc),
                retry_in_s=round(delay, 3),
            )
            return
        if not new:
            # Already on disk: the same event emitted again after it was written (and perhaps
            # delivered and archived) while this copy waited for the disk. The copy on disk
            # rules: this one is dropped, never delivered (it would deliver twice). A pending
            # copy is taken up by the next load.
            log.info("alert.duplicate", **record.context(), late=True)
            self._records.pop(record.id, None)
            self._loaded = False
            self._load_due = time.monotonic()
            self._late_write.set()
            self._late_write = anyio.Event()
            return
        record.written = True
        self._late_write.set()
        self._late_write = anyio.Event()
        log.info("alert.queued", **record.context(), sinks=record.targets, late=True)
        self._wake(record.targets)
        if not record.targets:
            await self._maybe_finish(record)

    async def _prune(self) -> None:
        before = time.time() - self.settings.keep_delivered_s
        try:
            removed = await anyio.to_thread.run_sync(self.spool.prune_delivered, before)
        except OSError as exc:
            log.warning("outbox.prune_failed", error=str(exc))
            return
        if removed:
            log.info("outbox.pruned", delivered_events_removed=removed)


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
