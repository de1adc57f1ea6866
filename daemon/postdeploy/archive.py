"""The finished windows kept on disk: their index's journal, and retention.

`history` holds the pure parts and the blocking file work (the index, the journal format,
the look at a finished directory, the removal); this is the shell around them in the daemon:
a task that appends the lines of windows that just finished (a batch at a time), and a task
that removes the windows older than `retention_days` at start-up and then hourly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from postdeploy import history, layout
from postdeploy.context import Context
from postdeploy.history import History, Record
from postdeploy.layout import ItemKey
from postdeploy.lifecycle import State
from postdeploy.report import iso

log = structlog.get_logger("postdeploy.archive")

JOURNAL_EVERY_S = 0.5  # lines of finished windows are appended to the journal at most this often


@dataclass(eq=False)
class Archive:
    """Keeps the history index's journals in step, and applies retention."""

    ctx: Context
    history: History
    unfollow: Callable[[ItemKey], None]  # drop a finished window's inotify watch
    journal_due: anyio.Event = field(default_factory=anyio.Event)  # lines to write
    _just_finished: list[ItemKey] = field(default_factory=list, init=False)  # wrote `done`
    # Left alone once by the sweep: not tried again.
    _sweep_refused: set[tuple[str, str]] = field(default_factory=set, init=False)

    def window_finished(self, key: ItemKey) -> None:
        """A runner wrote `done`: the window goes into the history index (by `journal_loop`)."""
        self.unfollow(key)
        self._just_finished.append(key)
        self.journal_due.set()

    async def journal_loop(self) -> None:
        """Index the windows that finished and append their journal lines, a batch at a time
        (at most every JOURNAL_EVERY_S: windows often finish together)."""
        while True:
            await self.journal_due.wait()
            self.journal_due = anyio.Event()
            try:
                await self._write_journal()
            except Exception as exc:  # a cache: a failure costs a look after a restart
                log.warning(
                    "history.journal_failed",
                    state_dir=str(self.ctx.root),
                    error=f"{type(exc).__name__}: {exc}",
                )
            await anyio.sleep(JOURNAL_EVERY_S)

    async def _write_journal(self) -> None:
        keys, self._just_finished = self._just_finished, []
        if keys:
            found = await anyio.to_thread.run_sync(history.look_finished, self.ctx.root, keys)
            for key, record in found:
                if self.ctx.items.state(key) is State.UNSEEN:  # not taken in again meanwhile
                    self.history.add(key, record)
        queued, untidy = self.history.take_queued(), self.history.take_untidy()
        if queued or untidy:
            failed = await anyio.to_thread.run_sync(self._journal_write, queued, untidy)
            for repo, exc in failed:
                log.warning(
                    "history.journal_failed",
                    repo=repo,
                    error=f"{type(exc).__name__}: {exc}",
                    note="the journal is rewritten at the next sweep; a window it lacks is "
                    "looked at once after a restart",
                )
                self.history.untidy.add(repo)

    def _journal_write(
        self, queued: dict[str, list[Record]], untidy: dict[str, dict[str, Any]]
    ) -> list[tuple[str, Exception]]:
        """Append the queued lines, then rewrite the untidy journals (blocking); failures."""
        failed: list[tuple[str, Exception]] = []
        for repo, records in queued.items():
            try:
                self.history.writer.append(repo, records)
            except FileNotFoundError:
                pass  # the repo directory is gone, and its windows with it
            except (OSError, layout.UnsafePath) as exc:
                failed.append((repo, exc))
        for repo, keep in untidy.items():
            try:
                self.history.writer.compact(repo, keep)
            except (OSError, layout.UnsafePath) as exc:
                failed.append((repo, exc))
        return failed

    async def sweep_loop(self) -> None:
        """Remove finished windows past `retention_days`: at start-up (after READY), then
        hourly (see `history.sweep_every_s`). Each sweep also lists every repo directory
        again at the next rescan (a safety net under the listings kept)."""
        first = True
        while True:
            try:
                await self._sweep(relist=not first)  # start-up has just listed everything
            except Exception as exc:
                log.error(
                    "history.sweep_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
                )
            first = False
            await anyio.sleep(history.sweep_every_s(self.ctx.config.retention_days))

    async def _sweep(self, *, relist: bool) -> None:
        if relist:
            self.history.relist_all()
        days = self.ctx.config.retention_days
        now = time.time()
        removed: list[ItemKey] = []
        for repo in list(self.history.index):
            entries = self.history.index.get(repo, {})
            due = [
                name
                for name in history.due_for_removal(entries, now, days)
                if (repo, name) not in self._sweep_refused
            ]
            for start in range(0, len(due), history.SWEEP_BATCH):
                batch = [(n, entries[n].dir_id) for n in due[start : start + history.SWEEP_BATCH]]
                outcomes = await anyio.to_thread.run_sync(
                    history.remove_items, self.ctx.root, repo, batch
                )
                for (name, did), outcome in zip(batch, outcomes, strict=True):
                    key = ItemKey(repo, name)
                    entry = entries.get(name)
                    if outcome.removed:
                        if entry is not None and entry.dir_id == did:
                            self.history.forget(key)
                        removed.append(key)
                        finished = entry.finished_ts if entry is not None else None
                        log.debug(
                            "history.removed",
                            repo=repo,
                            work_item=name,
                            finished_at=iso(finished) if finished is not None else None,
                        )
                    elif outcome.problem:
                        self._sweep_refused.add((repo, name))
                        log.warning(
                            "history.kept",
                            repo=repo,
                            work_item=name,
                            problem=outcome.problem,
                            note="past retention_days, but left alone",
                        )
        if removed:
            log.info(
                "history.swept",
                removed=len(removed),
                retention_days=days,
                work_items=[str(key) for key in removed[:20]],
                finished_windows=len(self.history),
            )
            self.journal_due.set()
