"""A window's observing phase: load its series, then probe on schedule until there is a verdict.

Shell around the pure core: it asks `window.next_step` what to do (the one place each tick
is decided, `classify` included), performs it (sleep, probe, append) and folds the row into
the tally with `series.fold`. It can be stopped from outside (cancel, supersede, kill switch,
shutdown) through its cancel scope.
"""

from __future__ import annotations

import anyio
import structlog

from postdeploy import baseline, layout, metrics, samples
from postdeploy.emission import Emitter
from postdeploy.series import Tally, fold, replay
from postdeploy.series_log import SeriesLog
from postdeploy.store import dump_line
from postdeploy.verdict import Status, Verdict, classify
from postdeploy.window import Admission, Finish, Probe, Wait, admit, missed, next_step
from postdeploy.window_context import WindowContext

log = structlog.get_logger("postdeploy.window")

LATE_TICK_S = 1.0  # a tick starting this late (or after skipped ticks) is logged, with a cause


class Observation:
    """The ticks of one window, from its load to its verdict."""

    def __init__(
        self,
        ctx: WindowContext,
        series: SeriesLog,
        events: Emitter,
        *,
        first_seen: bool,
        lines: bytes | None = None,
        go: anyio.Event | None = None,
        running_since: float | None = None,
    ) -> None:
        self._ctx = ctx
        self._series = series
        self._events = events
        self._first_seen = first_seen
        self._lines = lines  # series.jsonl as intake read it (b"": none); None: read it
        # Probing waits for `go` (the daemon's READY): at startup, every window is taken up
        # and scheduled first, and only then do the ticks that fell due meanwhile run.
        self._go = go
        self._running_since = running_since  # the daemon's start (wall time), for MISSED
        self._probed = False  # a tick was probed since the window was loaded
        self.scope = anyio.CancelScope()  # cancelled to stop observing
        self.stopped: Verdict | None = None  # the verdict it was stopped with, if any

    async def load(self) -> None:
        """Read the series and replay it into the tally (outside the cancel scope: even a
        window stopped at once, superseded or cancelled, reports the ticks it had probed)."""
        ctx = self._ctx
        if self._lines is None:
            lines = await ctx.store.read_lines(layout.SERIES)
        else:
            lines = await ctx.store.parse_lines(layout.SERIES, self._lines)
            self._lines = None
        self._series.loaded(lines.rows)
        ctx.tally = replay(lines.rows, start=await self._start())
        if lines.bad_lines or lines.torn_bytes or ctx.tally.ignored:
            log.warning(
                "series.repaired",
                bad_lines=lines.bad_lines[:20],
                torn_bytes=lines.torn_bytes,
                ignored_rows=ctx.tally.ignored,
            )

    async def _start(self) -> Tally:
        """The tally the window's rows fold into: with its baseline comparison when the repo
        keeps a baseline (`baseline_interval_s`)."""
        ctx = self._ctx
        if ctx.settings.baseline_interval_s <= 0:
            return Tally()
        rules = baseline.BaselineRules.of(ctx.settings, ctx.repo.checks)
        armed_at = ctx.start.schedule.armed_at
        rows = await self._reference_rows(armed_at - rules.gap_s)
        tally = baseline.start(rows, armed_at, rules)
        log.info(
            "baseline.reference",
            rows=tally.reference.rows,
            latency_samples=len(tally.reference.latencies),
            # Each compared check's baseline numbers: 0 says it cannot be compared (renamed,
            # new, or its Prometheus was down while the baseline was taken).
            check_samples={name: len(v) for name, v in tally.reference.values.items()},
            preexisting=tally.preexisting,
        )
        return Tally(baseline=tally)

    async def _reference_rows(self, cut: float) -> list[baseline.BaselineRow]:
        """The baseline rows this window is compared with: its own copy (`baseline.jsonl`),
        made from the repo's `.baseline.jsonl` the first time the window is loaded, so that a
        restart (after the baseline file was compacted, say) compares with the same rows."""
        ctx = self._ctx
        data = await ctx.store.read(layout.BASELINE)
        if data is not None:
            return samples.parse(data)
        file = samples.SampleFile(ctx.store.root, ctx.key.repo)
        try:
            rows = await anyio.to_thread.run_sync(file.load)
        except OSError as exc:
            log.error("baseline.unreadable", file=samples.BASELINE, error=str(exc))
            rows = []
        keep = ctx.settings.baseline_keep_s
        rows = [r for r in rows if cut - keep <= r.ts < cut][-samples.MAX_ROWS :]
        try:
            await ctx.store.write_atomic(
                layout.BASELINE, b"".join(dump_line(r.to_dict()) for r in rows)
            )
        except OSError as exc:  # compared all the same; a restart copies the rows again
            log.warning("baseline.copy_failed", file=layout.BASELINE, error=str(exc))
        return rows

    def reacting_verdict(self) -> Verdict:
        """The verdict of a window whose rollback had started before a restart."""
        verdict = classify(self._ctx.tally, self._ctx.thresholds())
        return verdict or Verdict(
            Status.DEGRADED, "a rollback was under way when the daemon stopped"
        )

    async def run(self) -> Verdict | None:
        """Probe until a verdict; the stop verdict if stopped (None: shutdown)."""
        ctx = self._ctx
        with self.scope:
            if self.stopped is not None:
                return self.stopped
            schedule = ctx.start.schedule
            # A new window is judged missed by when the daemon first noticed it.
            seen = ctx.start.first_seen_at if self._first_seen else ctx.now()
            admission = admit(schedule, ctx.tally, seen, first_seen=self._first_seen)
            if admission is Admission.MISSED:
                return missed(schedule, ctx.now(), self._running_since)
            catch_up = admission is Admission.CATCH_UP
            if not self._first_seen:
                await self._resumed(catch_up)
            while True:
                step = next_step(
                    schedule,
                    ctx.tally,
                    ctx.thresholds(),
                    ctx.now(),
                    catch_up=catch_up and not ctx.tally.catch_up_done,
                )
                if isinstance(step, Finish):
                    return step.verdict
                if isinstance(step, Wait):
                    await anyio.sleep(max(0.0, step.until - ctx.now()))
                    continue
                if self._go is not None and not self._go.is_set():
                    await self._go.wait()
                    continue  # the due tick may have changed while waiting
                await self._tick(step)
        return self.stopped

    async def _resumed(self, catch_up: bool) -> None:
        """Say that the daemon was down while this window was open."""
        schedule, last = self._ctx.start.schedule, self._ctx.tally.last_tick
        missed_ticks = max(0, schedule.due_tick(self._ctx.now()) - last - (0 if catch_up else 1))
        if catch_up:
            reason = (
                "the window ended while the daemon was down: one catch-up probe, then the verdict"
            )
        else:
            reason = f"the daemon was down while the window was open; {missed_ticks} ticks missed"
        log.warning(
            "window.resumed", reason=reason, ticks=self._ctx.tally.checks_total, last_tick=last
        )
        if catch_up or missed_ticks:
            await self._events.event("window.daemon_was_down", reason, seq=str(last))

    def _say_if_late(self, step: Probe) -> None:
        """Log a tick that starts late, or after skipped ticks, with what likely caused it."""
        first, self._probed = not self._probed, True
        if step.catch_up or (first and not self._first_seen):
            return  # the first tick after a restart: `window.resumed` said what was missed
        tally = self._ctx.tally
        late = self._ctx.now() - step.scheduled_ts
        skipped = step.tick - tally.last_tick - 1  # last_tick is -1 before the first probe
        if late < LATE_TICK_S and skipped <= 0:
            return
        last_append_s = self._series.last_append_s
        if first:
            # Its first ticks were due before the daemon took the window up.
            cause = (
                "the arm was found late (armed while the daemon was down, found by the rescan, "
                "or a slow intake)"
            )
        elif last_append_s >= LATE_TICK_S / 2:
            cause = f"the previous series append took {last_append_s:.2f}s (slow disk)"
        else:
            cause = "the daemon's event loop was busy or the process was stopped"
        if skipped > 0:
            log.warning(
                "tick.skipped", tick=step.tick, skipped=skipped, late_s=round(late, 3), cause=cause
            )
        else:
            log.warning("tick.late", tick=step.tick, late_s=round(late, 3), cause=cause)

    async def _tick(self, step: Probe) -> None:
        ctx = self._ctx
        self._say_if_late(step)
        row = await ctx.prober.probe(
            ctx.repo, ctx.settings.probe_timeout_s, step.tick, step.scheduled_ts, step.catch_up
        )
        with anyio.CancelScope(shield=True):
            await self._series.append(row)
        ctx.tally = fold(ctx.tally, row)
        metrics.probe_recorded(
            ctx.key.repo, not row.failed, row.latency_ms / 1000, row.ts - row.scheduled_ts
        )
        log.debug("probe", tick=row.tick, ok=not row.failed, detail=row.detail)
        if row.failed and not row.inconclusive:
            log.info("probe.failed", tick=row.tick, streak=self._streak_text(), detail=row.detail)
        if row.inconclusive:
            log.warning("probe.inconclusive", tick=row.tick, detail=row.detail)
            with anyio.CancelScope(shield=True):
                await self._events.event(
                    "probe.unavailable",
                    f"the control probe failed in the same tick as the service: tick {row.tick} "
                    f"counts for nothing (our own network?): {row.detail}",
                    seq="inconclusive",
                )
        elif row.health_code == 0 and all(code == 0 for code in row.codes.values()):
            with anyio.CancelScope(shield=True):
                await self._events.event(
                    "probe.unavailable", f"no answer at all from {ctx.repo.base_url}: {row.detail}"
                )

    def _streak_text(self) -> str:
        """How close the window is to its verdict, as journald shows it before the verdict:
        `health failed 1 of 3`, and each failing feature check's own streak."""
        th, tally = self._ctx.thresholds(), self._ctx.tally
        parts = []
        if tally.streak:
            parts.append(f"health failed {tally.streak} of {th.fail_threshold}")
        for name, check in sorted(tally.checks.items()):
            if check.streak:
                need = th.for_check(name)
                parts.append(f"check {name!r} failed {check.streak} of {need}")
        if tally.sum_total:
            parts.append(
                f"5xx {tally.sum_fivexx}/{tally.sum_total} "
                f"(over {th.fivexx_threshold:g} after {th.min_samples})"
            )
        return "; ".join(parts) or "no rule near its threshold"
