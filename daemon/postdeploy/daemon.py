"""The daemon: start-up (recover every open window), main loop (watch, rescan), shutdown.

Structure, after uvicorn's server: `serve()` runs `startup()`, waits in the main loop until
a signal asks it to stop, then runs `shutdown()`. Signals only set flags; everything they
cause happens here, in the main flow.

Each open window is one `WindowRunner` task in the `windows` task group. Work items are taken
in ("intake") when inotify or the periodic rescan points at them, in batches: each directory
is looked at, judged (`intake.judge`, pure), the batch's rejections and new windows' starts
are written as one group commit, and the runners start. A new `armed` reported by inotify
waits in a heap until it can be quiet, then joins the batch due with it.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from postdeploy import (
    history,
    intake,
    layout,
    logs,
    metrics,
    watcher,
)
from postdeploy.alerts import Outbox
from postdeploy.approvals import Approvals
from postdeploy.archive import Archive
from postdeploy.clock import SYSTEM, Clock
from postdeploy.config import Config, ConfigError, load_config
from postdeploy.events import Event
from postdeploy.intake import Arm, Look, Quiet, Reject, Resume, Settled
from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.lock import LockHeld, StateLock
from postdeploy.notify import Notifier
from postdeploy.probe import Prober
from postdeploy.registry import Registry
from postdeploy.report import iso
from postdeploy.runner import Phase, WindowRunner
from postdeploy.store import ItemStore
from postdeploy.verdict import Status, Verdict
from postdeploy.window import WindowStart

log = structlog.get_logger("postdeploy.daemon")

BATCH_EVERY_S = 0.005  # due `armed` files are taken in together, at most this often
# New windows start once no intake batch is being recorded, so that starting the windows of
# one batch (a log line and a task each) does not hold up the writes of the next: in a burst
# of sentinels every window is on disk first. A steady stream of sentinels waits no longer.
MAX_START_DELAY_S = 0.25


@dataclass
class _Waiting:
    """A new `armed` written to less than QUIET_S ago: looked at again when `due`."""

    first_seen_at: float  # wall time: when the daemon first noticed it (the window's "seen")
    deadline: float  # monotonic: past it, `armed` is read as it is (a writer that never stops)
    due: float  # monotonic: the next look
    identity: intake.Identity | None = None  # `armed` at the last look; None: not looked at
    spare: intake.Spare | None = None  # window.json's temporary file, made during the wait


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
        self.config = config
        self.config_path = config_path
        self.root: Path = config.state_path
        self._watcher_factory = watcher_factory
        self._clock = clock
        self._handle_signals = handle_signals
        self.notifier = Notifier()
        self.prober = prober or Prober(
            max_inflight=config.daemon.max_inflight_requests,
            max_body_bytes=config.daemon.max_body_bytes,
        )
        self.outbox = outbox or Outbox(self.root, config.alerts, config.outbox)
        self.ready = anyio.Event()
        self.started_at = time.time()  # wall time: a window that ended before was missed
        self.registry = Registry(
            config=lambda: self.config,
            prober=self.prober,
            outbox=self.outbox,
            ready=self.ready,
            clock=clock,
            started_at=self.started_at,
            ended=self._window_ended,
        )
        self.runners = self.registry.runners  # the open windows, by work item
        self._settled: set[ItemKey] = set()  # finished, but not indexable: never looked at again
        # Finished windows: indexed (and journalled) so that none is looked at again.
        self.history = history.History(self.root)
        self.archive = Archive(
            self.root,
            self.history,
            config=lambda: self.config,
            runners=self.runners,
            unfollow=self._unfollow,
        )
        self._intaking: set[ItemKey] = set()
        self._waiting: dict[ItemKey, _Waiting] = {}  # new `armed` files not quiet yet
        self._due: list[tuple[float, ItemKey]] = []  # heap of (_Waiting.due, key)
        self._due_changed = anyio.Event()
        self._quiet_pass = anyio.Event()  # set after each intake of due keys
        self._recording = 0  # intake batches looking at or writing their directories
        self._recorded = anyio.Event()  # set (and replaced) whenever _recording drops to 0
        self._reported: set[tuple[str, str]] = set()
        self._watcher: watcher.Watcher | None = None
        self._should_exit = anyio.Event()
        self._reload_wanted = anyio.Event()  # set by SIGHUP
        self._watch_scope: anyio.CancelScope | None = None
        self._closing = False
        self._windows: anyio.abc.TaskGroup | None = None
        self._lock = StateLock(self.root)
        self.approvals = Approvals(
            self.root,
            config=lambda: self.config,
            runners=self.runners,
            emit=self.outbox.emit,
            spawn=self._spawn,
            report=self._report_once,
            shutdown=self._should_exit,
        )

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
                self._windows = windows
                outer.start_soon(self._watchdog)  # pings during a long recovery too
                outer.start_soon(self._quiet_loop)
                await self.startup()
                outer.start_soon(self._watch)
                outer.start_soon(self._rescan_loop)
                outer.start_soon(self.archive.journal_loop)
                outer.start_soon(self.archive.sweep_loop)  # after READY: it never delays it
                await self._should_exit.wait()
                await self.shutdown()
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
            metrics.serve(self.config.metrics.address)
        try:
            await anyio.to_thread.run_sync(self.approvals.make_dir)
        except OSError as exc:
            log.error("requests.unavailable", path=str(self.approvals.dir), error=str(exc))
        try:  # before the first scan: whatever arrives during it raises an event
            self._watcher = self._watcher_factory(self.root)
            self._watcher.watch_requests()
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
        found = await self._rescan()
        # A finished window still counts when deciding which window is current.
        for repo, (armed_at, work_item) in self.history.latest_armed().items():
            self.registry.note_armed(ItemKey(repo, work_item), armed_at)
        while self._waiting:  # sentinels written just before: each is taken in once quiet
            await self._quiet_pass.wait()
        # READY means every window found is taken up and scheduled (its next step known).
        for runner in list(self.runners.values()):
            await runner.scheduled.wait()
        self.ready.set()
        self._spawn(self.approvals.take)  # people's rollbacks asked for while it was down
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
        self._closing = True
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        self.notifier.stopping()
        concluding = [r.key for r in self.runners.values() if r.phase is Phase.CONCLUDING]
        log.info(
            "daemon.stopping", open_windows=len(self.runners), reactions_running=len(concluding)
        )
        for runner in list(self.runners.values()):
            runner.stop(None)
        spares = [w.spare for w in self._waiting.values() if w.spare is not None]
        for waiting in self._waiting.values():
            waiting.spare = None
        if spares:
            await anyio.to_thread.run_sync(intake.drop_spares, spares)

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
        old, self.config = self.config, new
        self.outbox.reconfigure(new.alerts, new.outbox)
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
            for runner in list(self.runners.values()):
                runner.stop(intake.DISABLED)
        self.notifier.ready("config reloaded")
        log.info(
            "config.reloaded",
            enabled=new.enabled,
            repos=sorted(new.repos),
            changed=config_changes(old, new),
        )

    # -- discovery ------------------------------------------------------------------------

    async def _watch(self) -> None:
        if self._watcher is None:
            return
        with anyio.CancelScope() as self._watch_scope:
            async for changes in self._watcher.changes():
                if self._closing:
                    return
                if changes.overflow:
                    log.warning("watcher.overflow", note="the kernel dropped events; rescanning")
                    self._spawn(self._rescan_safely, None)
                for repo in changes.repos:
                    self._spawn(self._rescan_safely, repo)
                for key in changes.cancel:
                    if key in self.runners:
                        self._spawn(self._check_cancel, key)
                    else:
                        changes.items.add(key)
                if changes.requests:
                    self._spawn(self.approvals.take)
                fresh = [key for key in changes.armed if self._expect_quiet(key)]
                if fresh:
                    self._spawn(self._make_spares, fresh)
                items = [key for key in changes.items if self._valid(key)]
                for key in items:
                    if key in self.runners:  # made again under a running window's name?
                        self._spawn(self._check_vanished, key)
                if items:
                    self._spawn(self._intake, items)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._windows is not None and not self._closing:
            self._windows.start_soon(fn, *args)

    def _valid(self, key: ItemKey) -> bool:
        if layout.valid_name(key.repo) and layout.valid_name(key.work_item):
            return True
        self._report_once(str(self.root / key.repo / key.work_item), "invalid name")
        return False

    async def _rescan_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.daemon.rescan_interval_s)
            await self._rescan_safely(None)

    async def _rescan_safely(self, only_repo: str | None) -> None:
        try:
            await self._rescan(only_repo)
        except OSError as exc:
            log.error("rescan.failed", state_dir=str(self.root), error=str(exc))

    async def _rescan(self, only_repo: str | None = None) -> int:
        """Scan the state directory and take in every work item found that is not finished
        (see `history`: a repo directory that did not change is not even listed); returns
        how many were found."""
        observing = frozenset(k for k, r in self.runners.items() if r.phase is Phase.OBSERVING)
        h = self.history
        found = await anyio.to_thread.run_sync(
            history.scan, self.root, h.listings, h.index, only_repo, observing
        )
        items = h.merge(found)
        finished = len(h)  # before intake indexes more of them
        for path, problem in found.problems:
            self._report_once(path, problem)
        for key in found.cancelled:
            self._cancel(key)
        if only_repo is None and self.ready.is_set():
            self._spawn(self.approvals.take)  # in case inotify missed one
        await self._intake(items)
        return len(items) + finished

    def _unfollow(self, key: ItemKey) -> None:
        if self._watcher is not None:
            self._watcher.unfollow(key)

    def _report_once(self, path: str, problem: str) -> None:
        if (path, problem) not in self._reported:
            self._reported.add((path, problem))
            log.warning("sentinel.ignored", path=path, problem=problem)

    async def _check_cancel(self, key: ItemKey) -> None:
        runner = self.runners.get(key)
        if runner is None or runner.phase is not Phase.OBSERVING:
            return
        try:
            cancelled = await runner.store.exists(layout.CANCEL)
        except (OSError, UnsafePath):
            return
        if cancelled:
            self._cancel(key)

    async def _check_vanished(self, key: ItemKey) -> None:
        """A new entry under an open window's name: if the window's own directory is gone,
        the window ends, and the new directory is taken in as a new work item."""
        runner = self.runners.get(key)
        if runner is not None and await anyio.to_thread.run_sync(runner.store.vanished_sync):
            runner.vanish()

    def _cancel(self, key: ItemKey) -> None:
        """An operator wrote `cancel`: stop the window if it is still observing."""
        runner = self.runners.get(key)
        if runner is None or runner.phase is not Phase.OBSERVING:
            return
        if runner.stop(Verdict(Status.CANCELLED, "cancelled by an operator")):
            log.info("window.cancel_requested", repo=key.repo, work_item=key.work_item)

    # -- waiting for `armed` to be quiet --------------------------------------------------

    def _expect_quiet(self, key: ItemKey) -> bool:
        """inotify saw `armed` arrive: look at it once it can be quiet (no sooner: a look now
        could only say "not quiet yet"). True if it is newly waiting."""
        if key in self.runners or key in self._settled or key in self._waiting:
            return False
        if not self._valid(key):
            return False
        now = time.monotonic()
        self._waiting[key] = _Waiting(
            time.time(), now + intake.MAX_QUIET_WAIT_S, now + intake.QUIET_S
        )
        self._push_due(key, now + intake.QUIET_S)
        return True

    async def _make_spares(self, keys: list[ItemKey]) -> None:
        """Use the quiet wait, when the daemon is idle, to create the temporary files of the
        waiting windows' window.json (the costliest part of the write that follows)."""
        made = await anyio.to_thread.run_sync(intake.make_spares, self.root, keys, layout.WINDOW)
        unused: list[intake.Spare] = []
        for key, spare in zip(keys, made, strict=True):
            if isinstance(spare, Exception):
                continue  # the write makes its own temporary file; the look says what is wrong
            waiting = self._waiting.get(key)
            if (
                waiting is None
                or waiting.spare is not None
                or key in self._intaking
                or self._closing  # shutdown removed the spares it knew of already
            ):
                unused.append(spare)
            else:
                waiting.spare = spare
        if unused:
            await anyio.to_thread.run_sync(intake.drop_spares, unused)

    def _push_due(self, key: ItemKey, due: float) -> None:
        self._waiting[key].due = due
        if not self._due or due < self._due[0][0]:
            self._due_changed.set()
        heapq.heappush(self._due, (due, key))

    async def _quiet_loop(self) -> None:
        """Take in every waiting `armed` that is due, all together, in due order."""
        while True:
            self._due_changed = anyio.Event()
            delay = self._due[0][0] - time.monotonic() if self._due else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._due_changed.wait()
                continue
            now = time.monotonic()
            keys: list[ItemKey] = []
            while self._due and self._due[0][0] <= now:
                due, key = heapq.heappop(self._due)
                waiting = self._waiting.get(key)
                if waiting is None or waiting.due != due:
                    continue  # taken in meanwhile, or looked at again later
                if key in self._intaking or key in self.runners:
                    self._push_due(key, now + intake.QUIET_S)  # after the intake under way
                    continue
                keys.append(key)
            if keys:
                self._spawn(self._intake_due, keys)
                # The next batch no sooner than BATCH_EVERY_S: while one batch waits for its
                # fsyncs, the next one is looked at and prepared.
                await anyio.sleep(BATCH_EVERY_S)

    async def _intake_due(self, keys: list[ItemKey]) -> None:
        await self._intake(keys, due=True)
        self._quiet_pass.set()
        self._quiet_pass = anyio.Event()

    # -- intake ---------------------------------------------------------------------------

    def _takes(self, key: ItemKey, due: bool) -> bool:
        if key in self.runners or key in self._settled or key in self._intaking:
            return False
        return due or key not in self._waiting  # a waiting key is looked at when it is due

    async def _intake(self, keys: Iterable[ItemKey], *, due: bool = False) -> None:
        """Take in work items together: look at each, decide (`intake.judge`), record the
        new windows' starts and the rejections, start the windows (once no other batch is
        being recorded). The looks and the writes each take a few worker-thread hops for the
        whole batch.

        `due`: the keys are waiting for `armed` to be quiet, and now due for a look."""
        if self._closing:
            return
        batch = [key for key in dict.fromkeys(keys) if self._takes(key, due)]
        if not batch:
            return
        self._intaking.update(batch)
        self._recording += 1
        armed: list[tuple[ItemKey, WindowStart, Arm, Look]] = []
        try:
            if self._watcher is not None:
                # Before the look: whatever is created after it raises an event.
                self._watcher.follow(batch)
            now = time.monotonic()
            previous = [self._waiting.get(key) for key in batch]
            requests = [
                (key, w.identity if w else None, w is not None and now > w.deadline)
                for key, w in zip(batch, previous, strict=True)
            ]
            # Shielded: the worker threads finish their looks anyway, and each look holds a
            # directory open that only this function closes.
            with anyio.CancelScope(shield=True):
                looks = await intake.run_all(partial(intake.look_all, self.root), requests)
            # The batch owns the spares of its waiting keys: used by the write, handed back
            # to a key that waits on, or removed at the end.
            spares = {key: w.spare for key, w in zip(batch, previous, strict=True) if w and w.spare}
            for w in previous:
                if w is not None:
                    w.spare = None
            judged = self.config  # a reload may replace it while the batch is written
            try:
                rejects: list[tuple[ItemKey, str, Look]] = []
                arms: list[tuple[ItemKey, Arm, Look, float]] = []
                for key, result in zip(batch, looks, strict=True):
                    try:
                        self._decide(key, result, rejects, arms, spares)
                    except Exception as exc:
                        self._intake_failed(key, exc)
                if rejects:
                    await self._reject_all(rejects)
                if arms:
                    armed = await self._record_all(arms, spares, judged)
            except Exception as exc:
                self._batch_failed(batch, exc)
            finally:
                # The new windows' stores take copies of their directories' descriptors
                # when they start (below); every other one is closed now.
                starting = {id(look) for _, _, _, look in armed}
                for result in looks:
                    if isinstance(result, Look) and id(result) not in starting:
                        _close_fd(result)
                if spares:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(intake.drop_spares, list(spares.values()))
        finally:
            self._recorded_one()
        # The batch's keys stay in `_intaking` until their windows run: no rescan takes them.
        try:
            if armed:
                await self._until_recorded()
                self._start_armed(armed, judged)
        except Exception as exc:
            self._batch_failed(batch, exc)
        finally:
            for _, _, _, look in armed:
                _close_fd(look)
            self._intaking.difference_update(batch)

    def _recorded_one(self) -> None:
        """An intake batch is done looking and writing."""
        self._recording -= 1
        if self._recording == 0:
            self._recorded.set()
            self._recorded = anyio.Event()

    async def _until_recorded(self) -> None:
        """Until no intake batch is being recorded (at most MAX_START_DELAY_S)."""
        with anyio.move_on_after(MAX_START_DELAY_S):
            while self._recording:
                await self._recorded.wait()

    def _batch_failed(self, batch: list[ItemKey], exc: Exception) -> None:
        """A bug while recording a batch: it must not stop the daemon. Nothing of the batch
        is settled, so the next rescan looks at every item again."""
        log.error(
            "intake.batch_failed",
            work_items=[f"{key.repo}/{key.work_item}" for key in batch[:20]],
            batch_size=len(batch),
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
            note="the next rescan takes these work items in again",
        )

    def _decide(
        self,
        key: ItemKey,
        result: Look | Exception,
        rejects: list[tuple[ItemKey, str, Look]],
        arms: list[tuple[ItemKey, Arm, Look, float]],
        spares: dict[ItemKey, intake.Spare],
    ) -> None:
        """Act on one look (see `intake.judge`); writes are collected for the whole batch."""
        if isinstance(result, Exception):
            self._waiting.pop(key, None)
            self._intake_failed(key, result)
            return
        decision = intake.judge(
            result,
            repo=key.repo,
            known=key.repo in self.config.repos,
            enabled=self.config.enabled,
        )
        if isinstance(decision, Quiet):
            waiting = self._waiting.get(key)
            if waiting is None:  # "first seen" is when the daemon noticed it, before the wait
                deadline = time.monotonic() + intake.MAX_QUIET_WAIT_S
                waiting = self._waiting[key] = _Waiting(result.seen_at, deadline, 0.0)
            waiting.identity = decision.identity
            waiting.spare = spares.pop(key, None)  # still waiting: so is its spare
            self._push_due(key, time.monotonic() + decision.delay)
            return
        waiting = self._waiting.pop(key, None)
        if not isinstance(decision, Settled):
            self.history.forget(key)  # a directory made anew under a finished window's name
        if isinstance(decision, Settled):
            if result.finished is not None:  # `done`: indexed, never looked at again
                if self._watcher is not None:
                    self._watcher.unfollow(key)
                self.history.add(key, result.finished)
                self.archive.journal_due.set()
            elif result.kinds[layout.REJECTED] and not result.kinds[layout.DONE]:
                self._park_rejected(key)
            else:
                self._settle(key)
            if decision.armed_at is not None:
                # A finished window still counts when deciding which window is current.
                self.registry.note_armed(key, decision.armed_at)
        elif isinstance(decision, Reject):
            rejects.append((key, decision.reason, result))
        elif isinstance(decision, Arm):
            arms.append(
                (key, decision, result, waiting.first_seen_at if waiting else result.seen_at)
            )
        elif isinstance(decision, Resume):
            start = decision.start
            if start is None:  # window.json is unreadable: the window only ends, as ERROR
                now = time.time()
                start = WindowStart.new(self.config.window_settings(key.repo), now, {}, now)
            self._start(
                key,
                start,
                result,
                first_seen=False,
                stop=decision.stop,
                reacting=decision.reacting,
                judged=self.config,
            )
        # Unarmed: the directory's watch says when `armed` arrives (else the next rescan).

    def _intake_failed(self, key: ItemKey, exc: Exception) -> None:
        if isinstance(exc, UnsafePath):
            self._report_once(str(self.root / key.repo / key.work_item), str(exc))
        elif isinstance(exc, FileNotFoundError):
            pass  # removed while we looked
        elif isinstance(exc, OSError):
            log.error("intake.failed", repo=key.repo, work_item=key.work_item, error=str(exc))
        else:
            log.error(
                "intake.failed",
                repo=key.repo,
                work_item=key.work_item,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def _park_rejected(self, key: ItemKey) -> None:
        """A rejected item is not settled for good: deleting `rejected` (after fixing
        `armed`) asks for another look, which the next rescan makes. It is not watched."""
        if self._watcher is not None:
            self._watcher.unfollow(key)

    def _settle(self, key: ItemKey) -> None:
        self._settled.add(key)
        if self._watcher is not None:
            self._watcher.unfollow(key)

    async def _write_all(
        self,
        name: str,
        items: Sequence[tuple[ItemKey, Look, bytes]],
        spares: dict[ItemKey, intake.Spare] | None = None,
    ) -> list[Exception | None]:
        """Write file `name` in each looked-at directory, atomically and durably, as one
        group commit; the error of each, None if written. The items' `spares` (taken out
        of the dict) serve as their temporary files."""
        errors: list[Exception | None] = [None] * len(items)
        known: list[int] = []  # the items whose look kept their directory open
        triples: list[tuple[int, bytes, intake.Spare | None]] = []
        for i, (key, look, data) in enumerate(items):
            if look.fd is None:  # only a look that ended early has none; judge never asks
                errors[i] = UnsafePath(f"{key}: its directory was not kept open")
            else:
                known.append(i)
                spare = spares.pop(key, None) if spares is not None else None
                triples.append((look.fd, data, spare))
        with anyio.CancelScope(shield=True):  # it owns the spares from here on
            written = await anyio.to_thread.run_sync(intake.write_all, name, triples)
        for i, error in zip(known, written, strict=True):
            errors[i] = error
        return errors

    async def _reject_all(self, rejects: Sequence[tuple[ItemKey, str, Look]]) -> None:
        for key, reason, _ in rejects:
            log.warning("sentinel.rejected", repo=key.repo, work_item=key.work_item, reason=reason)
        errors = await self._write_all(
            layout.REJECTED,
            [
                (key, look, reason.replace("\n", " ").encode() + b"\n")
                for key, reason, look in rejects
            ],
        )
        for (key, _, _), error in zip(rejects, errors, strict=True):
            if error is None:
                self._park_rejected(key)
            else:
                self._intake_failed(key, error)

    async def _record_all(
        self,
        arms: Sequence[tuple[ItemKey, Arm, Look, float]],
        spares: dict[ItemKey, intake.Spare],
        judged: Config,
    ) -> list[tuple[ItemKey, WindowStart, Arm, Look]]:
        """Record the start of each new window (the event first, then window.json); the
        windows recorded, to be started."""
        starts = [
            WindowStart.new(
                judged.window_settings(key.repo), arm.armed_at, arm.metadata, first_seen_at
            )
            for key, arm, _, first_seen_at in arms
        ]
        # The events first: a crash between the two re-emits one (same id, a no-op) rather
        # than losing it, because without window.json the window is "first seen" again.
        events: list[Event | None] = []
        async with anyio.create_task_group() as tg:
            for (key, arm, _, _), start in zip(arms, starts, strict=True):
                event = Event(
                    "window.armed",
                    key,
                    f"window armed: {start.schedule.max_ticks} ticks every "
                    f"{start.schedule.interval_s:g}s",
                    start.first_seen_at,
                    evidence=start.schedule.to_dict(),
                    metadata=arm.metadata,
                )
                wanted = self.outbox.wants(event)  # else emitting it has nothing to do
                events.append(event if wanted else None)
                if wanted:
                    tg.start_soon(self.outbox.emit, event)
        # An event the outbox's disk refused is only in memory: with window.json written
        # after it, a crash would lose it for good. Such a window starts at a later look.
        held = {
            key
            for (key, _, _, _), event in zip(arms, events, strict=True)
            if event is not None and self.outbox.held_in_memory(event.id)
        }
        for key in held:
            log.warning(
                "intake.event_unwritten",
                repo=key.repo,
                work_item=key.work_item,
                note="the outbox could not write its window.armed event yet; the window "
                "starts once it can (next look)",
            )
        if held:
            kept = [i for i, (key, _, _, _) in enumerate(arms) if key not in held]
            arms = [arms[i] for i in kept]
            starts = [starts[i] for i in kept]
        errors = await self._write_all(
            layout.WINDOW,
            [
                (key, look, json.dumps(start.to_dict(), ensure_ascii=False).encode() + b"\n")
                for (key, _, look, _), start in zip(arms, starts, strict=True)
            ],
            spares,
        )
        recorded: list[tuple[ItemKey, WindowStart, Arm, Look]] = []
        for (key, arm, look, _), start, error in zip(arms, starts, errors, strict=True):
            if error is None:
                recorded.append((key, start, arm, look))
            else:
                self._intake_failed(key, error)  # not started: the next look retries it
        return recorded

    def _start_armed(
        self, armed: Sequence[tuple[ItemKey, WindowStart, Arm, Look]], judged: Config
    ) -> None:
        """Start the windows whose start `_record_all` recorded."""
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
            self._start(
                key,
                start,
                look,
                first_seen=True,
                stop=arm.stop,
                reacting=arm.reacting,
                judged=judged,
            )

    def _start(
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
        """Run a window (see `Registry.start`); not once the daemon is closing."""
        if self._closing or self._windows is None:
            return
        # The store keeps the directory the window started in: a directory deleted and made
        # again under the same name is a new deploy, never this window's.
        pinned = os.dup(look.fd) if look.fd is not None else None
        self.registry.start(
            self._windows,
            ItemStore(self.root, key, pinned),
            start,
            judged,
            first_seen=first_seen,
            stop=stop,
            reacting=reacting,
            series=look.series,
        )

    def _window_ended(self, runner: WindowRunner) -> None:
        """A runner's task ended: index a finished window; a vanished one frees its name."""
        if runner.completed:
            self.archive.window_finished(runner.key)
        elif runner.vanished:  # a directory made anew under its name is a new work item
            self._spawn(self._intake, [runner.key])


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


def _close_fd(look: Look) -> None:
    if look.fd is not None:
        os.close(look.fd)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each open window may hold a few
    keep-alive connections, and the usual soft limit of 1024 is far below the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("daemon.nofile_limit", soft=soft, hard=hard, error=str(exc))
