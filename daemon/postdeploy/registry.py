"""The windows running now: one `WindowRunner` task each, and which window of a repo is
current (the one armed last; every other open window of the repo ends SUPERSEDED)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from postdeploy import gitreport, intake, layout, manual, metrics
from postdeploy.alerts import Outbox
from postdeploy.clock import Clock
from postdeploy.config import Config
from postdeploy.context import Context
from postdeploy.intake import Arm, Look
from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.lifecycle import Event
from postdeploy.probe import Prober
from postdeploy.report import iso
from postdeploy.runner import Phase, WindowRunner
from postdeploy.store import ItemStore
from postdeploy.verdict import Status, Verdict
from postdeploy.window import WindowStart

log = structlog.get_logger("postdeploy.daemon")


@dataclass(eq=False)
class Registry:
    """Every open window by work item, and each repo's latest armed window."""

    ctx: Context
    prober: Prober
    outbox: Outbox
    ready: anyio.Event  # probing waits for the daemon's READY
    clock: Clock
    started_at: float  # the daemon's start (wall time)
    ended: Callable[[WindowRunner], None]  # a runner's task ended, whatever the outcome
    runners: dict[ItemKey, WindowRunner] = field(default_factory=dict, init=False)
    # Each repo's open windows that are not superseded yet (see `supersede`).
    _contenders: dict[str, dict[ItemKey, WindowRunner]] = field(default_factory=dict, init=False)
    # Each repo's newest (armed_at, work_item), finished windows included.
    _latest: dict[str, tuple[float, str]] = field(default_factory=dict, init=False)

    def start_looked(
        self,
        key: ItemKey,
        start: WindowStart,
        look: Look,
        *,
        first_seen: bool,
        stop: Verdict | None,
        reacting: bool,
        judged: Config,
    ) -> None:
        """Run a window that was looked at (see `start`); not once the daemon is closing."""
        if self.ctx.closing or self.ctx.windows is None:
            return
        # The store keeps the directory the window started in: a directory deleted and made
        # again under the same name is a new deploy, never this window's.
        pinned = os.dup(look.fd) if look.fd is not None else None
        self.start(
            self.ctx.windows,
            ItemStore(self.ctx.root, key, pinned),
            start,
            judged,
            first_seen=first_seen,
            stop=stop,
            reacting=reacting,
            series=look.series,
        )

    def start_armed(
        self, armed: Sequence[tuple[ItemKey, WindowStart, Arm, Look]], judged: Config
    ) -> None:
        """Run the new windows whose starts an intake batch recorded."""
        for key, start, arm, look in armed:
            log.info(
                "window.armed",
                repo=key.repo,
                work_item=key.work_item,
                armed_at=iso(arm.armed_at),
                max_ticks=start.schedule.max_ticks,
                interval_s=start.schedule.interval_s,
                metadata=arm.metadata,
            )
            self.start_looked(
                key,
                start,
                look,
                first_seen=True,
                stop=arm.stop,
                reacting=arm.reacting,
                judged=judged,
            )

    def start(
        self,
        windows: anyio.abc.TaskGroup,
        store: ItemStore,
        start: WindowStart,
        judged: Config,
        *,
        first_seen: bool,
        stop: Verdict | None,
        reacting: bool,
        series: bytes | None,
    ) -> None:
        """Run a window: a runner task in `windows`.

        `judged` is the config the window was judged with; a reload may have come since (a
        new window's start is written in between). The window then gets what `reload` gives
        the open windows: the new settings if its repo is still configured, the judged ones
        if the repo was removed, and DISABLED if the kill switch was thrown."""
        key = store.key
        if not self.ctx.items.move(key, Event.STARTED):
            store.close()  # never two runners for one work item
            return
        config = self.ctx.config
        if key.repo not in config.repos:
            config = judged
            log.warning(
                "config.repo_removed",
                repo=key.repo,
                work_item=key.work_item,
                note="the open window keeps its previous settings",
            )
        if stop is None and not self.ctx.config.enabled:
            stop = intake.DISABLED
        runner = WindowRunner(
            store,
            start,
            config.repos[key.repo],
            config.window_settings(key.repo),
            self.prober,
            self.outbox.emit,
            first_seen=first_seen,
            reacting=reacting,
            series=series,
            go=self.ready,
            running_since=self.started_at,
            until_written=self.outbox.until_written,
            clock=self.clock,
        )
        if stop is not None and runner.stop(stop):
            self.ctx.items.move(key, _STOP_EVENTS.get(stop.status, Event.BROKEN))
        self.runners[key] = runner
        self._contenders.setdefault(key.repo, {})[key] = runner
        metrics.open_windows(len(self.runners))
        self.note_armed(key, start.schedule.armed_at)
        windows.start_soon(self._run, runner)

    def note_armed(self, key: ItemKey, armed_at: float) -> None:
        """Remember the latest window of each repo, open or finished, then supersede."""
        latest = self._latest.get(key.repo)
        if latest is None or (armed_at, key.work_item) > latest:
            self._latest[key.repo] = (armed_at, key.work_item)
        self.supersede(key.repo)

    def supersede(self, repo: str) -> None:
        """Every open window of `repo` but the latest armed one ends as SUPERSEDED.

        The latest is taken over every window seen, finished ones included, so an older
        window that turns up after a newer one (even a finished one) never judges or reacts.
        `_contenders` holds only the repo's windows not yet superseded, and each leaves it
        when superseded: a storm of N windows armed at once costs O(N) and logs N lines.
        """
        latest = self._latest.get(repo)
        contenders = self._contenders.get(repo)
        if latest is None or not contenders:
            return
        armed_at, work_item = latest
        reason = f"superseded by {work_item}, armed at {iso(armed_at)}"
        for key, runner in list(contenders.items()):
            if runner.sort_key >= latest:
                continue
            del contenders[key]  # superseded once; a reaction under way is never stopped
            if runner.stop(Verdict(Status.SUPERSEDED, reason)):
                self.ctx.items.move(key, Event.SUPERSEDED)
                log.info("window.superseded", repo=repo, work_item=key.work_item, by=work_item)

    async def _run(self, runner: WindowRunner) -> None:
        try:
            await runner.run()
            git = self.ctx.config.git_report
            if runner.finished is not None and git is not None:
                # After `done`: best-effort, it can never delay or change the verdict.
                outcome, report = runner.finished
                await gitreport.publish(
                    git, outcome, report, runner.start.metadata.get("branch", "")
                )
        finally:
            self.runners.pop(runner.key, None)
            same_repo = self._contenders.get(runner.key.repo, {})
            same_repo.pop(runner.key, None)
            if not same_repo:
                self._contenders.pop(runner.key.repo, None)
            metrics.open_windows(len(self.runners))
            if runner.completed:
                self.ctx.items.move(runner.key, Event.DONE)
            elif runner.vanished:
                self.ctx.items.move(runner.key, Event.VANISHED)
            else:
                self.ctx.items.move(runner.key, Event.PAUSED)
            self.ended(runner)

    async def check_cancel(self, key: ItemKey) -> None:
        runner = self.runners.get(key)
        if runner is None or runner.phase is not Phase.OBSERVING:
            return
        try:
            cancelled = await runner.store.exists(layout.CANCEL)
        except (OSError, UnsafePath):
            return
        if cancelled:
            self.cancel(key)

    async def check_vanished(self, key: ItemKey) -> None:
        """A new entry under an open window's name: if the window's own directory is gone,
        the window ends, and the new directory is taken in as a new work item."""
        runner = self.runners.get(key)
        if runner is not None and await anyio.to_thread.run_sync(runner.store.vanished_sync):
            runner.vanish()

    def cancel(self, key: ItemKey) -> None:
        """An operator wrote `cancel`: stop the window if it is still observing."""
        runner = self.runners.get(key)
        if runner is None or runner.phase is not Phase.OBSERVING:
            return
        if runner.stop(Verdict(Status.CANCELLED, "cancelled by an operator")):
            self.ctx.items.move(key, Event.CANCELLED)
            log.info("window.cancel_requested", repo=key.repo, work_item=key.work_item)

    def request_rollback(self, runner: WindowRunner, request: manual.Request) -> bool:
        """A person asks for `runner`'s window to roll back (see `WindowRunner`)."""
        taken = runner.request_rollback(request)
        if taken:
            self.ctx.items.move(runner.key, Event.ROLLBACK_ASKED)
        return taken

    def disable_all(self) -> None:
        """The kill switch was thrown: every observing window ends DISABLED."""
        for key, runner in list(self.runners.items()):
            if runner.stop(intake.DISABLED):
                self.ctx.items.move(key, Event.DISABLED)

    def pause_all(self) -> None:
        """At shutdown: observing windows pause (they resume after the restart); reactions
        under way finish."""
        for runner in list(self.runners.values()):
            runner.stop(None)


# A window started with its verdict already given (see `intake.judge`): why it stops.
_STOP_EVENTS = {Status.CANCELLED: Event.CANCELLED, Status.DISABLED: Event.DISABLED}
