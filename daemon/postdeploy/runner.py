"""The task that runs one window: probe on schedule, persist, judge, react, finish.

This is shell around the pure core: it asks `window.next_step` what to do, performs it
(sleep, probe, append), folds the row into the tally with `series.fold`, and once there is a
verdict runs the reaction that `verdict.decide_action` chose and writes `report.md` and
`done`. Errors stay inside the window: the daemon and every other window go on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from functools import partial
from typing import Any

import anyio
import structlog

from postdeploy import layout, manual, metrics, reaction, timeline
from postdeploy.clock import SYSTEM, Clock
from postdeploy.config import RepoConfig, WindowSettings
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from postdeploy.probe import Prober
from postdeploy.reaction import Interrupted
from postdeploy.report import Outcome, done_record, render_report
from postdeploy.rollback import rollback_env
from postdeploy.series import ProbeRow, Tally, fold, replay, ticks_missed
from postdeploy.store import ItemStore, ItemVanished, dump_line, parse_json_lines
from postdeploy.verdict import (
    Action,
    Decision,
    Status,
    Thresholds,
    Verdict,
    classify,
    decide_action,
    recovery,
)
from postdeploy.window import (
    Admission,
    Finish,
    Probe,
    Wait,
    WindowStart,
    admit,
    missed,
    next_step,
)

log = structlog.get_logger("postdeploy.window")

Emit = Callable[[Event], Awaitable[None]]
UntilWritten = Callable[[list[str]], Awaitable[None]]


async def _written_at_once(_: list[str]) -> None:
    """For a runner without an outbox: every event is handled when `emit` returns."""


# The event sent when a window ends with each status (DEGRADED is sent before the reaction).
_FINISH_EVENT = {
    Status.HEALTHY: "window.healthy",
    Status.INCONCLUSIVE: "window.inconclusive",
    Status.SUPERSEDED: "window.superseded",
    Status.CANCELLED: "window.cancelled",
    Status.DISABLED: "window.disabled",
    Status.MISSED: "window.missed",
    Status.ERROR: "window.error",
}
ROLLBACK_EVENT = {
    Action.ROLLBACK_OK: "rollback.ok",
    Action.ROLLBACK_FAILED: "rollback.failed",
    Action.ROLLBACK_UNKNOWN: "rollback.unknown",
}

LATE_TICK_S = 1.0  # a tick starting this late (or after skipped ticks) is logged, with a cause


class Phase(StrEnum):
    OBSERVING = "observing"  # probing; may be stopped (cancel, supersede, kill switch)
    CONCLUDING = "concluding"  # has its verdict; reacting and writing; never interrupted
    FINISHED = "finished"


def thresholds(settings: WindowSettings, repo: RepoConfig) -> Thresholds:
    """The rule thresholds of a repo's windows, with each feature check's own."""
    checks = {c.name: c.fail_threshold for c in repo.checks if c.fail_threshold is not None}
    lookbacks = {c.name: c.fail_lookback for c in repo.checks if c.fail_lookback is not None}
    return Thresholds(
        settings.fail_threshold,
        settings.fivexx_threshold,
        settings.min_samples,
        checks,
        fail_lookback=settings.fail_lookback or 0,
        check_lookbacks=lookbacks,
        min_judged_fraction=settings.min_judged_fraction,
    )


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
        until_written: UntilWritten = _written_at_once,
        clock: Clock = SYSTEM,
    ) -> None:
        self.key: ItemKey = store.key
        self.store = store
        self.start = start
        self.repo = repo
        self.settings = settings
        self.prober = prober
        self.emit = emit
        self.first_seen = first_seen
        self._series = series  # series.jsonl as intake read it (b"": none); None: read it
        # Probing waits for `go` (the daemon's READY): at startup, every window is taken up
        # and scheduled first, and only then do the ticks that fell due meanwhile run.
        self._go = go
        self._running_since = running_since  # the daemon's start (wall time), for MISSED
        self._until_written = until_written  # waits until emitted events are on disk
        self._emitted: list[str] = []  # ids of the events this runner emitted
        self._last_append_s = 0.0  # how long the last series append took (a slow disk?)
        self._probed = False  # a tick was probed since the window was loaded
        self.scheduled = anyio.Event()  # set once the window knows its next step (or ended)
        # A rollback was started before a restart: the window had its verdict and its reaction
        # must be concluded (ROLLBACK_UNKNOWN or its recorded result), never superseded.
        self.phase = Phase.CONCLUDING if reacting else Phase.OBSERVING
        self.completed = False  # `done` is written: the window is finished for good
        self.finished: tuple[Outcome, str] | None = None  # the outcome and report.md, at the end
        self.tally = Tally()
        self._stop: Verdict | None = None
        self._scope = anyio.CancelScope()  # the observing phase; cancelled by stop()
        self._verify_scope = anyio.CancelScope()  # rollback verification; cancelled at shutdown
        self._shutdown = anyio.Event()  # set by stop(None): waits for the disk give up
        self._vanished = False  # the directory was removed (see `vanish`)
        self._manual: manual.Request | None = None  # a person asked for the rollback
        self.ended = anyio.Event()  # set when `run` returns, whatever the outcome
        self._unwritten: list[bytes] = []  # rows the disk refused; retried before the next
        # The series as this runner knows it, for the report: the rows read at load and the
        # lines appended since (bytes: not tracked by the cyclic GC). None until loaded.
        self._loaded_rows: list[dict[str, Any]] | None = None
        self._appended: list[bytes] = []
        # The schedule's wall-clock times become monotonic deadlines once, here.
        self._clock = clock
        self._wall0 = clock.time()
        self._mono0 = clock.monotonic()

    @property
    def sort_key(self) -> tuple[float, str]:
        """The current window of a repo is the one with the greatest sort key."""
        return (self.start.schedule.armed_at, self.key.work_item)

    def now(self) -> float:
        """Schedule time: wall time at load, advanced by the monotonic clock."""
        return self._wall0 + (self._clock.monotonic() - self._mono0)

    def reconfigure(self, repo: RepoConfig, settings: WindowSettings) -> None:
        """Take a reloaded config; the schedule stays as recorded."""
        self.repo, self.settings = repo, settings

    def stop(self, verdict: Verdict | None) -> bool:
        """End the window early with `verdict` (None: daemon shutdown, nothing written).

        Returns False once the window has its verdict (a reaction is never interrupted),
        and when it was already stopped: each window is stopped once.
        """
        if verdict is None:
            self._shutdown.set()
            if self.phase is Phase.CONCLUDING:
                self._verify_scope.cancel()  # verification resumes after the restart
        if self.phase is not Phase.OBSERVING:
            return False
        first = self._stop is None and not self._scope.cancel_called
        if self._stop is None or verdict is None:
            self._stop = verdict
        self._scope.cancel()
        return first

    def request_rollback(self, request: manual.Request) -> bool:
        """A person asks for the rollback: an observing window ends DEGRADED and rolls back
        (whatever its repo's rules); False once it has its verdict, or was stopped."""
        if self.phase is not Phase.OBSERVING or self._stop is not None:
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
            self._scope.cancel()

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
            await self._conclude(verdict)
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
                    await self._finish(verdict, Action.NONE)
                except Interrupted:
                    log.warning("window.paused", reason="daemon shutting down")
                except Exception:
                    log.exception("window.error_unrecorded")
        finally:
            self.phase = Phase.FINISHED
            self.scheduled.set()
            self.store.close()
            self.ended.set()

    # -- observing ----------------------------------------------------------------------

    async def _observe(self) -> Verdict | None:
        """Probe until a verdict; None if stopped for shutdown."""
        # Read the series first, outside the cancel scope: even a window stopped at once
        # (superseded, cancelled) reports the ticks it had probed.
        if self._series is None:
            lines = await self.store.read_lines(layout.SERIES)
        else:
            lines = await self.store.parse_lines(layout.SERIES, self._series)
            self._series = None
        self._loaded_rows = lines.rows
        self.tally = replay(lines.rows)
        if lines.bad_lines or lines.torn_bytes or self.tally.ignored:
            log.warning(
                "series.repaired",
                bad_lines=lines.bad_lines[:20],
                torn_bytes=lines.torn_bytes,
                ignored_rows=self.tally.ignored,
            )
        self.scheduled.set()  # what comes next is known now: the daemon may report READY
        if self.phase is Phase.CONCLUDING:
            verdict = classify(self.tally, thresholds(self.settings, self.repo))
            return verdict or Verdict(
                Status.DEGRADED, "a rollback was under way when the daemon stopped"
            )
        with self._scope:
            if self._stop is not None:
                return self._stop
            schedule = self.start.schedule
            # A new window is judged missed by when the daemon first noticed it.
            seen = self.start.first_seen_at if self.first_seen else self.now()
            admission = admit(schedule, self.tally, seen, first_seen=self.first_seen)
            if admission is Admission.MISSED:
                return missed(schedule, self.now(), self._running_since)
            catch_up = admission is Admission.CATCH_UP
            if not self.first_seen:
                await self._resumed(catch_up)
            while True:
                step = next_step(
                    schedule,
                    self.tally,
                    thresholds(self.settings, self.repo),
                    self.now(),
                    catch_up=catch_up and not self.tally.catch_up_done,
                )
                if isinstance(step, Finish):
                    return step.verdict
                if isinstance(step, Wait):
                    await anyio.sleep(max(0.0, step.until - self.now()))
                    continue
                if self._go is not None and not self._go.is_set():
                    await self._go.wait()
                    continue  # the due tick may have changed while waiting
                await self._tick(step)
        return self._stop

    async def _resumed(self, catch_up: bool) -> None:
        """Say that the daemon was down while this window was open."""
        schedule, last = self.start.schedule, self.tally.last_tick
        missed_ticks = max(0, schedule.due_tick(self.now()) - last - (0 if catch_up else 1))
        if catch_up:
            reason = (
                "the window ended while the daemon was down: one catch-up probe, then the verdict"
            )
        else:
            reason = f"the daemon was down while the window was open; {missed_ticks} ticks missed"
        log.warning("window.resumed", reason=reason, ticks=self.tally.checks_total, last_tick=last)
        if catch_up or missed_ticks:
            await self._event("window.daemon_was_down", reason, seq=str(last))

    def _say_if_late(self, step: Probe) -> None:
        """Log a tick that starts late, or after skipped ticks, with what likely caused it."""
        first, self._probed = not self._probed, True
        if step.catch_up or (first and not self.first_seen):
            return  # the first tick after a restart: `window.resumed` said what was missed
        late = self.now() - step.scheduled_ts
        skipped = step.tick - self.tally.last_tick - 1 if self.tally.checks_total else 0
        if late < LATE_TICK_S and skipped <= 0:
            return
        if self._last_append_s >= LATE_TICK_S / 2:
            cause = f"the previous series append took {self._last_append_s:.2f}s (slow disk)"
        else:
            cause = "the daemon's event loop was busy or the process was stopped"
        if skipped > 0:
            log.warning(
                "tick.skipped", tick=step.tick, skipped=skipped, late_s=round(late, 3), cause=cause
            )
        else:
            log.warning("tick.late", tick=step.tick, late_s=round(late, 3), cause=cause)

    async def _tick(self, step: Probe) -> None:
        self._say_if_late(step)
        row = await self.prober.probe(
            self.repo, self.settings.probe_timeout_s, step.tick, step.scheduled_ts, step.catch_up
        )
        with anyio.CancelScope(shield=True):
            await self._append(row)
        self.tally = fold(self.tally, row)
        metrics.probe_recorded(
            self.key.repo, not row.failed, row.latency_ms / 1000, row.ts - row.scheduled_ts
        )
        log.debug("probe", tick=row.tick, ok=not row.failed, detail=row.detail)
        if row.failed and not row.inconclusive:
            log.info("probe.failed", tick=row.tick, streak=self._streak_text(), detail=row.detail)
        if row.inconclusive:
            log.warning("probe.inconclusive", tick=row.tick, detail=row.detail)
            with anyio.CancelScope(shield=True):
                await self._event(
                    "probe.unavailable",
                    f"the control probe failed in the same tick as the service: tick {row.tick} "
                    f"counts for nothing (our own network?): {row.detail}",
                    seq="inconclusive",
                )
        elif row.health_code == 0 and all(code == 0 for code in row.codes.values()):
            with anyio.CancelScope(shield=True):
                await self._event(
                    "probe.unavailable", f"no answer at all from {self.repo.base_url}: {row.detail}"
                )

    def _streak_text(self) -> str:
        """How close the window is to its verdict, as journald shows it before the verdict:
        `health failed 1 of 3`, and each failing feature check's own streak."""
        th = thresholds(self.settings, self.repo)
        parts = []
        if self.tally.streak:
            parts.append(f"health failed {self.tally.streak} of {th.fail_threshold}")
        for name, check in sorted(self.tally.checks.items()):
            if check.streak:
                need = th.for_check(name)
                parts.append(f"check {name!r} failed {check.streak} of {need}")
        if self.tally.sum_total:
            parts.append(
                f"5xx {self.tally.sum_fivexx}/{self.tally.sum_total} "
                f"(over {th.fivexx_threshold:g} after {th.min_samples})"
            )
        return "; ".join(parts) or "no rule near its threshold"

    async def _append(self, row: ProbeRow) -> None:
        line = dump_line(row.to_dict())
        self._appended.append(line)
        self._unwritten.append(line)
        started = time.monotonic()
        try:
            await self.store.append_lines(layout.SERIES, self._unwritten)
        except ItemVanished:
            raise
        except OSError as exc:
            log.error(
                "series.append_failed",
                error=str(exc),
                unwritten_rows=len(self._unwritten),
                note="kept in memory; retried with the next row and before the verdict is written",
            )
            return
        finally:
            self._last_append_s = time.monotonic() - started
        self._unwritten.clear()

    # -- concluding ---------------------------------------------------------------------

    async def _conclude(self, verdict: Verdict) -> None:
        decision = decide_action(
            verdict.status,
            self_hosting=self.repo.self_hosting,
            auto_rollback=self.settings.auto_rollback,
        )
        shadow = self.settings.mode == "shadow" or self.start.metadata.get("mode") == "shadow"
        manual_result: dict[str, Any] | None = None
        if self._manual is not None:  # a person decided: no rule of the repo's applies
            decision, shadow = Decision.ROLLBACK, False
            await self._event(
                "rollback.manual",
                f"{self._manual.requested_by} asked for the rollback: "
                f"{self._manual.reason or '(no reason given)'}",
                verdict,
                status=verdict.status,
                request=self._manual.to_dict(),
            )
        action, rollback = Action.NONE, None
        if decision is not Decision.NONE:
            log.critical(
                "window.degraded",
                decision=str(decision),
                shadow=shadow,
                reason=verdict.reason,
                self_hosting=self.repo.self_hosting,
            )
            kind = "window.shadow" if shadow else "window.degraded"
            note = f"would have done {decision} (shadow mode): " if shadow else f"{decision}: "
            await self._event(
                kind, note + verdict.reason, verdict, decision=str(decision), status=verdict.status
            )
        if decision is not Decision.NONE and shadow:
            action = Action.SHADOW
        elif decision is Decision.ALERT_ONLY:
            action = Action.ALERT_ONLY
        elif decision is Decision.ROLLBACK:
            with anyio.CancelScope(shield=True):
                action, rollback = await self._rollback(verdict)
            detail = (rollback or {}).get("detail", "result unknown")
            await self._event(
                ROLLBACK_EVENT[action],
                f"rollback {action}: {detail}; degraded because {verdict.reason}",
                verdict,
                status=verdict.status,
                action_taken=action,
                rollback=rollback,
            )
            if self._manual is not None:
                manual_result = {
                    **self._manual.to_dict(),
                    "action": str(action),
                    **(rollback or {}),
                }
            if action is Action.ROLLBACK_OK and self.settings.verify_ticks > 0:
                checked = await self._verify(verdict)
                if checked is None:
                    return  # shutdown: the verification resumes after the restart
                rollback = {**(rollback or {}), "verification": checked}
        await self._finish(verdict, action, rollback, manual_result)

    async def _verify(self, verdict: Verdict) -> dict[str, Any] | None:
        """Probe after ROLLBACK_OK until recovery is confirmed or refuted; None at shutdown.

        Never a second rollback: a service still broken gets a critical event, not another go.
        """
        wanted, th = self.settings.verify_ticks, thresholds(self.settings, self.repo)
        tally = replay((await self.store.read_lines(layout.VERIFY)).rows)
        with self._verify_scope:
            while tally.checks_total < wanted and classify(tally, th) is None:
                await anyio.sleep(self.settings.interval_s)
                row = await self.prober.probe(
                    self.repo,
                    self.settings.probe_timeout_s,
                    tally.last_tick + 1,
                    time.time(),
                    False,
                )
                try:
                    with anyio.CancelScope(shield=True):
                        await self.store.append_lines(layout.VERIFY, [dump_line(row.to_dict())])
                except OSError as exc:
                    log.error("verify.append_failed", error=str(exc))
                tally = fold(tally, row)
            result = recovery(tally, th, wanted)
            recovered = result.status is Status.HEALTHY
            with anyio.CancelScope(shield=True):
                await self._event(
                    "rollback.verified" if recovered else "rollback.still_degraded",
                    result.reason,
                    result,
                    status=verdict.status,
                    action_taken=Action.ROLLBACK_OK,
                )
            (log.info if recovered else log.critical)(
                "rollback.verification", recovered=recovered, reason=result.reason
            )
            return {"recovered": recovered, "checks": tally.checks_total, "reason": result.reason}
        return None

    async def _events_written(self) -> None:
        """Until every event of this window is on disk; Interrupted at shutdown.

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
            await self._shutdown.wait()
            tg.cancel_scope.cancel()
        # Raised out here: inside the task group it would come out as an ExceptionGroup.
        if not written:
            raise Interrupted("waiting for its events to be written")

    async def _rollback(self, verdict: Verdict) -> tuple[Action, dict[str, Any] | None]:
        """The rollback command, at most once per work item (see `reaction`)."""
        env = rollback_env(
            os.environ,
            self.repo.rollback_env,
            repo=self.key.repo,
            work_item=self.key.work_item,
            # A person's rollback passes on their reason, as the contract says.
            reason=self._manual.reason if self._manual and self._manual.reason else verdict.reason,
            metadata=self.start.metadata,
        )
        return await reaction.rollback(
            self.store,
            list(self.repo.rollback_command or []),
            env,
            self.settings.rollback_timeout_s,
            self._shutdown,
            manual=self._manual is not None,
        )

    async def _finish(
        self,
        verdict: Verdict,
        action: Action,
        rollback: dict[str, Any] | None = None,
        manual_rollback: dict[str, Any] | None = None,
    ) -> None:
        """Write `report.md`, then `done` (the commit point), retrying while the disk refuses."""
        outcome = Outcome(
            key=self.key,
            status=verdict.status,
            action_taken=action,
            reason=verdict.reason,
            checks_total=self.tally.checks_total,
            checks_failed=self.tally.checks_failed,
            window_s=self.start.window_s or self.start.schedule.window_s,
            finished_at=time.time(),
            armed_at=self.start.schedule.armed_at,
            metadata=self.start.metadata,
            evidence=verdict.evidence,
            rollback=rollback,
            manual_rollback=manual_rollback,
            ticks_missed=ticks_missed(self.tally, self.start.schedule.max_ticks),
        )
        finish_event = _FINISH_EVENT.get(verdict.status)
        if finish_event:  # the outbox keeps an event the disk refuses in memory and retries
            with anyio.CancelScope(shield=True):
                await self._event(
                    finish_event,
                    verdict.reason,
                    verdict,
                    status=verdict.status,
                    action_taken=action,
                )
        await self._events_written()
        await reaction.durably("the outcome", partial(self._write_outcome, outcome), self._shutdown)
        self.completed = True
        metrics.window_finished(self.key.repo, str(verdict.status), str(action))
        level = log.info if verdict.status is Status.HEALTHY else log.warning
        if (
            action in (Action.ROLLBACK_FAILED, Action.ROLLBACK_UNKNOWN)
            or verdict.status is Status.ERROR
        ):
            level = log.error
        level(
            "window.finished",
            status=str(outcome.status),
            action_taken=str(action),
            reason=verdict.reason,
            checks_total=outcome.checks_total,
            checks_failed=outcome.checks_failed,
            window_s=outcome.window_s,
            metadata=self.start.metadata,
        )

    async def _event(
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
            evidence["last_probes"] = [row.to_dict() for row in self.tally.recent]
        event = Event(
            kind=kind,
            key=self.key,
            reason=reason,
            at=time.time(),
            status=str(status),
            action_taken=str(action_taken),
            evidence=evidence,
            metadata=self.start.metadata,
            seq=seq,
        )
        self._emitted.append(event.id)
        await self.emit(event)

    async def _write_outcome(self, outcome: Outcome) -> None:
        if self._unwritten:
            await self.store.append_lines(layout.SERIES, self._unwritten)
            self._unwritten.clear()
        rows = await self._series_rows()
        if outcome.rollback and "verification" in outcome.rollback:
            verified = (await self.store.read_lines(layout.VERIFY)).rows
            checked = [r for r in map(ProbeRow.from_dict, verified) if r is not None]
            outcome = dataclasses.replace(outcome, verification=checked)
        # Drawn off the event loop: 10,000 ticks take a while, and other windows are ticking.
        draw = partial(timeline.attach, outcome, rows, self.start.schedule, self.settings)
        outcome = await anyio.to_thread.run_sync(draw)
        report = render_report(outcome, rows)
        await self.store.write_atomic(layout.REPORT, report.encode())
        await self.store.write_atomic(layout.TIMELINE, outcome.timeline.encode())
        await self.store.write_json(layout.DONE, done_record(outcome))
        self.finished = (outcome, report)

    async def _series_rows(self) -> list[ProbeRow]:
        """Every row of the series, for the report: from memory when this runner loaded the
        series (it wrote every row since), else read from disk."""
        if self._loaded_rows is None:
            try:
                loaded = (await self.store.read_lines(layout.SERIES)).rows
            except OSError as exc:  # never let an unreadable series block the verdict
                log.error("series.unreadable", error=str(exc), note="report without probes")
                return []
        else:
            loaded = self._loaded_rows + parse_json_lines(b"".join(self._appended)).rows
        return [r for r in map(ProbeRow.from_dict, loaded) if r is not None]
