"""The outbox's record keeping on disk: delivery marks, the archive move, expiry.

Every change to a delivery is written durably (`save`) before anything else happens, so a
restart neither re-sends what was delivered nor loses what was pending. A write the disk
refuses is kept in memory and retried by the housekeeping after a backoff. Once every sink
has an event, its directory moves to `delivered/` (`maybe_finish`); a delivery still pending
`max_age_s` after the emit is given up on (`expire`): logged once, kept on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from postdeploy.alerts.config import OutboxSettings
from postdeploy.alerts.record import Delivery, Record, backoff
from postdeploy.alerts.records import Records
from postdeploy.alerts.spool import PENDING, Spool

log = structlog.get_logger("postdeploy.alerts")


class Keeper:
    """Writes what happens to the records of `records` into `spool`."""

    def __init__(
        self, spool: Spool, records: Records, settings: Callable[[], OutboxSettings]
    ) -> None:
        self.spool = spool
        self.records = records
        self._settings = settings  # the current settings (a reload replaces them)

    def too_old(self, record: Record) -> bool:
        """Whether `record` was emitted longer than `max_age_s` ago."""
        return time.time() - record.emitted_at > self._settings().max_age_s

    async def expire(self, record: Record, delivery: Delivery) -> None:
        """Give up on `delivery`: logged once as an error, the event stays on disk."""
        delivery.state.expired_at = time.time()
        delivery.state.next_attempt_at = None
        log.error(
            "alert.expired",
            **record.context(),
            sink=delivery.sink,
            severity=record.event.get("severity"),
            attempts=delivery.state.attempts,
            age_s=round(time.time() - record.emitted_at, 3),
            max_age_s=self._settings().max_age_s,
            last_error=delivery.state.last_error,
            kept=str(self.spool.path / PENDING / record.id),
            note="no longer retried; the event stays on disk",
        )
        await self.save(record, delivery)
        await self.maybe_finish(record)
        self.records.backlog()

    async def save(self, record: Record, delivery: Delivery) -> None:
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

    def _disk_failed(self, record: Record) -> float:
        """Note a failed write for `record`; returns the seconds until housekeeping retries."""
        record.disk_failures += 1
        delay = backoff(self._settings(), record.disk_failures)
        record.disk_due = time.monotonic() + delay
        return round(delay, 3)

    async def maybe_finish(self, record: Record) -> None:
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
                self.records.drop(record.id)
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
            self.records.drop(record.id)
