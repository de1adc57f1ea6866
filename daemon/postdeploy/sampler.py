"""The baseline task: what normal looked like before a deploy.

For each repo whose `baseline_interval_s` is above 0, one task probes the service (the same
requests as a window's tick) every `baseline_interval_s` while none of the repo's windows is
open, and appends each row to `<state_dir>/<repo>/.baseline.jsonl` (see samples.py), keeping
the last `baseline_keep_s`. A window compares its own probes with those rows (baseline.py).

A baseline probe never delays a window's tick: its requests, the health request included,
take the prober's non-urgent slots, and the repo is not probed at all while one of its windows
is open. Each repo's task contains its own errors: a failing disk or a broken file is logged
with the repo and the task goes on at its next interval; the daemon and every window go on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import structlog

from postdeploy.baseline import BaselineRow
from postdeploy.clock import SYSTEM, Clock
from postdeploy.config import Config
from postdeploy.probe import Prober
from postdeploy.samples import SampleFile, due_for_compaction, recent

log = structlog.get_logger("postdeploy.baseline")


@dataclass(frozen=True)
class Plan:
    """How one repo is sampled: every `interval_s`, rows kept `keep_s`, each request within
    `timeout_s`."""

    interval_s: float
    keep_s: float
    timeout_s: float


def plans(config: Config) -> dict[str, Plan]:
    """The repos to sample and how (pure); none while the daemon is disabled."""
    if not config.enabled:
        return {}
    wanted: dict[str, Plan] = {}
    for name in config.repos:
        settings = config.window_settings(name)
        if settings.baseline_interval_s > 0:
            wanted[name] = Plan(
                settings.baseline_interval_s, settings.baseline_keep_s, settings.probe_timeout_s
            )
    return wanted


def next_due(scheduled: float, interval: float, now: float) -> float:
    """When the probe after the one `scheduled` falls due: one interval on, or one interval
    from now when the daemon fell behind (missed probes are not made up in a burst)."""
    due = scheduled + interval
    return due if due > now else now + interval


class Sampler:
    """One sampling task per repo that wants a baseline, kept in step with the config."""

    def __init__(
        self,
        root: Path,
        *,
        config: Callable[[], Config],
        prober: Prober,
        busy: Callable[[str], bool],
        clock: Clock = SYSTEM,
    ) -> None:
        """`busy(repo)`: whether one of the repo's windows is open (no sampling then)."""
        self.root = root
        self._config = config
        self._prober = prober
        self._busy = busy
        self._clock = clock
        self._changed = anyio.Event()
        self._running: dict[str, tuple[Plan, anyio.CancelScope]] = {}

    @property
    def repos(self) -> list[str]:
        """The repos sampled now."""
        return sorted(self._running)

    def reconfigure(self) -> None:
        """The config was reloaded: start, stop or restart the repos' tasks to match it."""
        self._changed.set()

    async def run(self) -> None:
        """Keep one task per repo that wants a baseline, until cancelled."""
        async with anyio.create_task_group() as tg:
            while True:
                self._reconcile(tg)
                await self._changed.wait()
                self._changed = anyio.Event()

    def _reconcile(self, tg: anyio.abc.TaskGroup) -> None:
        wanted = plans(self._config())
        for repo, (plan, scope) in list(self._running.items()):
            if wanted.get(repo) != plan:
                scope.cancel()
                del self._running[repo]
        for repo, plan in wanted.items():
            if repo not in self._running:
                scope = anyio.CancelScope()
                self._running[repo] = (plan, scope)
                tg.start_soon(self._sample, repo, plan, scope)

    async def _sample(self, repo: str, plan: Plan, scope: anyio.CancelScope) -> None:
        """Sample `repo` until cancelled; an unexpected error is logged and the task starts
        over one interval later."""
        with scope, structlog.contextvars.bound_contextvars(repo=repo):
            log.info("baseline.started", interval_s=plan.interval_s, keep_s=plan.keep_s)
            while True:
                try:
                    await self._loop(repo, plan)
                except Exception:
                    log.exception("baseline.failed", note="retrying after one interval")
                await anyio.sleep(plan.interval_s)

    async def _loop(self, repo: str, plan: Plan) -> None:
        file = SampleFile(self.root, repo)
        try:
            rows, untidy = await anyio.to_thread.run_sync(file.load_checked)
        except OSError as exc:
            log.error("baseline.unreadable", file=".baseline.jsonl", error=str(exc))
            rows, untidy = [], False
        if untidy:  # torn or bad lines, or oversized: rewritten with its valid recent rows
            rows = recent(rows, self._clock.time(), plan.keep_s)
            try:
                await anyio.to_thread.run_sync(file.rewrite, rows)
                log.warning("baseline.repaired", file=".baseline.jsonl", kept=len(rows))
            except OSError as exc:
                log.warning("baseline.compact_failed", file=".baseline.jsonl", error=str(exc))
        times = [row.ts for row in rows]
        tick = 0  # the probes of this run (a row's `tick` in the log lines)
        failing = bool(rows) and not rows[-1].health_ok
        # Resume the cadence across a restart: the next probe is due one interval after the
        # last one on disk (at once when that is past).
        due = rows[-1].ts + plan.interval_s if rows else self._clock.time()
        while True:
            wait = due - self._clock.time()
            if wait > 0:
                # At most one interval: a wall clock stepped back must not stall sampling.
                await anyio.sleep(min(wait, plan.interval_s))
                continue
            scheduled, due = due, next_due(due, plan.interval_s, self._clock.time())
            repo_config = self._config().repos.get(repo)
            if repo_config is None or self._busy(repo):
                continue  # removed by a reload (the task is being stopped), or a window is open
            row = await self._prober.probe(
                repo_config, plan.timeout_s, tick, scheduled, False, urgent=False
            )
            sample = BaselineRow.of_probe(row)
            try:
                await anyio.to_thread.run_sync(file.append, sample)
            except OSError as exc:
                log.warning("baseline.write_failed", file=".baseline.jsonl", error=str(exc))
                continue
            tick += 1
            times.append(row.ts)
            failing = self._say_if_changed(row.tick, sample, failing)
            times = await self._compact_if_due(file, times, plan)

    @staticmethod
    def _say_if_changed(tick: int, row: BaselineRow, failing: bool) -> bool:
        """Log when the baseline's health starts or stops failing (not every probe)."""
        now_failing = not row.health_ok and not row.inconclusive
        if now_failing != failing:
            if now_failing:
                log.warning("baseline.failing", tick=tick, detail=row.detail)
            else:
                log.info("baseline.recovered", tick=tick)
        log.debug("baseline.probe", tick=tick, ok=row.health_ok, detail=row.detail)
        return now_failing

    async def _compact_if_due(
        self, file: SampleFile, times: list[float], plan: Plan
    ) -> list[float]:
        """Rewrite the file with its recent rows once enough of them expired."""
        now = self._clock.time()
        expired = bisect_left(times, now - plan.keep_s)  # rows are appended in time order
        if not due_for_compaction(len(times), expired):
            return times
        try:
            rows = recent(await anyio.to_thread.run_sync(file.load), now, plan.keep_s)
            await anyio.to_thread.run_sync(file.rewrite, rows)
        except OSError as exc:
            log.warning("baseline.compact_failed", file=".baseline.jsonl", error=str(exc))
            return times
        log.info("baseline.compacted", kept=len(rows), dropped=len(times) - len(rows))
        return [row.ts for row in rows]
