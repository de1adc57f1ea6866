"""The daemon: start-up (recover every open window), main loop (watch, rescan), shutdown.

Structure, after uvicorn's server: `serve()` runs `startup()`, waits in the main loop until
a signal asks it to stop, then runs `shutdown()`. Signals only set flags; everything they
cause happens here, in the main flow.

Each open window is one `WindowRunner` task in the `windows` task group. Work items are taken
in ("intake") when inotify or the periodic rescan points at them; intake checks the
directory, rejects what is invalid, records the window's start, and starts its runner.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import structlog

from postdeploy import gitreport, layout, logs, metrics, watcher
from postdeploy.alerts import Outbox
from postdeploy.config import Config, ConfigError, load_config
from postdeploy.events import Event
from postdeploy.layout import ArmedError, ItemKey, UnsafePath, open_item_dir, parse_armed
from postdeploy.notify import Notifier
from postdeploy.probe import Prober
from postdeploy.report import iso
from postdeploy.runner import Phase, WindowRunner, WindowStart
from postdeploy.store import ItemStore, read_at, read_fd
from postdeploy.verdict import Status, Verdict
from postdeploy.window import Schedule

log = structlog.get_logger("postdeploy.daemon")

QUIET_S = 0.1  # `armed` is read once nothing has written to it for this long
MAX_QUIET_WAIT_S = 5.0
RECHECKS, RECHECK_DELAY_S = 8, 0.25  # a directory without `armed` is looked at again
_CHECKED = (layout.ARMED, layout.DONE, layout.REJECTED, layout.WINDOW, layout.CANCEL)
# The daemon's own files: each must be a regular file or absent. A symlink, a FIFO or a
# directory in their place was put there by someone else; the window is never started.
_OWN = (
    layout.WINDOW,
    layout.SERIES,
    layout.VERIFY,
    layout.ROLLBACK_INTENT,
    layout.ROLLBACK_RESULT,
    layout.ROLLBACK_LOG,
    layout.REPORT,
)


@dataclass(frozen=True)
class _Look:
    """One look at an item directory (see `Daemon._look`)."""

    kinds: dict[str, str | None]
    armed: os.stat_result | None = None  # `armed`, if it is a regular file
    data: bytes | None = None  # its content, if it was quiet (else it is read later)
    seen_at: float = 0.0  # wall time of the look
    window: bytes | None = None  # window.json, if it is a regular file (a window to resume)
    series: bytes | None = None  # series.jsonl (b"" if absent); None if not read


def _read_if_quiet(
    dfd: int, previous: tuple[int, int, int] | None, *, force: bool = False
) -> tuple[os.stat_result | None, bytes | None, float]:
    """`armed`'s stat, its content if nothing has written to it for QUIET_S (or it is
    unchanged since `previous`, or `force`), and the time of the look. Never follows a
    symlink, never blocks on a FIFO put in its place."""
    flags = layout.open_file_flags(os.O_RDONLY | os.O_NONBLOCK)
    try:
        fd = os.open(layout.ARMED, flags, dir_fd=dfd)
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP: a symlink now
        return None, None, time.time()
    try:
        st = os.fstat(fd)
        now = time.time()
        if not stat.S_ISREG(st.st_mode):
            return None, None, now
        age = now - st.st_mtime
        quiet = (st.st_ino, st.st_size, st.st_mtime_ns) == previous or age >= QUIET_S
        if not (quiet or force):
            return st, None, now
        return st, read_fd(fd, layout.MAX_ARMED_BYTES + 1), now
    finally:
        os.close(fd)


def _read_regular(dfd: int, name: str) -> bytes | None:
    """The content of `name` if it is a regular file, else None (see `store.read_at`)."""
    try:
        return read_at(dfd, name)
    except OSError:
        return None


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.root: Path = config.state_path
        self.runners: dict[ItemKey, WindowRunner] = {}
        self._repo_runners: dict[str, dict[ItemKey, WindowRunner]] = {}  # runners by repo
        self.notifier = Notifier()
        self.prober = Prober(
            max_inflight=config.daemon.max_inflight_requests,
            max_body_bytes=config.daemon.max_body_bytes,
        )
        self.outbox = Outbox(self.root, config.alerts, config.outbox)
        self._settled: set[ItemKey] = set()  # finished or rejected: never looked at again
        self._latest: dict[str, tuple[float, str]] = {}  # repo -> newest (armed_at, work_item)
        self._rechecks: dict[ItemKey, int] = {}  # directories seen without `armed`: how often
        self._intaking: set[ItemKey] = set()
        self._reported: set[tuple[str, str]] = set()
        self._should_exit = anyio.Event()
        self._stop_watching = anyio.Event()
        self._closing = False
        self._windows: anyio.abc.TaskGroup | None = None
        self.ready = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code."""
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._signals)
            outer.start_soon(self.outbox.run)
            async with anyio.create_task_group() as windows:
                self._windows = windows
                outer.start_soon(self._watchdog)  # pings during a long recovery too
                await self.startup()
                outer.start_soon(self._watch)
                outer.start_soon(self._rescan_loop)
                await self._should_exit.wait()
                await self.shutdown()
            outer.cancel_scope.cancel()
        await self.prober.aclose()
        log.info("daemon.stopped")
        return 0

    async def startup(self) -> None:
        """Take up every work item on disk, then report READY."""
        started = time.monotonic()
        _raise_open_files_limit()
        if self.config.metrics.address is not None:
            metrics.serve(self.config.metrics.address)
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        found = await self._rescan()
        # READY means every window found is taken up and scheduled (its next step known).
        for runner in list(self.runners.values()):
            await runner.scheduled.wait()
        self.ready.set()
        self.notifier.ready(f"watching {len(self.runners)} open windows")
        log.info(
            "daemon.ready",
            state_dir=str(self.root),
            enabled=self.config.enabled,
            repos=sorted(self.config.repos),
            work_items_found=found,
            open_windows=len(self.runners),
            startup_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def shutdown(self) -> None:
        """Stop intake, pause observing windows, let reactions in progress finish."""
        self._closing = True
        self._stop_watching.set()
        self.notifier.stopping()
        concluding = [r.key for r in self.runners.values() if r.phase is Phase.CONCLUDING]
        log.info(
            "daemon.stopping", open_windows=len(self.runners), reactions_running=len(concluding)
        )
        for runner in list(self.runners.values()):
            runner.stop(None)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                elif self._should_exit.is_set():
                    log.critical("daemon.forced_exit", signal=signal.Signals(signum).name)
                    os._exit(1)
                else:
                    log.info("daemon.signal", signal=signal.Signals(signum).name)
                    self._should_exit.set()

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
        self.config = new
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
                runner.stop(Verdict(Status.DISABLED, "postdeploy is disabled (enabled = false)"))
        self.notifier.ready("config reloaded")
        log.info("config.reloaded", enabled=new.enabled, repos=sorted(new.repos))

    # -- discovery ------------------------------------------------------------------------

    async def _watch(self) -> None:
        async for changes in watcher.watch(self.root, self._stop_watching):
            for repo in changes.repos:
                await self._rescan(only_repo=repo)
            for key in changes.items:
                self._hint(key)

    async def _rescan_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.daemon.rescan_interval_s)
            try:
                await self._rescan()
            except OSError as exc:
                log.error("rescan.failed", state_dir=str(self.root), error=str(exc))

    async def _rescan(self, only_repo: str | None = None) -> int:
        """Scan the state directory and take in every work item found; returns how many."""
        observing = frozenset(k for k, r in self.runners.items() if r.phase is Phase.OBSERVING)
        found = await watcher.scan(self.root, only_repo, observing)
        for path, problem in found.problems:
            self._report_once(path, problem)
        for key in found.cancelled:
            self._cancel(key)
        async with anyio.create_task_group() as tg:
            for key in found.items:
                if (
                    key not in self.runners
                    and key not in self._settled
                    and key not in self._intaking
                ):
                    tg.start_soon(self._intake, key)
        return len(found.items)

    def _hint(self, key: ItemKey) -> None:
        """inotify saw a change in `key`'s directory."""
        if self._closing or self._windows is None or key in self._settled:
            return
        if key.repo.startswith(".") or key.work_item.startswith("."):
            return  # hidden entries (temporary files, the outbox) are skipped, as in the scan
        if not (layout.valid_name(key.repo) and layout.valid_name(key.work_item)):
            self._report_once(str(self.root / key.repo / key.work_item), "invalid name")
            return
        if key in self.runners:
            self._windows.start_soon(self._check_cancel, key)
        elif key not in self._intaking:
            self._windows.start_soon(self._intake, key)

    def _recheck_later(self, key: ItemKey) -> None:
        """Look at a directory without `armed` again shortly, a few times (then the rescan)."""
        attempts = self._rechecks.get(key, 0)
        if attempts >= RECHECKS or self._windows is None or self._closing:
            return
        self._rechecks[key] = attempts + 1

        async def recheck() -> None:
            await anyio.sleep(RECHECK_DELAY_S)
            self._hint(key)

        self._windows.start_soon(recheck)

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

    def _cancel(self, key: ItemKey) -> None:
        """An operator wrote `cancel`: stop the window if it is still observing."""
        runner = self.runners.get(key)
        if runner is None or runner.phase is not Phase.OBSERVING:
            return
        if runner.stop(Verdict(Status.CANCELLED, "cancelled by an operator")):
            log.info("window.cancel_requested", repo=key.repo, work_item=key.work_item)

    # -- intake ---------------------------------------------------------------------------

    async def _intake(self, key: ItemKey) -> None:
        if self._closing or key in self._intaking or key in self.runners or key in self._settled:
            return
        self._intaking.add(key)
        structlog.contextvars.bind_contextvars(repo=key.repo, work_item=key.work_item)
        try:
            await self._admit(key)
        except UnsafePath as exc:
            self._report_once(str(self.root / key.repo / key.work_item), str(exc))
        except FileNotFoundError:
            pass  # removed while we looked
        except Exception as exc:
            log.exception("intake.failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._intaking.discard(key)
            structlog.contextvars.unbind_contextvars("repo", "work_item")

    def _look(self, key: ItemKey) -> _Look:
        """What each file of the item directory is, and `armed` itself: its identity and, if
        it is quiet, its content. One worker-thread hop for everything intake needs."""
        with open_item_dir(self.root, key) as dfd:
            kinds = {name: layout.lstat_kind(dfd, name) for name in {*_CHECKED, *_OWN}}
            if kinds[layout.ARMED] != "file":
                return _Look(kinds)
            armed, data, seen_at = _read_if_quiet(dfd, None)
            window = series = None
            if not (kinds[layout.DONE] or kinds[layout.REJECTED]):
                # A window to resume needs both; reading them here saves two hops each.
                if kinds[layout.WINDOW] == "file":
                    window = _read_regular(dfd, layout.WINDOW)
                series = _read_regular(dfd, layout.SERIES) if kinds[layout.SERIES] else b""
            return _Look(kinds, armed, data, seen_at, window, series)

    async def _admit(self, key: ItemKey) -> None:
        store = ItemStore(self.root, key)
        look = await anyio.to_thread.run_sync(self._look, key)
        kinds = look.kinds
        armed_mtime = look.armed.st_mtime if look.armed is not None else None
        if kinds[layout.DONE] or kinds[layout.REJECTED]:
            self._settled.add(key)
            if kinds[layout.DONE] and armed_mtime is not None:
                # A finished window still counts when deciding which window is current.
                self._note_armed(key, min(armed_mtime, time.time()))
            return
        armed = kinds[layout.ARMED]
        if armed is None:
            self._recheck_later(key)  # `mkdir -p && touch` can beat inotify to a new directory
            return
        if armed != "file":
            await self._reject(store, f"armed is a {armed}, not a regular file; it is not followed")
            return
        if key.repo not in self.config.repos:
            await self._reject(store, f"no [repos.{key.repo}] section in the config")
            return
        foreign = [name for name in _OWN if kinds[name] not in (None, "file")]
        what = ", ".join(f"{name} is a {kinds[name]}" for name in foreign)
        first_seen = kinds[layout.WINDOW] is None
        if foreign and (first_seen or layout.WINDOW in foreign):
            await self._reject(store, f"{what}, not a regular file; it is never followed")
            return
        seen_at = time.time()  # before the quiet wait: "first seen" is when we noticed it
        broken: str | None = None
        if first_seen:
            try:
                metadata, armed_at = await self._read_armed(key, look)
            except ArmedError as exc:
                await self._reject(store, str(exc))
                return
            start = self._new_start(key.repo, armed_at, metadata, seen_at)
            # The event first: a crash between the two re-emits it (same id, a no-op) rather
            # than losing it, because without window.json the window is "first seen" again.
            await self.outbox.emit(
                Event(
                    "window.armed",
                    key,
                    f"window armed: {start.schedule.max_ticks} ticks every "
                    f"{start.schedule.interval_s:g}s",
                    start.first_seen_at,
                    evidence=start.schedule.to_dict(),
                    metadata=metadata,
                )
            )
            await store.write_json(layout.WINDOW, start.to_dict())
            log.info(
                "window.armed",
                armed_at=iso(armed_at),
                max_ticks=start.schedule.max_ticks,
                interval_s=start.schedule.interval_s,
                metadata=metadata,
            )
        else:
            try:
                value = json.loads(look.window) if look.window is not None else {}
                if not isinstance(value, dict):
                    raise ValueError(f"{layout.WINDOW} does not hold a JSON object")
                start = WindowStart.from_dict(value)
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                broken = f"{layout.WINDOW} is unreadable ({exc}); the window cannot be resumed"
                start = self._new_start(key.repo, seen_at, {}, seen_at)
        repo = self.config.repos[key.repo]
        runner = WindowRunner(
            store,
            start,
            repo,
            self.config.window_settings(key.repo),
            self.prober,
            self.outbox.emit,
            first_seen=first_seen,
            reacting=kinds[layout.ROLLBACK_INTENT] is not None,
            series=look.series,
            go=self.ready,
        )
        if foreign:  # a window already under way: it ends, loudly, as ERROR
            broken = f"{what}, not a regular file; the window cannot go on"
        if broken:
            runner.stop(Verdict(Status.ERROR, broken))
        elif kinds[layout.CANCEL]:
            runner.stop(Verdict(Status.CANCELLED, "cancelled by an operator"))
        elif not self.config.enabled:
            runner.stop(Verdict(Status.DISABLED, "postdeploy is disabled (enabled = false)"))
        if self._closing or self._windows is None:
            return
        self.runners[key] = runner
        self._repo_runners.setdefault(key.repo, {})[key] = runner
        metrics.open_windows(len(self.runners))
        self._note_armed(key, start.schedule.armed_at)
        self._windows.start_soon(self._run, runner)

    def _new_start(
        self, repo: str, armed_at: float, metadata: dict[str, str], seen_at: float
    ) -> WindowStart:
        settings = self.config.window_settings(repo)
        schedule = Schedule(
            armed_at, settings.effective_initial_delay_s, settings.interval_s, settings.max_ticks
        )
        return WindowStart(schedule, seen_at, metadata, settings.window_s)

    async def _read_armed(self, key: ItemKey, look: _Look) -> tuple[dict[str, str], float]:
        """Wait until `armed` is quiet for QUIET_S, then parse it; returns (metadata, armed_at).

        `look` is the intake's first look, which read `armed` already if it was quiet."""
        deadline = time.monotonic() + MAX_QUIET_WAIT_S
        while look.data is None:
            st = look.armed
            if st is None:  # replaced meanwhile by something else than a regular file
                raise ArmedError("armed is not a regular file; it is not followed")
            age = time.time() - st.st_mtime
            await anyio.sleep(QUIET_S - age if 0 <= age < QUIET_S else QUIET_S)
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            # Past the deadline (a writer that never stops), read what is there.
            force = time.monotonic() > deadline
            look = await anyio.to_thread.run_sync(self._look_armed, key, identity, force)
        assert look.armed is not None
        return parse_armed(look.data), min(look.armed.st_mtime, look.seen_at)

    def _look_armed(self, key: ItemKey, previous: tuple[int, int, int], force: bool) -> _Look:
        with open_item_dir(self.root, key) as dfd:
            return _Look({}, *_read_if_quiet(dfd, previous, force=force))

    async def _reject(self, store: ItemStore, reason: str) -> None:
        log.warning("sentinel.rejected", reason=reason)
        await store.write_atomic(layout.REJECTED, reason.replace("\n", " ").encode() + b"\n")
        self._settled.add(store.key)

    # -- windows --------------------------------------------------------------------------

    def _note_armed(self, key: ItemKey, armed_at: float) -> None:
        """Remember the latest window of each repo, open or finished, then supersede."""
        latest = self._latest.get(key.repo)
        if latest is None or (armed_at, key.work_item) > latest:
            self._latest[key.repo] = (armed_at, key.work_item)
        self._supersede(key.repo)

    def _supersede(self, repo: str) -> None:
        """Every open window of `repo` but the latest armed one ends as SUPERSEDED.

        The latest is taken over every window seen, finished ones included, so an older
        window that turns up after a newer one (even a finished one) never judges or reacts.
        """
        latest = self._latest.get(repo)
        if latest is None:
            return
        armed_at, work_item = latest
        reason = f"superseded by {work_item}, armed at {iso(armed_at)}"
        for runner in list(self._repo_runners.get(repo, {}).values()):
            if runner.sort_key >= latest:
                continue
            if runner.stop(Verdict(Status.SUPERSEDED, reason)):
                log.info(
                    "window.superseded", repo=repo, work_item=runner.key.work_item, by=work_item
                )

    async def _run(self, runner: WindowRunner) -> None:
        try:
            await runner.run()
            git = self.config.git_report
            if runner.finished is not None and git is not None:
                # After `done`: best-effort, it can never delay or change the verdict.
                outcome, report = runner.finished
                await gitreport.publish(
                    git, outcome, report, runner.start.metadata.get("branch", "")
                )
        finally:
            self.runners.pop(runner.key, None)
            same_repo = self._repo_runners.get(runner.key.repo, {})
            same_repo.pop(runner.key, None)
            if not same_repo:
                self._repo_runners.pop(runner.key.repo, None)
            metrics.open_windows(len(self.runners))
            if runner.completed:
                self._settled.add(runner.key)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each open window may hold a few
    keep-alive connections, and the usual soft limit of 1024 is far below the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("daemon.nofile_limit", soft=soft, hard=hard, error=str(exc))
