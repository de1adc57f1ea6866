"""The outbox's upkeep: taking up the spool at start, and every `HOUSEKEEPING_S` retrying
what the disk refused, expiring what is too old, and pruning the archive.

- `load` takes up the events an earlier run left pending; an outbox the disk refuses to read
  is retried every `RELOAD_EVERY_S` (events emitted meanwhile are kept in memory).
- An event the disk refused at emit time is written again after a backoff; no sink sees it
  before. If the event is on disk by then (emitted again meanwhile), the copy on disk rules.
- Delivery marks and archive moves the disk refused are written again after a backoff.
- Delivered events older than `keep_delivered_s` are removed every `PRUNE_EVERY_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from postdeploy.alerts.config import OutboxSettings
from postdeploy.alerts.keeper import Keeper
from postdeploy.alerts.record import Record, backoff
from postdeploy.alerts.spool import PENDING

log = structlog.get_logger("postdeploy.alerts")

HOUSEKEEPING_S = 0.5  # how often unwritten events, unsaved marks and expiry are looked at
PRUNE_EVERY_S = 3600.0
RELOAD_EVERY_S = 10.0  # retrying to read an outbox the disk refused at start


class Housekeeping:
    """The load of the spool and the periodic upkeep of the records `keeper` keeps."""

    def __init__(
        self,
        keeper: Keeper,
        settings: Callable[[], OutboxSettings],
        sinks: Callable[[], list[str]],
    ) -> None:
        self._keeper = keeper
        self._spool = keeper.spool
        self._records = keeper.records
        self._settings = settings  # the current settings (a reload replaces them)
        self._sinks = sinks  # the names of the configured sinks (for the log)
        self._loaded = False
        self._load_due = 0.0
        self._next_prune = 0.0

    async def load(self) -> None:
        """Take up the events left pending on disk (by an earlier run)."""
        self._load_due = time.monotonic() + RELOAD_EVERY_S
        try:
            await anyio.to_thread.run_sync(self._spool.remove_stale_tmp)
            stored, problems = await anyio.to_thread.run_sync(self._spool.load)
        except Exception as exc:
            log.error(
                "outbox.unreadable",
                outbox=str(self._spool.path),
                error=str(exc),
                note="retried; events emitted meanwhile are kept in memory",
            )
            return
        for problem in problems:
            log.error("outbox.entry_unreadable", problem=problem, note="left on disk as it is")
        expired = 0
        for item in sorted(stored, key=lambda s: s.emitted_at):  # oldest first, as emitted
            record = self._records.from_stored(item)
            expired += sum(d.state.expired_at is not None for d in record.deliveries.values())
            self._records.adopt(record)
        self._loaded = True
        pending = [r for r in self._records if r.written]
        log.info(
            "outbox.loaded",
            outbox=str(self._spool.path),
            pending_events=len(pending),
            pending_deliveries=sum(d.open for r in pending for d in r.deliveries.values()),
            sinks=self._sinks(),
        )
        if expired:
            log.warning(
                "outbox.expired_kept",
                deliveries=expired,
                outbox=str(self._spool.path / PENDING),
                note="given up on earlier (max_age_s); kept on disk, see postdeploy status",
            )
        for record in pending:
            await self._keeper.maybe_finish(record)

    async def run(self) -> None:
        """Look after the records every `HOUSEKEEPING_S` until cancelled."""
        while True:
            try:
                await self._housekeep()
            except Exception as exc:
                log.exception("outbox.housekeeping_failed", error=f"{type(exc).__name__}: {exc}")
            await anyio.sleep(HOUSEKEEPING_S)

    async def _housekeep(self) -> None:
        if not self._loaded and time.monotonic() >= self._load_due:
            await self.load()
        now = time.monotonic()
        for record in self._records:
            if not record.written:
                if now >= record.write_due:
                    await self._rewrite(record)
                continue
            for delivery in record.deliveries.values():
                if delivery.open and self._keeper.too_old(record):
                    await self._keeper.expire(record, delivery)
            if now < record.disk_due:
                continue  # the disk refused a moment ago: wait for the backoff
            for delivery in record.deliveries.values():
                if delivery.unsaved:
                    await self._keeper.save(record, delivery)
            await self._keeper.maybe_finish(record)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            await self._prune()

    async def _rewrite(self, record: Record) -> None:
        """Retry the write of an event the disk refused at emit time."""
        try:
            new = await anyio.to_thread.run_sync(
                self._spool.write_event, record.id, record.stored()
            )
        except OSError as exc:
            record.write_failures += 1
            delay = backoff(self._settings(), record.write_failures)
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
            self._records.drop(record.id)
            self._loaded = False
            self._load_due = time.monotonic()
            self._records.written_late()
            return
        record.written = True
        self._records.written_late()
        log.info("alert.queued", **record.context(), sinks=record.targets, late=True)
        self._records.wake(record.targets)

    async def _prune(self) -> None:
        before = time.time() - self._settings().keep_delivered_s
        try:
            removed = await anyio.to_thread.run_sync(self._spool.prune_delivered, before)
        except OSError as exc:
            log.warning("outbox.prune_failed", error=str(exc))
            return
        if removed:
            log.info("outbox.pruned", delivered_events_removed=removed)
