"""The daemon: start-up (recover every open window), main loop (watch, rescan), shutdown.

Structure, after uvicorn's server: `serve()` runs `startup()`, waits in the main loop until
a signal asks it to stop, then runs `shutdown()`. The signal task only sets events (SIGHUP:
a reload is wanted, and the reloader task does it; SIGTERM or SIGINT: stop), except that a
second SIGTERM or SIGINT exits at once.

The daemon builds the units and wires them together through one `Context`: `Discovery`
(inotify and the rescan) hands work items to the `Intake` (arrivals.py: the quiet wait, the
batched intake), which starts windows in the `Registry` (one `WindowRunner` task each);
`Approvals` answers people's rollback requests, `Archive` indexes finished windows. Each work
item moves through the states of `lifecycle.TRANSITIONS`, and only through them.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from postdeploy import (
    history,
    intake,
    logs,
    metrics,
    watcher,
)
from postdeploy.alerts import Outbox
from postdeploy.approvals import Approvals
from postdeploy.archive import Archive
from postdeploy.arrivals import Intake
from postdeploy.clock import SYSTEM, Clock
from postdeploy.config import Config, ConfigError, load_config
from postdeploy.context import Context
from postdeploy.discovery import Discovery
from postdeploy.layout import ItemKey
from postdeploy.lock import LockHeld, StateLock
from postdeploy.notify import Notifier
from postdeploy.probe import Prober
from postdeploy.registry import Registry
from postdeploy.runner import Phase, WindowRunner
from postdeploy.sampler import Sampler

log = structlog.get_logger("postdeploy.daemon")

# At shutdown, while a reaction still runs: systemd is asked for EXTEND_STOP_S more every
# EXTEND_STOP_EVERY_S (five chances before an extension runs out: a busy loop is no risk).
EXTEND_STOP_EVERY_S = 2.0
EXTEND_STOP_S = 5 * EXTEND_STOP_EVERY_S


WatcherFactory = Callable[[Path], watcher.Watcher]


class Daemon:
    """The daemon. Its parts that talk to the outside world are parameters, each with the
    production default, so a test can build one in-process: `prober` (give it an
    `httpx.MockTransport`), `outbox` (the event sink), `watcher` (a factory; one that raises
    OSError leaves discovery to the rescan), `clock` (the windows' clocks) and
    `handle_signals` (off in a test: `stop()` ends `serve()`)."""

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        *,
        prober: Prober | None = None,
        outbox: Outbox | None = None,
        watcher_factory: WatcherFactory = watcher.Watcher,
        clock: Clock = SYSTEM,
        handle_signals: bool = True,
    ) -> None:
        self.ctx = Context(config.state_path, config)
        self.config_path = config_path
        self.root: Path = config.state_path
        self._watcher_factory = watcher_factory
        self._handle_signals = handle_signals
        self.notifier = Notifier()
        self.prober = prober or Prober(
            max_inflight=config.daemon.max_inflight_requests,
            max_body_bytes=config.daemon.max_body_bytes,
        )
        self.outbox = outbox or Outbox(self.root, config.alerts, config.outbox)
        self.ready = anyio.Event()
        # wall time: a window that ended before was missed
        started_at = time.time()
        self.registry = Registry(
            self.ctx, self.prober, self.outbox, self.ready, clock, started_at, self._window_ended
        )
        self.runners = self.registry.runners  # the open windows, by work item
        # Finished windows: indexed (and journalled) so that none is looked at again.
        self.history = history.History(self.root)
        self.archive = Archive(self.ctx, self.history, self._unfollow)
        self._watcher: watcher.Watcher | None = None
        self._should_exit = anyio.Event()
        self._reload_wanted = anyio.Event()  # set by SIGHUP
        self._lock = StateLock(self.root)
        self.intake = Intake(
            self.ctx,
            self.outbox,
            self.history,
            indexed=self.archive.journal_due.set,
            note_armed=self.registry.note_armed,
            start=self.registry.start_looked,
            start_armed=self.registry.start_armed,
        )
        self.approvals = Approvals(self.ctx, self.registry, self.outbox.emit, self._should_exit)
        self.discovery = Discovery(
            self.ctx, self.history, self.intake, self.registry, self.approvals, self.ready
        )
        # The repos' baselines: never while one of the repo's work items is open.
        self.sampler = Sampler(
            self.root,
            config=lambda: self.ctx.config,
            prober=self.prober,
            busy=self.ctx.items.open_in,
            clock=clock,
        )

    @property
    def config(self) -> Config:
        """The config in force (a reload replaces it)."""
        return self.ctx.config

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code (1: the state directory is
        held by another daemon, or cannot be made)."""
        try:
            await anyio.to_thread.run_sync(self._take_state_dir)
        except (LockHeld, OSError) as exc:
            log.critical("daemon.state_dir_unavailable", state_dir=str(self.root), error=str(exc))
            return 1
        try:
            return await self._serve()
        finally:
            self._lock.release()

    def _take_state_dir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()

    async def _serve(self) -> int:
        async with anyio.create_task_group() as outer:
            if self._handle_signals:
                outer.start_soon(self._signals)
            outer.start_soon(self._reloader)
            outer.start_soon(self.outbox.run)
            async with anyio.create_task_group() as windows:
                self.ctx.windows = windows
                outer.start_soon(self._watchdog)  # pings during a long recovery too
                outer.start_soon(self.intake.quiet_loop)
                await self.startup()
                outer.start_soon(self.discovery.watch)
                outer.start_soon(self.discovery.rescan_loop)
                outer.start_soon(self.archive.journal_loop)
                outer.start_soon(self.archive.sweep_loop)  # after READY: it never delays it
                outer.start_soon(self.sampler.run)  # after READY too, once windows are known
                await self._should_exit.wait()
                await self.shutdown()
                outer.start_soon(self._extend_stop_timeout)
            outer.cancel_scope.cancel()
        if self._watcher is not None:
            self._watcher.close()
        await self.prober.aclose()
        log.info("daemon.stopped")
        return 0

    async def startup(self) -> None:
        """Take up every work item on disk, then report READY."""
        started = time.monotonic()
        _raise_open_files_limit()
        if self.config.metrics.address is not None:
            metrics.serve(self.config.metrics.address, lambda: self.config)  # + the pages
        try:
            await anyio.to_thread.run_sync(self.approvals.make_dir)
        except OSError as exc:
            log.error("requests.unavailable", path=str(self.approvals.dir), error=str(exc))
        try:  # before the first scan: whatever arrives during it raises an event
            self._watcher = self._watcher_factory(self.root)
            self._watcher.watch_requests()
            self._watcher.watch_repos()
            self.intake.watcher = self.discovery.watcher = self._watcher
        except OSError as exc:
            log.error(
                "watcher.unavailable",
                error=str(exc),
                note="inotify cannot be used (fs.inotify.max_user_instances?); sentinels are "
                f"found by the rescan every {self.config.daemon.rescan_interval_s:g}s",
            )
        # The index of finished windows first: the scan then skips every one of them.
        journals = await anyio.to_thread.run_sync(history.read_journals, self.root)
        self.history.load(journals)
        found = await self.discovery.rescan()
        # A finished window still counts when deciding which window is current.
        for repo, (armed_at, work_item) in self.history.latest_armed().items():
            self.registry.note_armed(ItemKey(repo, work_item), armed_at)
        while self.intake.waiting:  # sentinels written just before: each taken in once quiet
            await self.intake.quiet_pass.wait()
        # READY means every window found is taken up and scheduled (its next step known).
        for runner in list(self.runners.values()):
            await runner.scheduled.wait()
        self.ready.set()
        self.ctx.spawn(self.approvals.take)  # people's rollbacks asked for while it was down
        self.notifier.ready(f"watching {len(self.runners)} open windows")
        log.info(
            "daemon.ready",
            state_dir=str(self.root),
            enabled=self.config.enabled,
            repos=sorted(self.config.repos),
            work_items_found=found,
            finished_windows=len(self.history),
            open_windows=len(self.runners),
            startup_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def shutdown(self) -> None:
        """Stop intake, pause observing windows, let reactions in progress finish."""
        self.ctx.closing = True
        self.discovery.stop_watching()
        self.notifier.stopping()
        log.info(
            "daemon.stopping",
            open_windows=len(self.runners),
            reactions_running=self._reactions_running(),
        )
        self.registry.pause_all()
        spares = [w.spare for w in self.intake.waiting.values() if w.spare is not None]
        for waiting in self.intake.waiting.values():
            waiting.spare = None
        if spares:
            await anyio.to_thread.run_sync(intake.drop_spares, spares)

    def _reactions_running(self) -> int:
        """Reactions under way (rollbacks, their verification, people's rollbacks): shutdown
        waits for each to end."""
        concluding = sum(1 for r in self.runners.values() if r.phase is Phase.CONCLUDING)
        return concluding + self.approvals.answering

    async def _extend_stop_timeout(self) -> None:
        """While shutdown waits for reactions under way, ask systemd for more time before its
        stop timeout (TimeoutStopSec) would SIGKILL the daemon in the middle of a rollback. A
        rollback ends by `rollback_timeout_s` (its process group is then killed), so the stop
        still ends; a daemon stuck with no reaction running gets no extension."""
        while self.notifier.enabled:
            running = self._reactions_running()
            if not running:
                return
            self.notifier.extend_timeout(EXTEND_STOP_S)
            self.notifier.status(f"stopping: waiting for {running} reaction(s) to finish")
            await anyio.sleep(EXTEND_STOP_EVERY_S)

    def stop(self) -> None:
        """Ask `serve()` to shut down, as SIGTERM does."""
        self._should_exit.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload_wanted.set()  # the reloader task does it
                elif self._should_exit.is_set():
                    log.critical("daemon.forced_exit", signal=signal.Signals(signum).name)
                    os._exit(1)
                else:
                    log.info("daemon.signal", signal=signal.Signals(signum).name)
                    self._should_exit.set()

    async def _reloader(self) -> None:
        """Reload the config each time SIGHUP asked for it (several at once: once)."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = anyio.Event()
            await self.reload()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await anyio.sleep(interval)

    async def reload(self) -> None:
        """Re-read the config; an invalid one is reported and the old one stays in force."""
        self.notifier.reloading()
        try:
            if self.config_path is None:
                raise ConfigError(["(no config file to reload)"])
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
            if new.state_path != self.root:
                raise ConfigError([f"{self.config_path}: state_dir: cannot change while running"])
        except ConfigError as exc:
            log.error(
                "config.reload_failed", problems=exc.lines, note="the old config stays in force"
            )
            self.notifier.ready("reload failed; old config in force")
            return
        logs.register_config_secrets(new)
        old, self.ctx.config = self.config, new
        self.outbox.reconfigure(new.alerts, new.outbox)
        self.sampler.reconfigure()
        for runner in self.runners.values():
            if runner.key.repo in new.repos:
                runner.reconfigure(new.repos[runner.key.repo], new.window_settings(runner.key.repo))
            else:
                log.warning(
                    "config.repo_removed",
                    repo=runner.key.repo,
                    work_item=runner.key.work_item,
                    note="the open window keeps its previous settings",
                )
        if not new.enabled:
            self.registry.disable_all()
        self.notifier.ready("config reloaded")
        log.info(
            "config.reloaded",
            enabled=new.enabled,
            repos=sorted(new.repos),
            changed=config_changes(old, new),
        )

    def _unfollow(self, key: ItemKey) -> None:
        if self._watcher is not None:
            self._watcher.unfollow(key)

    def _window_ended(self, runner: WindowRunner) -> None:
        """A runner's task ended: index a finished window; a vanished one frees its name."""
        if runner.completed:
            self.archive.window_finished(runner.key)
        elif runner.vanished:  # a directory made anew under its name is a new work item
            self.ctx.spawn(self.intake.take, [runner.key])


def config_changes(old: Config, new: Config, limit: int = 50) -> list[str]:
    """The dotted keys whose values differ between two configs (names only, never values:
    a header's literal value could be something nobody wants in a log)."""
    changed: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(changed) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                where = f"{path}.{key}" if path else str(key)
                if key not in a:
                    changed.append(f"{where} (added)")
                elif key not in b:
                    changed.append(f"{where} (removed)")
                else:
                    walk(a[key], b[key], where)
        elif a != b:
            changed.append(path)

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), "")
    return changed


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each open window may hold a few
    keep-alive connections, and the usual soft limit of 1024 is far below the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("daemon.nofile_limit", soft=soft, hard=hard, error=str(exc))
