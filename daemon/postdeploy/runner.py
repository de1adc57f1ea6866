"""The task that runs one window: observe until a verdict, then conclude.

`WindowRunner` is the window's lifecycle and its handle for the daemon (stop, cancel,
supersede, a person's rollback, a reload, a vanished directory). The work is done by its
parts, in order: `observe.Observation` (the ticks), `conclusion.Conclusion` (verdict ->
reaction -> verification -> outcome), `outcome.OutcomeWriter` (`report.md`, then `done`);
`emission.Emitter` sends the window's events, `series_log.SeriesLog` keeps its rows. Errors
stay inside the window: the daemon and every other window go on.
"""

from __future__ import annotations

from enum import StrEnum

import anyio
import structlog

from postdeploy import manual
from postdeploy.clock import SYSTEM, Clock
from postdeploy.conclusion import Conclusion
from postdeploy.config import RepoConfig, WindowSettings
from postdeploy.context import WindowContext
from postdeploy.emission import Emit, Emitter, UntilWritten, written_at_once
from postdeploy.layout import ItemKey
from postdeploy.observe import Observation
from postdeploy.outcome import OutcomeWriter
from postdeploy.probe import Prober
from postdeploy.reaction import Interrupted
from postdeploy.report import Outcome
from postdeploy.series import Tally
from postdeploy.series_log import SeriesLog
from postdeploy.store import ItemStore, ItemVanished
from postdeploy.verdict import Action, Status, Verdict
from postdeploy.window import WindowStart

log = structlog.get_logger("postdeploy.window")


class Phase(StrEnum):
    OBSERVING = "observing"  # probing; may be stopped (cancel, supersede, kill switch)
    CONCLUDING = "concluding"  # has its verdict; reacting and writing; never interrupted
    FINISHED = "finished"


class WindowRunner:
    """One open window. `run()` is its task; `stop()` ends it early from outside."""

    def __init__(
        self,
        store: ItemStore,
        start: WindowStart,
        repo: RepoConfig,
        settings: WindowSettings,
        prober: Prober,
        emit: Emit,
        *,
        first_seen: bool,
        reacting: bool = False,
        series: bytes | None = None,
        go: anyio.Event | None = None,
        running_since: float | None = None,
        until_written: UntilWritten = written_at_once,
        clock: Clock = SYSTEM,
    ) -> None:
        self.key: ItemKey = store.key
        self.store = store
        self.start = start
        self.first_seen = first_seen
        self.ctx = WindowContext(store, start, repo, settings, prober, clock)
        self.events = Emitter(self.ctx, emit, until_written)
        rows = SeriesLog(store)
        self.observation = Observation(
            self.ctx,
            rows,
            self.events,
            first_seen=first_seen,
            lines=series,
            go=go,
            running_since=running_since,
        )
        self._shutdown = anyio.Event()  # set by stop(None): waits for the disk give up
        self.writer = OutcomeWriter(self.ctx, rows)
        self.conclusion = Conclusion(self.ctx, self.events, self.writer, self._shutdown)
        self.scheduled = anyio.Event()  # set once the window knows its next step (or ended)
        # A rollback was started before a restart: the window had its verdict and its reaction
        # must be concluded (ROLLBACK_UNKNOWN or its recorded result), never superseded.
        self.phase = Phase.CONCLUDING if reacting else Phase.OBSERVING
        self._vanished = False  # the directory was removed (see `vanish`)
        self._manual: manual.Request | None = None  # a person asked for the rollback
        self.ended = anyio.Event()  # set when `run` returns, whatever the outcome

    # -- what the daemon reads and changes ----------------------------------------------

    @property
    def settings(self) -> WindowSettings:
        return self.ctx.settings

    @settings.setter
    def settings(self, settings: WindowSettings) -> None:
        self.ctx.settings = settings

    @property
    def prober(self) -> Prober:
        return self.ctx.prober

    @property
    def tally(self) -> Tally:
        return self.ctx.tally

    @property
    def completed(self) -> bool:
        """`done` is written: the window is finished for good."""
        return self.conclusion.completed

    @property
    def finished(self) -> tuple[Outcome, str] | None:
        """The outcome and report.md, once written."""
        return self.writer.written

    @property
    def sort_key(self) -> tuple[float, str]:
        """The current window of a repo is the one with the greatest sort key."""
        return (self.start.schedule.armed_at, self.key.work_item)

    def now(self) -> float:
        """Schedule time: wall time at load, advanced by the monotonic clock."""
        return self.ctx.now()

    def reconfigure(self, repo: RepoConfig, settings: WindowSettings) -> None:
        """Take a reloaded config; the schedule stays as recorded."""
        self.ctx.repo, self.ctx.settings = repo, settings

    def stop(self, verdict: Verdict | None) -> bool:
        """End the window early with `verdict` (None: daemon shutdown, nothing written).

        Returns False once the window has its verdict (a reaction is never interrupted),
        and when it was already stopped: each window is stopped once.
        """
        if verdict is None:
            self._shutdown.set()
            if self.phase is Phase.CONCLUDING:
                self.conclusion.verify_scope.cancel()  # verification resumes after the restart
        if self.phase is not Phase.OBSERVING:
            return False
        observing = self.observation
        first = observing.stopped is None and not observing.scope.cancel_called
        if observing.stopped is None or verdict is None:
            observing.stopped = verdict
        observing.scope.cancel()
        return first

    def request_rollback(self, request: manual.Request) -> bool:
        """A person asks for the rollback: an observing window ends DEGRADED and rolls back
        (whatever its repo's rules); False once it has its verdict, or was stopped."""
        if self.phase is not Phase.OBSERVING or self.observation.stopped is not None:
            return False
        reason = f"a person asked for the rollback ({request.requested_by})"
        if request.reason:
            reason += f": {request.reason}"
        self._manual = request
        return self.stop(Verdict(Status.DEGRADED, reason))

    @property
    def vanished(self) -> bool:
        """Whether the window ended because its directory was removed."""
        return self._vanished

    def vanish(self) -> None:
        """The work item's directory was removed: stop observing; nothing is written."""
        if self.phase is Phase.OBSERVING:
            self._vanished = True
            self.observation.scope.cancel()

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(repo=self.key.repo, work_item=self.key.work_item)
        try:
            verdict = await self._observe()
            if self._vanished:
                raise ItemVanished(f"{self.store.path} was removed")
            if verdict is None:
                log.info(
                    "window.paused", reason="daemon shutting down", ticks=self.tally.checks_total
                )
                return
            self.phase = Phase.CONCLUDING
            await self.conclusion.conclude(verdict, self._manual)
        except Interrupted as exc:
            log.warning("window.paused", reason=f"daemon shutting down while {exc}")
        except ItemVanished as exc:
            self._vanished = True
            # Deleted by hand mid-window: there is nowhere to write a verdict, and reacting
            # to a deploy nobody is tracking any more would surprise everyone.
            log.warning(
                "window.vanished",
                error=str(exc),
                ticks=self.tally.checks_total,
                note="the work item's directory was removed: the window ends here with no "
                "verdict and no reaction; the name is free to arm again",
            )
        except Exception as exc:
            log.exception("window.error", error=f"{type(exc).__name__}: {exc}")
            self.phase = Phase.CONCLUDING
            verdict = Verdict(Status.ERROR, f"internal error: {type(exc).__name__}: {exc}")
            with anyio.CancelScope(shield=True):
                try:
                    await self.conclusion.finish(verdict, Action.NONE)
                except Interrupted:
                    log.warning("window.paused", reason="daemon shutting down")
                except Exception:
                    log.exception("window.error_unrecorded")
        finally:
            self.phase = Phase.FINISHED
            self.scheduled.set()
            self.store.close()
            self.ended.set()

    async def _observe(self) -> Verdict | None:
        """Load the series, then probe until a verdict; None if stopped for shutdown."""
        await self.observation.load()
        self.scheduled.set()  # what comes next is known now: the daemon may report READY
        if self.phase is Phase.CONCLUDING:
            return self.observation.reacting_verdict()
        return await self.observation.run()
