"""Discovery: where new work items, cancels and requests come from. inotify gives hints as
they happen (`watcher`); a periodic rescan of the state directory (which skips finished
windows through their index, `history.scan`) is the safety net behind it. Each hint goes to
the unit that acts on it: the intake, the registry of running windows, the approvals."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog

from postdeploy import history
from postdeploy.approvals import Approvals
from postdeploy.arrivals import Intake
from postdeploy.context import Context
from postdeploy.registry import Registry
from postdeploy.runner import Phase
from postdeploy.watcher import Watcher

log = structlog.get_logger("postdeploy.daemon")


@dataclass(eq=False)
class Discovery:
    """The inotify watch and the rescan, turned into work for the other units."""

    ctx: Context
    index: history.History  # the finished windows: the rescan skips them
    intake: Intake
    registry: Registry
    approvals: Approvals
    ready: anyio.Event  # the daemon's READY: requests are taken at each rescan after it
    watcher: Watcher | None = None  # set once inotify is set up
    _scope: anyio.CancelScope | None = field(default=None, init=False)  # the watch's

    def stop_watching(self) -> None:
        """At shutdown: no more hints."""
        if self._scope is not None:
            self._scope.cancel()

    async def watch(self) -> None:
        if self.watcher is None or self.ctx.closing:
            return
        with anyio.CancelScope() as self._scope:
            async for changes in self.watcher.changes():
                if self.ctx.closing:
                    return
                if changes.overflow:
                    log.warning("watcher.overflow", note="the kernel dropped events; rescanning")
                    self.ctx.spawn(self._rescan_safely, None)
                for repo in changes.repos:
                    self.ctx.spawn(self._rescan_safely, repo)
                for key in changes.cancel:
                    if key in self.registry.runners:
                        self.ctx.spawn(self.registry.check_cancel, key)
                    else:
                        changes.items.add(key)
                if changes.requests:
                    self.ctx.spawn(self.approvals.take)
                fresh = [key for key in changes.armed if self.intake.expect_quiet(key)]
                if fresh:
                    self.ctx.spawn(self.intake.make_spares, fresh)
                items = [key for key in changes.items if self.ctx.valid(key)]
                for key in items:
                    if key in self.registry.runners:  # made again under a running window's name?
                        self.ctx.spawn(self.registry.check_vanished, key)
                if items:
                    self.ctx.spawn(self.intake.take, items)

    async def rescan_loop(self) -> None:
        while True:
            await anyio.sleep(self.ctx.config.daemon.rescan_interval_s)
            await self._rescan_safely(None)

    async def _rescan_safely(self, only_repo: str | None) -> None:
        try:
            await self.rescan(only_repo)
        except OSError as exc:
            log.error("rescan.failed", state_dir=str(self.ctx.root), error=str(exc))

    async def rescan(self, only_repo: str | None = None) -> int:
        """Scan the state directory and take in every work item found that is not finished
        (see `history`: a repo directory that did not change is not even listed); returns
        how many were found."""
        runners = self.registry.runners
        observing = frozenset(k for k, r in runners.items() if r.phase is Phase.OBSERVING)
        h = self.index
        found = await anyio.to_thread.run_sync(
            history.scan, self.ctx.root, h.listings, h.index, only_repo, observing
        )
        items = h.merge(found)
        finished = len(h)  # before intake indexes more of them
        for path, problem in found.problems:
            self.ctx.report(path, problem)
        for key in found.cancelled:
            self.registry.cancel(key)
        if only_repo is None and self.ready.is_set():
            self.ctx.spawn(self.approvals.take)  # in case inotify missed one
        await self.intake.take(items)
        return len(items) + finished
