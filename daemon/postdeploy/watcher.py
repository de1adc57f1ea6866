"""Sentinel discovery's fast half: inotify (the periodic rescan behind it, for safety, is
`history.scan`).

Both only produce *hints*: the work items that may have changed. The daemon then checks each
one itself (names, symlinks, files), so a missed or spurious event costs nothing but time.

inotify is read straight from the event loop (`inotify_simple` wraps the three system calls;
`anyio.wait_readable` waits on its descriptor), so an idle daemon never wakes up for it and an
event is seen as soon as the kernel queues it. watchfiles, used before, polls its Rust
thread's queue every `step` ms while holding the GIL: 0.1 % of a core idle at 100 ms and up to
two steps late, 0.66 % at 10 ms (measured in docs/PERFORMANCE.md).

inotify is not recursive: the state directory, each repo directory and each item directory
get a watch of their own. The daemon adds an item directory's watch (`follow`) before it
looks at the directory, so a file created after the look always raises an event, and drops
it (`unfollow`) once the item is settled for good.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
from inotify_simple import INotify
from inotify_simple import flags as F

from postdeploy.layout import (
    ARMED,
    CANCEL,
    REQUESTS_DIR,
    ItemKey,
    valid_name,
)

log = structlog.get_logger("postdeploy.watcher")

# New entries only: a directory, or `armed` / `cancel`, created or renamed into place. Writes
# to existing files (series.jsonl on every tick) raise no event at all. ONLYDIR and
# DONT_FOLLOW: a watch is only ever put on a real directory, never through a symlink.
COALESCE_S = 0.003  # inotify is read at most this often (see `changes`)
_MASK = F.CREATE | F.MOVED_TO | F.ONLYDIR | F.DONT_FOLLOW | F.EXCL_UNLINK


@dataclass
class Changes:
    """One read of inotify, as hints."""

    items: set[ItemKey] = field(default_factory=set)  # new item directories (or entries)
    armed: set[ItemKey] = field(default_factory=set)  # `armed` created or renamed into place
    cancel: set[ItemKey] = field(default_factory=set)  # `cancel` created or renamed into place
    repos: set[str] = field(default_factory=set)  # new entries in the state directory
    requests: set[str] = field(default_factory=set)  # new pokes in `.requests` (see layout)
    overflow: bool = False  # the kernel dropped events: only a full rescan can tell

    def __bool__(self) -> bool:
        return bool(
            self.items or self.armed or self.cancel or self.repos or self.requests or self.overflow
        )


class Watcher:
    """inotify watches on the state directory, its repo directories and the item directories
    the daemon follows, turned into `Changes`. Used from the event loop's thread only."""

    def __init__(self, root: Path) -> None:
        self.root = str(root).rstrip("/") or "/"
        self._inotify = INotify(nonblocking=True)
        self._where: dict[int, tuple[str, ...]] = {}  # wd -> (), (repo,) or (repo, item)
        self._wd: dict[tuple[str, ...], int] = {}
        self._full_reported = False
        self._requests_wd: int | None = None  # the `.requests` directory (see `watch_requests`)
        self._add(())

    def close(self) -> None:
        self._inotify.close()

    @property
    def watches(self) -> int:
        return len(self._wd)

    def _add(self, parts: tuple[str, ...]) -> bool:
        """Watch the directory at `parts` (below the root); False if it cannot be watched."""
        if parts in self._wd:
            return True
        path = "/".join((self.root, *parts))
        try:
            wd = self._inotify.add_watch(path, _MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._full_reported:
                self._full_reported = True
                log.error(
                    "watcher.limit_reached",
                    watches=len(self._wd),
                    path=path,
                    note="fs.inotify.max_user_watches is used up: new sentinels are found by "
                    "the periodic rescan instead",
                )
            return False  # gone, not a directory, a symlink: the daemon's own look says why
        old = self._where.get(wd)
        if old is not None and old != parts:  # the same directory under another name (moved)
            self._wd.pop(old, None)
        self._where[wd] = parts
        self._wd[parts] = wd
        return True

    def watch_repos(self) -> None:
        """Watch every repo directory there is now (blocking: one listing of the root). A
        repo directory made while the daemon runs is watched as the root reports it; one
        made before, holding no work item yet (or only its `.baseline.jsonl`), would
        otherwise be found by the periodic rescan alone, seconds after an arm."""
        with os.scandir(self.root) as entries:
            names = [e.name for e in entries if valid_name(e.name)]
        for name in names:
            self._add((name,))  # IN_ONLYDIR | IN_DONT_FOLLOW: files and symlinks are refused

    def watch_requests(self) -> None:
        """Watch `<root>/.requests`, where `postdeploy rollback` leaves its pokes."""
        if self._requests_wd is None:
            with contextlib.suppress(OSError):  # the rescan still finds them
                self._requests_wd = self._inotify.add_watch(f"{self.root}/{REQUESTS_DIR}", _MASK)

    def follow(self, keys: Iterable[ItemKey]) -> None:
        """Watch these item directories (and their repo directories), if not yet watched."""
        for key in keys:
            # Only below a repo directory watched as one: a repo that is a symlink is
            # refused by IN_DONT_FOLLOW, and its items are never watched through it.
            if (key.repo, key.work_item) not in self._wd and self._add((key.repo,)):
                self._add((key.repo, key.work_item))

    def unfollow(self, key: ItemKey) -> None:
        """Stop watching an item directory that is settled for good."""
        wd = self._wd.pop((key.repo, key.work_item), None)
        if wd is not None:
            self._where.pop(wd, None)
            with contextlib.suppress(OSError):  # already gone with its directory
                self._inotify.rm_watch(wd)

    def read(self) -> Changes:
        """Translate every event queued now into hints (never blocks)."""
        changes = Changes()
        for event in self._inotify.read(timeout=0):
            if event.mask & F.Q_OVERFLOW:
                changes.overflow = True
                continue
            if event.wd == self._requests_wd:
                if event.mask & F.IGNORED:
                    self._requests_wd = None
                elif event.name:
                    changes.requests.add(event.name)
                continue
            parts = self._where.get(event.wd)
            if parts is None:
                continue
            if event.mask & F.IGNORED:  # the directory is gone, or unfollowed
                del self._where[event.wd]
                if self._wd.get(parts) == event.wd:
                    del self._wd[parts]
                continue
            name = event.name
            if not name or name.startswith("."):
                continue  # hidden entries (temporary files, the outbox) are skipped
            if not parts:
                if event.mask & F.ISDIR:
                    self._add((name,))  # before the rescan of it: nothing created after is missed
                changes.repos.add(name)
            elif len(parts) == 1:
                key = ItemKey(parts[0], name)
                if event.mask & F.ISDIR:
                    self._add((parts[0], name))
                changes.items.add(key)
            elif name == ARMED:
                changes.armed.add(ItemKey(parts[0], parts[1]))
            elif name == CANCEL:
                changes.cancel.add(ItemKey(parts[0], parts[1]))
        return changes

    async def changes(self) -> AsyncIterator[Changes]:
        """Yield the hints of each inotify read, as soon as the kernel has events."""
        fd = self._inotify.fileno()
        while True:
            await anyio.wait_readable(fd)
            changes = self.read()
            if changes:
                yield changes
            # Events come in bursts (the daemon's own writes raise some too): reading them
            # at most every COALESCE_S costs a hint that long, and spares the loop a wake-up
            # (and the GIL a hand-over) per event.
            await anyio.sleep(COALESCE_S)
