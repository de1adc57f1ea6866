"""The outbox on disk: `<state_dir>/.outbox/` (blocking calls; the outbox runs them in threads).

```
.outbox/
    pending/<event id>/event.json          {"event": {...}, "targets": [sink...], "emitted_at": ts}
                                           (`EventFile`)
    pending/<event id>/sink.<name>.json    one sink's delivery state: attempts, next attempt,
                                           last error, delivered_at, expired_at
    delivered/<event id>/...               the same directory, moved here once every sink has it
```
Every write goes through `durable`:
- An event directory is built under a temporary name, fsynced, and renamed into `pending/`
  (then `pending/` is fsynced): it appears whole or not at all. That rename is the moment the
  event exists; no sink sees it before.
- A sink state file is replaced atomically (temporary file, fsync, rename, fsync directory).
- Moving a directory to `delivered/` is one rename, fsynced on both sides: the record that
  every sink has the event. An event is known (emit is a no-op) while its directory exists in
  either place; delivered directories are removed after `keep_delivered_s`.

The state directory is writable by the deploy side, so nothing here follows a symlink: every
directory and file is opened with O_NOFOLLOW relative to its parent's descriptor. The scanner
skips dot-directories, so `.outbox` is never taken for a repo.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from postdeploy import durable

OUTBOX = ".outbox"
PENDING = "pending"
DELIVERED = "delivered"
EVENT_FILE = "event.json"
STATE_PREFIX = "sink."
EVENT_ID_RE = re.compile(r"^[0-9a-f]{16,64}$")
DIR_MODE = 0o2750  # the daemon writes; its group (operators running `status`) reads
FILE_MODE = 0o640
STALE_TMP_S = 300.0  # a temporary entry this old is a leftover of a crash

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class SinkState:
    """One (event, sink) delivery, as stored in `sink.<name>.json`."""

    attempts: int = 0
    next_attempt_at: float | None = None  # epoch seconds; None: as soon as possible
    last_attempt_at: float | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    expired_at: float | None = None  # given up on (max_age_s): logged once, kept on disk

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkState:
        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        attempts = data.get("attempts")
        error = data.get("last_error")
        return cls(
            attempts=attempts if isinstance(attempts, int) and attempts >= 0 else 0,
            next_attempt_at=number("next_attempt_at"),
            last_attempt_at=number("last_attempt_at"),
            last_error=error if isinstance(error, str) else None,
            delivered_at=number("delivered_at"),
            expired_at=number("expired_at"),
        )


@dataclass(frozen=True)
class EventFile:
    """The content of `event.json`: the event, the sinks it is for, when it was emitted."""

    event: dict[str, Any]
    targets: list[str]
    emitted_at: float  # epoch seconds

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "targets": self.targets, "emitted_at": self.emitted_at}

    @classmethod
    def from_dict(cls, data: Any) -> EventFile:
        """Parse `event.json`; raises ValueError, TypeError or KeyError if it is malformed."""
        event, targets = data["event"], data["targets"]
        if not isinstance(event, dict) or not isinstance(targets, list):
            raise ValueError("event.json must hold an event object and a targets list")
        return cls(event, [str(t) for t in targets], float(data["emitted_at"]))


@dataclass
class Stored:
    """One event directory read back from `pending/`."""

    event_id: str
    event: dict[str, Any]
    targets: list[str]
    emitted_at: float
    states: dict[str, SinkState] = field(default_factory=dict)


def dumps(obj: Any) -> bytes:
    # default=str: an odd value in evidence must never cost the event.
    return json.dumps(obj, ensure_ascii=False, indent=1, default=str).encode() + b"\n"


def _read_json(dir_fd: int, name: str) -> Any:
    fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read(4 * 1024 * 1024))


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _open_subdir(parent: int, name: str, *, create: bool) -> int:
    if create:
        durable.mkdir_at(parent, name, DIR_MODE)
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


def state_file(sink: str) -> str:
    return f"{STATE_PREFIX}{sink}.json"


class Spool:
    """The `.outbox` directory below one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / OUTBOX

    @contextlib.contextmanager
    def _dirs(self, *, create: bool) -> Iterator[tuple[int, int]]:
        """Descriptors of `pending/` and `delivered/` (made when `create`)."""
        fds: list[int] = []
        try:
            fds.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            fds.append(_open_subdir(fds[0], OUTBOX, create=create))
            fds.append(_open_subdir(fds[1], PENDING, create=create))
            fds.append(_open_subdir(fds[1], DELIVERED, create=create))
            yield fds[2], fds[3]
        finally:
            for fd in fds:
                os.close(fd)

    @contextlib.contextmanager
    def _event_dir(self, event_id: str) -> Iterator[int]:
        with self._dirs(create=False) as (pending, _):
            fd = os.open(event_id, _DIR_FLAGS, dir_fd=pending)
            try:
                yield fd
            finally:
                os.close(fd)

    # -- writing ------------------------------------------------------------------------

    def write_event(self, event_id: str, record: EventFile) -> bool:
        """Create `pending/<id>/` holding `record`, durably; False if the id is already known."""
        if not EVENT_ID_RE.fullmatch(event_id):
            raise ValueError(f"invalid event id {event_id!r}")
        data = dumps(record.to_dict())
        with self._dirs(create=True) as (pending, delivered):
            if _exists(pending, event_id) or _exists(delivered, event_id):
                return False
            durable.write_dir_at(
                pending, event_id, {EVENT_FILE: data}, dir_mode=DIR_MODE, file_mode=FILE_MODE
            )
        return True

    def write_state(self, event_id: str, sink: str, state: SinkState) -> None:
        """Replace the delivery state of (`event_id`, `sink`), durably."""
        with self._event_dir(event_id) as fd:
            durable.write_atomic_at(fd, state_file(sink), dumps(state.to_dict()), FILE_MODE)

    def finish(self, event_id: str) -> None:
        """Move `pending/<id>/` to `delivered/<id>/`, durably."""
        with self._dirs(create=True) as (pending, delivered):
            if _exists(delivered, event_id) and not _exists(pending, event_id):
                return  # already done before a crash
            durable.move_at(pending, event_id, delivered)

    def prune_delivered(self, before: float) -> int:
        """Remove delivered events emitted before `before` (epoch seconds); returns how many."""
        removed = 0
        with self._dirs(create=True) as (_, delivered):
            for entry in os.scandir(delivered):
                if not EVENT_ID_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    fd = os.open(entry.name, _DIR_FLAGS, dir_fd=delivered)
                    try:
                        emitted = float(_read_json(fd, EVENT_FILE).get("emitted_at", 0))
                    finally:
                        os.close(fd)
                except (OSError, ValueError, TypeError, AttributeError):
                    emitted = entry.stat(follow_symlinks=False).st_mtime
                if emitted < before:
                    shutil.rmtree(entry.name, dir_fd=delivered)
                    removed += 1
        return removed

    def remove_stale_tmp(self) -> None:
        """Remove temporary entries left in `pending/` by a crash mid-write."""
        now = time.time()
        with self._dirs(create=True) as (pending, _):
            for entry in os.scandir(pending):
                if not durable.is_tmp_name(entry.name):
                    continue
                st = entry.stat(follow_symlinks=False)
                if now - st.st_mtime < STALE_TMP_S:
                    continue
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(entry.name, dir_fd=pending)
                    else:
                        os.unlink(entry.name, dir_fd=pending)

    # -- reading ------------------------------------------------------------------------

    def load(self) -> tuple[list[Stored], list[str]]:
        """Every pending event, and a problem line for each entry that could not be read."""
        try:
            with self._dirs(create=False) as (pending, _):
                return self._load_all(pending)
        except FileNotFoundError:
            return [], []  # no outbox yet

    def _load_all(self, pending: int) -> tuple[list[Stored], list[str]]:
        stored: list[Stored] = []
        problems: list[str] = []
        for entry in sorted(os.scandir(pending), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue  # a temporary entry
            if not EVENT_ID_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                problems.append(f"{self.path / PENDING / entry.name}: not an event directory")
                continue
            try:
                stored.append(self._load_one(pending, entry.name))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                problems.append(f"{self.path / PENDING / entry.name}: unreadable: {exc}")
        return stored, problems

    def _load_one(self, pending: int, event_id: str) -> Stored:
        fd = os.open(event_id, _DIR_FLAGS, dir_fd=pending)
        try:
            file = EventFile.from_dict(_read_json(fd, EVENT_FILE))
            stored = Stored(event_id, file.event, file.targets, file.emitted_at)
            for sink in stored.targets:
                try:
                    data = _read_json(fd, state_file(sink))
                except FileNotFoundError:
                    continue
                except (OSError, ValueError):
                    continue  # unreadable state: the delivery starts over (at-least-once)
                if isinstance(data, dict):
                    stored.states[sink] = SinkState.from_dict(data)
            return stored
        finally:
            os.close(fd)

    def known(self, event_id: str) -> bool:
        """Whether `event_id` is pending or delivered."""
        try:
            with self._dirs(create=False) as (pending, delivered):
                return _exists(pending, event_id) or _exists(delivered, event_id)
        except FileNotFoundError:
            return False
