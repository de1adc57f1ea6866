"""Discovery: where new work items, cancels and requests come from. inotify gives hints as
they happen (`watcher`); a periodic rescan of the state directory (which skips finished
windows through their index, `history.scan`) is the safety net behind it. Each hint goes to
the unit that acts on it: the intake, the registry of running windows, the approvals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import structlog

from postdeploy import history, watcher
from postdeploy.approvals import Approvals
from postdeploy.arrivals import Intake
from postdeploy.config import Config
from postdeploy.layout import ItemKey
from postdeploy.registry import Registry
from postdeploy.runner import Phase, WindowRunner

log = structlog.get_logger("postdeploy.daemon")


class Discovery:
    """The inotify watch and the rescan, turned into work for the other units."""

    def __init__(
        self,
        root: Path,
        *,
        config: Callable[[], Config],
        index: history.History,
        intake: Intake,
        registry: Registry,
        approvals: Approvals,
        runners: Mapping[ItemKey, WindowRunner],
        ready: anyio.Event,
        spawn: Callable[..., None],
        closing: Callable[[], bool],
        report: Callable[[str, str], None],
        valid: Callable[[ItemKey], bool],
    ) -> None:
        self.root = root
        self._config = config  # the config in force now (a reload replaces it)
        self._history = index
        self._intake = intake
        self._registry = registry
        self._approvals = approvals
        self._runners = runners
        self._ready = ready
        self._spawn = spawn
        self._closing = closing
        self._report = report
        self._valid = valid
        self.watcher: watcher.Watcher | None = None  # set once inotify is set up
        self._scope: anyio.CancelScope | None = None  # the watch's, while it runs

    def stop_watching(self) -> None:
        """At shutdown: no more hints."""
        if self._scope is not None:
            self._scope.cancel()

    async def watch(self) -> None:
        if self.watcher is None or self._closing():
            return
        with anyio.CancelScope() as self._scope:
            async for changes in self.watcher.changes():
                if self._closing():
                    return
                if changes.overflow:
                    log.warning("watcher.overflow", note="the kernel dropped events; rescanning")
                    self._spawn(self._rescan_safely, None)
                for repo in changes.repos:
                    self._spawn(self._rescan_safely, repo)
                for key in changes.cancel:
                    if key in self._runners:
                        self._spawn(self._registry.check_cancel, key)
                    else:
                        changes.items.add(key)
                if changes.requests:
                    self._spawn(self._approvals.take)
                fresh = [key for key in changes.armed if self._intake.expect_quiet(key)]
                if fresh:
                    self._spawn(self._intake.make_spares, fresh)
                items = [key for key in changes.items if self._valid(key)]
                for key in items:
                    if key in self._runners:  # made again under a running window's name?
                        self._spawn(self._registry.check_vanished, key)
                if items:
                    self._spawn(self._intake.take, items)

    async def rescan_loop(self) -> None:
        while True:
            await anyio.sleep(self._config().daemon.rescan_interval_s)
            await self._rescan_safely(None)

    async def _rescan_safely(self, only_repo: str | None) -> None:
        try:
            await self.rescan(only_repo)
        except OSError as exc:
            log.error("rescan.failed", state_dir=str(self.root), error=str(exc))

    async def rescan(self, only_repo: str | None = None) -> int:
        """Scan the state directory and take in every work item found that is not finished
        (see `history`: a repo directory that did not change is not even listed); returns
        how many were found."""
        observing = frozenset(k for k, r in self._runners.items() if r.phase is Phase.OBSERVING)
        h = self._history
        found = await anyio.to_thread.run_sync(
            history.scan, self.root, h.listings, h.index, only_repo, observing
        )
        items = h.merge(found)
        finished = len(h)  # before intake indexes more of them
        for path, problem in found.problems:
            self._report(path, problem)
        for key in found.cancelled:
            self._registry.cancel(key)
        if only_repo is None and self._ready.is_set():
            self._spawn(self._approvals.take)  # in case inotify missed one
        await self._intake.take(items)
        return len(items) + finished
