"""One sink's delivery task: its deliveries in order of when they are due, with backoff.

An attempt has a hard timeout, so a hanging receiver holds up nothing but its own sink. A
failed attempt is retried with exponential backoff and jitter (longer if the receiver said
Retry-After, which holds back every delivery of the sink); once the sink takes an event
again, its other waiting deliveries go at once. A delivery older than `max_age_s` is expired
instead of attempted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from postdeploy import metrics
from postdeploy.alerts.config import OutboxSettings
from postdeploy.alerts.keeper import Keeper
from postdeploy.alerts.record import Delivery, Record, backoff
from postdeploy.alerts.sinks import Result, Sink

log = structlog.get_logger("postdeploy.alerts")


class SinkWorker:
    """The task of one sink: `run` until its `scope` is cancelled."""

    def __init__(self, sink: Sink, keeper: Keeper, settings: Callable[[], OutboxSettings]) -> None:
        self.sink = sink
        self.scope = anyio.CancelScope()
        self._keeper = keeper
        self._records = keeper.records
        self._settings = settings  # the current settings (a reload replaces them)
        self._wake = anyio.Event()
        self._not_before = 0.0  # monotonic: a receiver's rate limit holds every delivery back

    def wake(self) -> None:
        """Look again for the next delivery (a new event, or one due earlier)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; the sink is closed on the way out."""
        name = self.sink.name
        try:
            with self.scope:
                if self.sink.problem:
                    await anyio.sleep_forever()
                while True:
                    self._wake = anyio.Event()
                    found = self._records.next_for(name)
                    if found is None:
                        await self._wake.wait()
                        continue
                    record, delivery = found
                    wait = max(delivery.due, self._not_before) - time.monotonic()
                    if wait > 0:
                        with anyio.move_on_after(wait):
                            await self._wake.wait()
                        continue
                    try:
                        if self._keeper.too_old(record):
                            await self._keeper.expire(record, delivery)
                        else:
                            await self._attempt(record, delivery)
                    except Exception as exc:
                        # A bug here must not take the daemon down: log it, pause, go on.
                        log.exception(
                            "alert.worker_error",
                            **record.context(),
                            sink=name,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                        delivery.due = time.monotonic() + self._settings().retry_max_s
        finally:
            with anyio.CancelScope(shield=True):
                await self.sink.aclose()

    async def _attempt(self, record: Record, delivery: Delivery) -> None:
        sink = self.sink
        result = await self._send(record)
        metrics.alert_delivered(sink.name, result.ok)
        state = delivery.state
        state.attempts += 1
        state.last_attempt_at = time.time()
        if result.ok:
            state.delivered_at, state.next_attempt_at, state.last_error = time.time(), None, None
            await self._keeper.save(record, delivery)
            log.info(
                "alert.delivered",
                **record.context(),
                **sink.describe(),
                attempts=state.attempts,
                detail=result.detail,
            )
            self._records.hurry(sink.name)
            await self._keeper.maybe_finish(record)
        else:
            delay = backoff(self._settings(), state.attempts)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
                self._not_before = time.monotonic() + result.retry_after
            delivery.due = time.monotonic() + delay
            state.next_attempt_at = time.time() + delay
            state.last_error = result.detail
            await self._keeper.save(record, delivery)
            log.warning(
                "alert.delivery_failed",
                **record.context(),
                **sink.describe(),
                attempt=state.attempts,
                error=result.detail,
                retry_in_s=round(delay, 3),
                retry_after_s=result.retry_after,
            )
        self._records.backlog()

    async def _send(self, record: Record) -> Result:
        """One attempt, within the sink's hard timeout; a failure is a `Result`, never raised."""
        sink = self.sink
        with anyio.move_on_after(sink.attempt_timeout_s):
            try:
                return await sink.deliver(record.event)
            except Exception as exc:
                log.exception("alert.sink_error", **record.context(), **sink.describe())
                return Result(False, f"internal error: {type(exc).__name__}: {exc}")
        return Result(False, f"timed out after {sink.attempt_timeout_s:g}s")
