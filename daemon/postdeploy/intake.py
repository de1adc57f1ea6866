"""Intake: what to do with a work item directory the daemon has just looked at.

The pure core is `judge`: one `Look` at the directory in, one decision out (settled, not
armed yet, rejected, wait for `armed` to be quiet, a new window, a window to resume). Every
rule about which directories start a window lives there, in one place, table-tested.

The shell around it is blocking and works in batches, one worker-thread hop per chunk of
items: `look_all` looks at many directories and `write_all` writes one small file in each
(`durable`'s group commit).
Arming 500 sentinels at once costs 500 looks and 500 durable writes; as one hop each they
cost the event loop twice the CPU of the whole batch done in a few chunks.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio

from postdeploy import durable, history, layout
from postdeploy.durable import Spare as Spare  # the daemon handles spares as intake's
from postdeploy.durable import drop_spares as drop_spares
from postdeploy.layout import ArmedError, ItemKey, open_item_dir, parse_armed
from postdeploy.store import read_at, read_fd
from postdeploy.verdict import Status, Verdict
from postdeploy.window import WindowStart

QUIET_S = 0.1  # `armed` is read once nothing has written to it for this long (the contract)
MAX_QUIET_WAIT_S = 5.0  # a writer that never stops: past this, `armed` is read as it is
CHUNKS = 16  # a batch is split into at most this many worker-thread hops, run concurrently

# The daemon's own files: each must be a regular file or absent. A symlink, a FIFO or a
# directory in their place was put there by someone else; the window is never started.
OWN = (
    layout.WINDOW,
    layout.SERIES,
    layout.VERIFY,
    layout.ROLLBACK_INTENT,
    layout.ROLLBACK_RESULT,
    layout.ROLLBACK_LOG,
    layout.REPORT,
)
_NAMES = frozenset({layout.ARMED, layout.DONE, layout.REJECTED, layout.CANCEL, *OWN})

Identity = tuple[int, int, int]  # (inode, size, mtime_ns) of `armed`: changed means written


@dataclass(frozen=True)
class Look:
    """One look at an item directory."""

    kinds: dict[str, str | None]  # each name intake cares about: 'file', 'dir', ... or None
    armed: os.stat_result | None = None  # `armed`, if it is a regular file
    data: bytes | None = None  # its content, if it was quiet (else it is read later)
    seen_at: float = 0.0  # wall time of the look
    window: bytes | None = None  # window.json, if it is a regular file (a window to resume)
    series: bytes | None = None  # series.jsonl (b"" if absent); None if not read
    fd: int | None = None  # the directory, kept open for intake's writes (see `look_all`)
    finished: history.Record | None = None  # with `done`: the window for the history index


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settled:
    """Finished (`done`) or rejected: never looked at again."""

    armed_at: float | None  # a finished window's `armed` mtime: it still counts for supersede


@dataclass(frozen=True)
class Unarmed:
    """A directory without `armed` yet: its watch will say when one arrives."""


@dataclass(frozen=True)
class Reject:
    reason: str  # written to `rejected`


@dataclass(frozen=True)
class Quiet:
    """A new `armed` that something wrote to less than QUIET_S ago: look again after `delay`."""

    identity: Identity
    delay: float


@dataclass(frozen=True)
class Arm:
    """A new window: record its start, then run it."""

    metadata: dict[str, str]
    armed_at: float
    stop: Verdict | None  # it ends at once (cancelled, disabled), but is recorded first
    reacting: bool


@dataclass(frozen=True)
class Resume:
    """A window recorded before: run it from its files."""

    start: WindowStart | None  # None: window.json is unreadable (`stop` says so)
    stop: Verdict | None
    reacting: bool


Decision = Settled | Unarmed | Reject | Quiet | Arm | Resume


def identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def judge(look: Look, *, repo: str, known: bool, enabled: bool) -> Decision:
    """What to do with a directory of `repo`, from one look at it; pure.

    `known`: the config has a section for `repo`; `enabled`: the kill switch is off."""
    kinds = look.kinds
    if kinds[layout.DONE] or kinds[layout.REJECTED]:
        if kinds[layout.DONE] and look.armed is not None:
            return Settled(min(look.armed.st_mtime, look.seen_at))
        return Settled(None)
    armed = kinds[layout.ARMED]
    if armed is None:
        return Unarmed()
    if armed != "file":
        return Reject(f"armed is a {armed}, not a regular file; it is not followed")
    if not known:
        return Reject(f"no [repos.{repo}] section in the config")
    foreign = [name for name in OWN if kinds[name] not in (None, "file")]
    what = ", ".join(f"{name} is a {kinds[name]}" for name in foreign)
    first_seen = kinds[layout.WINDOW] is None
    if foreign and (first_seen or layout.WINDOW in foreign):
        return Reject(f"{what}, not a regular file; it is never followed")
    reacting = kinds[layout.ROLLBACK_INTENT] is not None
    if first_seen:
        if look.armed is None:  # replaced by something else between two system calls
            return Reject("armed is not a regular file; it is not followed")
        if look.data is None:
            age = look.seen_at - look.armed.st_mtime
            delay = QUIET_S - age if 0 <= age < QUIET_S else QUIET_S
            return Quiet(identity(look.armed), delay)
        try:
            metadata = parse_armed(look.data)
        except ArmedError as exc:
            return Reject(str(exc))
        # A future mtime counts as now (the contract).
        armed_at = min(look.armed.st_mtime, look.seen_at)
        return Arm(metadata, armed_at, _stop(kinds, enabled), reacting)
    start: WindowStart | None = None
    broken: str | None = None
    try:
        value = json.loads(look.window) if look.window is not None else {}
        if not isinstance(value, dict):
            raise ValueError(f"{layout.WINDOW} does not hold a JSON object")
        start = WindowStart.from_dict(value)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        broken = f"{layout.WINDOW} is unreadable ({exc}); the window cannot be resumed"
    if foreign:  # a window already under way: it ends, loudly, as ERROR
        broken = f"{what}, not a regular file; the window cannot go on"
    stop = Verdict(Status.ERROR, broken) if broken else _stop(kinds, enabled)
    return Resume(start, stop, reacting)


DISABLED = Verdict(Status.DISABLED, "postdeploy is disabled (enabled = false)")


def _stop(kinds: dict[str, str | None], enabled: bool) -> Verdict | None:
    if kinds[layout.CANCEL]:
        return Verdict(Status.CANCELLED, "cancelled by an operator")
    if not enabled:
        return DISABLED
    return None


# -- looking --------------------------------------------------------------------------------


def _kinds(dfd: int) -> dict[str, str | None]:
    """What each name intake cares about is in the directory: one listing, no stat calls
    (the kernel's directory entries carry the type)."""
    kinds: dict[str, str | None] = dict.fromkeys(_NAMES)
    with os.scandir(dfd) as entries:
        for entry in entries:
            if entry.name in _NAMES:
                if entry.is_symlink():
                    kinds[entry.name] = "symlink"
                elif entry.is_file(follow_symlinks=False):
                    kinds[entry.name] = "file"
                elif entry.is_dir(follow_symlinks=False):
                    kinds[entry.name] = "dir"
                else:
                    kinds[entry.name] = "other"
    return kinds


def read_if_quiet(
    dfd: int, previous: Identity | None, *, force: bool = False
) -> tuple[os.stat_result | None, bytes | None, float]:
    """`armed`'s stat, its content if nothing has written to it for QUIET_S (or it is
    unchanged since `previous`, or `force`), and the time of the look. Never follows a
    symlink, never blocks on a FIFO put in its place; FileNotFoundError if it is gone."""
    try:
        fd = os.open(layout.ARMED, layout.open_file_flags(os.O_RDONLY | os.O_NONBLOCK), dir_fd=dfd)
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP: a symlink now
        return None, None, time.time()
    try:
        st = os.fstat(fd)
        now = time.time()
        if not stat.S_ISREG(st.st_mode):
            return None, None, now
        quiet = identity(st) == previous or now - st.st_mtime >= QUIET_S
        if not (quiet or force):
            return st, None, now
        return st, read_fd(fd, layout.MAX_ARMED_BYTES + 1, st.st_size), now
    finally:
        os.close(fd)


def look(
    root: Path,
    key: ItemKey,
    previous: Identity | None = None,
    force: bool = False,
    *,
    root_fd: int | None = None,
) -> Look:
    """One look at an item directory: what each file is, and `armed` itself (its identity
    and, if it is quiet or `force`, its content); for an open window its window.json and
    series too, and a descriptor of the directory (the caller closes it). Blocking; raises
    UnsafePath or FileNotFoundError for a directory that is not one, or whose `armed`
    vanished meanwhile."""
    with open_item_dir(root, key, root_fd=root_fd) as dfd:
        kinds = _kinds(dfd)
        if kinds[layout.DONE] or kinds[layout.REJECTED]:
            st = None
            if kinds[layout.ARMED] == "file":  # its mtime still counts for supersede
                st = os.lstat(layout.ARMED, dir_fd=dfd)
            ok = st is not None and stat.S_ISREG(st.st_mode)
            # A finished window is recorded in the history index: never looked at again.
            finished = history.look_record(key.work_item, dfd) if kinds[layout.DONE] else None
            return Look(kinds, st if ok else None, seen_at=time.time(), finished=finished)
        # Kept open for the intake's write (window.json or rejected) into this directory.
        fd = os.dup(dfd)
        try:
            if kinds[layout.ARMED] != "file":
                return Look(kinds, fd=fd)
            armed, data, seen_at = read_if_quiet(dfd, previous, force=force)
            window = _read_regular(dfd, layout.WINDOW) if kinds[layout.WINDOW] == "file" else None
            series = _read_regular(dfd, layout.SERIES) if kinds[layout.SERIES] else b""
            return Look(kinds, armed, data, seen_at, window, series, fd)
        except BaseException:
            os.close(fd)
            raise


LookRequest = tuple[ItemKey, Identity | None, bool]  # (key, identity last seen, force)


def look_all(root: Path, requests: Sequence[LookRequest]) -> list[Look | Exception]:
    """`look` at each directory (blocking); each result is a Look or the exception it
    raised. Every Look's `fd` must be closed by the caller."""
    results: list[Look | Exception] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for key, previous, force in requests:
            try:
                results.append(look(root, key, previous, force, root_fd=root_fd))
            except Exception as exc:
                results.append(exc)
    finally:
        os.close(root_fd)
    return results


def _read_regular(dfd: int, name: str) -> bytes | None:
    """The content of `name` if it is a regular file, else None (see `store.read_at`)."""
    try:
        return read_at(dfd, name)
    except OSError:
        return None


def make_spares(root: Path, keys: Sequence[ItemKey], name: str) -> list[Spare | Exception]:
    """A `durable.Spare` for a later write of `name` in each item directory (blocking): its
    temporary file made in the quiet time before `armed` can be read, while the daemon is
    idle. Each result is the Spare or the exception. Every Spare goes to `write_all` or
    `drop_spares`."""
    results: list[Spare | Exception] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for key in keys:
            try:
                with open_item_dir(root, key, root_fd=root_fd) as dfd:
                    results.append(durable.make_spare(dfd, name))
            except Exception as exc:
                results.append(exc)
    finally:
        os.close(root_fd)
    return results


def write_all(name: str, items: Sequence[durable.GroupItem]) -> list[Exception | None]:
    """Write file `name` in each directory (given by its descriptor, with its content and
    its Spare if one was made), atomically and durably, as one group commit; each item's
    error, None where it is written. Blocking. See `durable.write_group`; the daemon (and
    the chaos suite's fault injection) reach the group commit through this name."""
    return durable.write_group(name, items)


# -- batches --------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


async def run_all(
    fn: Callable[[Sequence[T]], list[R | Exception]], items: Sequence[T]
) -> list[R | Exception]:
    """`fn` on the items a chunk at a time (at most CHUNKS chunks), each chunk in a worker
    thread, the chunks concurrently; the results in the items' order."""
    if not items:
        return []
    size = -(-len(items) // CHUNKS)
    parts: list[list[R | Exception]] = [[] for _ in range(0, len(items), size)]

    async def chunk(n: int) -> None:
        parts[n] = await anyio.to_thread.run_sync(fn, items[n * size : (n + 1) * size])

    async with anyio.create_task_group() as tg:
        for n in range(len(parts)):
            tg.start_soon(chunk, n)
    return [result for part in parts for result in part]
