"""The end of a window on disk: `report.md` and `timeline.svg`, then `done` (the commit point),
retried while the disk refuses. `OutcomeWriter.write_outcome` is the one place the end-of-window
artefacts are written."""

from __future__ import annotations

import dataclasses
from functools import partial

import anyio
from anyio.lowlevel import RunVar

from postdeploy import layout, reaction, timeline
from postdeploy.report import Outcome, done_record, render_report
from postdeploy.series import ProbeRow
from postdeploy.series_log import SeriesLog
from postdeploy.store import ItemStore
from postdeploy.window_context import WindowContext

_DRAWING: RunVar[anyio.CapacityLimiter] = RunVar("postdeploy_drawing")


def _drawing() -> anyio.CapacityLimiter:
    """The one worker thread the pictures are drawn in (one per event loop)."""
    try:
        return _DRAWING.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _DRAWING.set(limiter)
        return limiter


class OutcomeWriter:
    """Writes one window's outcome; `written` holds it (and its report) once on disk."""

    def __init__(self, ctx: WindowContext, series: SeriesLog) -> None:
        self._ctx = ctx
        self._store: ItemStore = ctx.store
        self._series = series
        self.written: tuple[Outcome, str] | None = None  # the outcome and report.md

    async def commit(self, outcome: Outcome, shutdown: anyio.Event) -> tuple[Outcome, str]:
        """Write the outcome until the disk takes it (`reaction.durably`); Interrupted once
        `shutdown` is set, ItemVanished if the directory is gone."""
        await reaction.durably("the outcome", partial(self.write_outcome, outcome), shutdown)
        assert self.written is not None
        return self.written

    async def write_outcome(self, outcome: Outcome) -> None:
        """One try: the rows the disk refused so far, then `report.md` and `timeline.svg`,
        then `done`."""
        await self._series.flush()
        rows = await self._series.rows()
        if outcome.rollback and "verification" in outcome.rollback:
            verified = (await self._store.read_lines(layout.VERIFY)).rows
            checked = [r for r in map(ProbeRow.from_dict, verified) if r is not None]
            outcome = dataclasses.replace(outcome, verification=checked)
        # Drawn off the event loop (10,000 ticks take a while, and other windows are ticking),
        # one picture at a time: windows ending together would otherwise draw in dozens of
        # threads at once, and the event loop waits for the interpreter behind all of them
        # (1,000 windows ending within 5 s: ticks' p99 lateness 40 ms instead of 1.4).
        draw = partial(timeline.attach, outcome, rows, self._ctx.start.schedule, self._ctx.settings)
        outcome = await anyio.to_thread.run_sync(draw, limiter=_drawing())
        report = render_report(outcome, rows)
        await self._store.write_atomic(layout.REPORT, report.encode())
        await self._store.write_atomic(layout.TIMELINE, outcome.timeline.encode())
        await self._store.write_json(layout.DONE, done_record(outcome))
        self.written = (outcome, report)
