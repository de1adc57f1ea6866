"""The file access of a work item's directory: reads, and writes through `durable`.

- Small files (`window.json`, `done`, `report.md`, ...) are written atomically
  (`durable.write_atomic_at`): a crash leaves either the old content or the new one, never
  half of it.
- `series.jsonl` is append-only JSON Lines, appended through aiofiles and fsynced per append. A
  crash mid-append can leave a torn last line; reads ignore it and `repair_tail` cuts it off
  before the next append, so it can never glue itself to a good row.

All paths are opened relative to the item directory's descriptor with O_NOFOLLOW (see layout).
The blocking calls run in worker threads so the event loop never waits on the disk. anyio and
aiofiles are imported by the async methods only: the command line uses the `_sync` methods and
`read_at`, and must not pay for an event loop it never starts.

A store may be pinned to one directory: it keeps a descriptor of the directory its window
started in and does everything through it. If the work item's directory is deleted (even if
one is made again under the same name, which may well get the same inode number), every later
access raises `ItemVanished`: an old window can never finish into a new deploy's directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postdeploy import durable
from postdeploy.layout import ItemKey, open_file_flags, open_item_dir


class ItemVanished(FileNotFoundError):
    """The work item's directory was removed (or replaced) while its window was open."""


@dataclass(frozen=True)
class JsonLines:
    """What a JSON Lines file held: the parsed objects, and what had to be skipped."""

    rows: list[dict[str, Any]]
    bad_lines: list[int]  # 1-based numbers of complete lines that are not JSON objects
    torn_bytes: int  # length of an unterminated last line (a crash mid-append), 0 if none


def parse_json_lines(data: bytes) -> JsonLines:
    """Parse JSON Lines, keeping every object line; pure."""
    complete, _, tail = data.rpartition(b"\n")
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    if complete or data.startswith(b"\n"):
        for number, line in enumerate(complete.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                bad.append(number)
                continue
            if isinstance(value, dict):
                rows.append(value)
            else:
                bad.append(number)
    return JsonLines(rows, bad, len(tail))


def dump_line(obj: dict[str, Any]) -> bytes:
    """One JSON Lines record, compact, newline-terminated."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def read_fd(fd: int, limit: int = -1, size: int | None = None) -> bytes:
    """Read from `fd` to its end (or `limit` bytes), leaving it open.

    `size` (the file's size from an fstat) sizes the reads: a read sized by `limit` alone
    allocates `limit` bytes first (16 us for a 64 KiB limit and an empty file)."""
    if size is None:
        size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    total = 0
    while limit < 0 or total < limit:
        want = size - total + 1 if size >= total else 65536  # +1: sees the end, or growth
        if limit >= 0:
            want = min(want, limit - total)
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_at(dir_fd: int, name: str, limit: int = -1) -> bytes | None:
    """The content of `name` in directory `dir_fd` (at most `limit` bytes), None if missing.

    Never follows a symlink and never blocks on a FIFO put in a file's place: anything but a
    regular file raises OSError."""
    try:
        fd = os.open(name, open_file_flags(os.O_RDONLY | os.O_NONBLOCK), dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        return read_fd(fd, limit, st.st_size)
    finally:
        os.close(fd)


class ItemStore:
    """File access for one work item directory below the state directory."""

    def __init__(self, root: Path, key: ItemKey, pinned_fd: int | None = None) -> None:
        self.root = root
        self.key = key
        self.path = root / key.repo / key.work_item
        self._pinned = pinned_fd  # the directory's descriptor, owned (see `pin`)

    def pin(self) -> None:
        """Keep a descriptor of the directory as it is now, and use only it from now on."""
        if self._pinned is None:
            with open_item_dir(self.root, self.key) as dfd:
                self._pinned = os.dup(dfd)

    def close(self) -> None:
        """Release a pinned directory's descriptor."""
        fd, self._pinned = self._pinned, None
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def _dir(self, *, create: bool = False) -> Iterator[int]:
        """The item directory's descriptor; ItemVanished if a pinned directory was removed."""
        if self._pinned is None:
            with open_item_dir(self.root, self.key, create=create) as dfd:
                yield dfd
            return
        if os.fstat(self._pinned).st_nlink == 0:
            raise ItemVanished(errno.ENOENT, f"{self.path} was removed")
        yield self._pinned

    def vanished_sync(self) -> bool:
        """Whether a pinned directory was removed (False for an unpinned store)."""
        try:
            with self._dir():
                return False
        except ItemVanished:
            return True

    # -- blocking primitives (run in threads by the async wrappers) ---------------------

    def read_sync(self, name: str, limit: int = -1) -> bytes | None:
        """The content of `name` (at most `limit` bytes if given), or None if missing."""
        with self._dir() as dfd:
            return read_at(dfd, name, limit)

    def exists_sync(self, name: str) -> bool:
        """Whether `name` exists in the item directory (a symlink counts as existing)."""
        with self._dir() as dfd:
            try:
                os.lstat(name, dir_fd=dfd)
            except FileNotFoundError:
                return False
            return True

    def write_atomic_sync(self, name: str, data: bytes, *, create_dirs: bool = False) -> None:
        """Replace `name` with `data` atomically and durably."""
        with self._dir(create=create_dirs) as dfd:
            durable.write_atomic_at(dfd, name, data)

    def repair_tail_sync(self, name: str, keep: int) -> None:
        """Cut `name` to its first `keep` bytes (drops a torn last line), durably."""
        with self._dir() as dfd:
            fd = os.open(name, open_file_flags(os.O_WRONLY), dir_fd=dfd)
            try:
                durable.truncate_fd(fd, keep)
            finally:
                os.close(fd)

    # -- async API ----------------------------------------------------------------------

    async def read(self, name: str, limit: int = -1) -> bytes | None:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.read_sync, name, limit)

    async def exists(self, name: str) -> bool:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.exists_sync, name)

    async def write_atomic(self, name: str, data: bytes) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.write_atomic_sync, name, data)

    async def write_json(self, name: str, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, indent=1, ensure_ascii=False).encode() + b"\n"
        await self.write_atomic(name, data)

    async def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in `name`, None if missing; ValueError if it is not an object."""
        data = await self.read(name)
        if data is None:
            return None
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"{name} does not hold a JSON object")
        return value

    async def read_lines(self, name: str) -> JsonLines:
        """Parse a JSON Lines file; a torn last line is cut off durably before returning."""
        data = await self.read(name)
        if data is None:
            return JsonLines([], [], 0)
        return await self.parse_lines(name, data)

    async def parse_lines(self, name: str, data: bytes) -> JsonLines:
        """Parse `data`, the content of JSON Lines file `name`; a torn last line is cut off
        the file durably before returning."""
        parsed = parse_json_lines(data)
        if parsed.torn_bytes:
            import anyio.to_thread

            await anyio.to_thread.run_sync(
                self.repair_tail_sync, name, len(data) - parsed.torn_bytes
            )
        return parsed

    def append_lines_sync(self, name: str, data: bytes) -> None:
        """Append `data` (complete lines) to `name` and fsync; all or nothing (see
        `durable.append_fd`)."""
        fd = self.opener(os.O_WRONLY | os.O_APPEND | os.O_CREAT)(name, 0)
        try:
            durable.append_fd(fd, data)
        finally:
            os.close(fd)

    async def append_lines(self, name: str, lines: list[bytes]) -> None:
        """Append complete lines to `name` and fsync before returning (all or nothing).

        The whole append (open, write, fsync, close) is one hop to a worker thread: as five
        separate awaits it cost three times the CPU, which at hundreds of ticks a second
        was a fifth of the daemon's. The hop is shielded so a cancelled caller still learns
        whether its row is on disk.
        """
        import anyio

        with anyio.CancelScope(shield=True):
            await (_append or _make_append())(self, name, b"".join(lines))

    def opener(self, flags: int) -> Callable[[str, int], int]:
        def opener(name: str, _flags: int) -> int:
            with self._dir() as dfd:
                return os.open(name, open_file_flags(flags), durable.FILE_MODE, dir_fd=dfd)

        return opener


# `append_lines_sync` run in the event loop's executor, as aiofiles runs its file methods.
# Made on the first append, so that only a process that appends imports aiofiles.
_append: Callable[[ItemStore, str, bytes], Awaitable[None]] | None = None


def _make_append() -> Callable[[ItemStore, str, bytes], Awaitable[None]]:
    global _append
    import aiofiles.os

    _append = aiofiles.os.wrap(ItemStore.append_lines_sync)
    return _append
