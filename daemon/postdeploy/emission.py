"""A window's alert events: made with the window's evidence, handed to the outbox, and the
wait until every one of them is on disk (`done` is written only after that)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from postdeploy.context import WindowContext
from postdeploy.events import Event
from postdeploy.reaction import Interrupted
from postdeploy.verdict import Verdict

Emit = Callable[[Event], Awaitable[None]]
UntilWritten = Callable[[list[str]], Awaitable[None]]


async def written_at_once(_: list[str]) -> None:
    """For a runner without an outbox: every event is handled when `emit` returns."""


class Emitter:
    """The events of one window, and whether they are durable yet."""

    def __init__(
        self, ctx: WindowContext, emit: Emit, until_written: UntilWritten = written_at_once
    ) -> None:
        self._ctx = ctx
        self.emit = emit
        self._until_written = until_written  # waits until emitted events are on disk
        self._emitted: list[str] = []  # ids of the events this window emitted

    async def event(
        self,
        kind: str,
        reason: str,
        verdict: Verdict | None = None,
        *,
        seq: str = "",
        status: str = "",
        action_taken: str = "",
        **extra: Any,
    ) -> None:
        """Hand an event to the outbox (durable, idempotent by id)."""
        evidence = {**(verdict.evidence if verdict else {}), **extra}
        if "last_probes" not in evidence:
            evidence["last_probes"] = [row.to_dict() for row in self._ctx.tally.recent]
        event = Event(
            kind=kind,
            key=self._ctx.key,
            reason=reason,
            at=time.time(),
            status=str(status),
            action_taken=str(action_taken),
            evidence=evidence,
            metadata=self._ctx.metadata,
            seq=seq,
        )
        self._emitted.append(event.id)
        await self.emit(event)

    async def all_written(self, shutdown: anyio.Event) -> None:
        """Until every event of this window is on disk; Interrupted once `shutdown` is set.

        `done` is the commit point: written before an event the disk refused a moment ago,
        a crash right after it would lose that alert for good."""
        written = False
        async with anyio.create_task_group() as tg:

            async def until_written() -> None:
                nonlocal written
                await self._until_written(self._emitted)
                written = True
                tg.cancel_scope.cancel()

            tg.start_soon(until_written)
            await shutdown.wait()
            tg.cancel_scope.cancel()
        # Raised out here: inside the task group it would come out as an ExceptionGroup.
        if not written:
            raise Interrupted("waiting for its events to be written")
