"""Waiting on a work item from the outside: `postdeploy wait`, `arm --wait`, and the client
side of `postdeploy rollback`.

Everything here reads the state directory and nothing else, so it works for a user who may
only read it: no lock is taken and, but for `rollback.request`, nothing is written. Every
file is opened relative to the item directory's descriptor with O_NOFOLLOW (see layout), so
no symlink below the state directory is followed.

Waiting is not a busy loop: inotify watches the state directory, the repo directory and the
item directory as each appears, and each event only means "look again". The look itself is
the truth, and it is repeated at least every `POLL_S` even without an event, so a missed
event (a watch that could not be added, a directory replaced) costs at most that long.

The decisions (which exit code a `done` means, which rollback request is refused before it is
written, what a progress line says) are pure functions with table tests.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from postdeploy import layout
from postdeploy.layout import ItemKey, open_item_dir
from postdeploy.series import ProbeRow
from postdeploy.store import read_at

if TYPE_CHECKING:
    from inotify_simple import INotify

# Exit codes of `wait`, `arm --wait` and `rollback` (the contract's).
EXIT_OK = 0  # HEALTHY, or DEGRADED in shadow mode; ROLLBACK_OK
EXIT_DEGRADED = 1  # DEGRADED with any other action; ROLLBACK_FAILED or ROLLBACK_UNKNOWN
EXIT_USAGE = 2  # usage or config error, or a state directory that cannot be read
EXIT_NO_VERDICT = 3  # no verdict on this deploy (or a rollback refused)
EXIT_TIMEOUT = 124  # --timeout passed first (what coreutils' timeout(1) exits with)

POLL_S = 1.0  # look again at least this often, event or not
BAD_DONE_TRIES = 5  # a `done` that does not parse is re-read this many times ...
BAD_DONE_RETRY_S = 0.2  # ... this far apart, before giving up with exit 2
MAX_FILE_BYTES = 1024 * 1024  # `done`, `window.json`: far more than the daemon ever writes
MAX_LINE_BYTES = 4096  # `rejected`, `rollback.refused`: one line
DETAIL_CHARS = 160  # a failed tick's detail is cut to this in a progress line

# Statuses that are no verdict on the deploy at all: the caller should neither pass nor fail
# the deploy on them (exit 3).
NO_VERDICT = frozenset({"INCONCLUSIVE", "CANCELLED", "SUPERSEDED", "MISSED", "DISABLED", "ERROR"})
ROLLBACK_ACTIONS = frozenset({"ROLLBACK_OK", "ROLLBACK_FAILED", "ROLLBACK_UNKNOWN"})
MANUAL_ROLLBACK = "manual_rollback"  # the key the daemon adds to `done` after a person's rollback


# -- pure decisions -------------------------------------------------------------------------


def verdict_exit(done: Mapping[str, Any] | None, rejected: bool = False) -> int:
    """The exit code for a finished item: its `done` object, or `rejected`.

    0 HEALTHY, or DEGRADED with action SHADOW (nothing would have been run on it: the deploy
    goes on, as shadow mode promises); 1 DEGRADED with any other action; 3 for every other
    status and for `rejected`. An unknown or missing status is no verdict either (3): a
    pipeline must never pass on something it cannot read.
    """
    if done is None:
        return EXIT_NO_VERDICT if rejected else EXIT_USAGE
    status, action = done.get("status"), done.get("action_taken")
    if status == "HEALTHY":
        return EXIT_OK
    if status == "DEGRADED":
        return EXIT_OK if action == "SHADOW" else EXIT_DEGRADED
    return EXIT_NO_VERDICT


def outcome_line(done: Mapping[str, Any]) -> str:
    """The one-line outcome: `HEALTHY / NONE: reason`."""
    line = f"{done.get('status')} / {done.get('action_taken')}: {done.get('reason')}"
    manual = done.get(MANUAL_ROLLBACK)
    if isinstance(manual, dict):
        line += f" (then a person's rollback: {manual.get('action')})"
    return line


def outcome_json(key: ItemKey, done: Mapping[str, Any] | None, rejected: str | None) -> str:
    """`--json`: the `done` object plus `repo` and `work_item`; for a rejected sentinel,
    `{"status": "REJECTED", "rejected": true, "reason": ...}` plus the same two keys."""
    if done is not None:
        body: dict[str, Any] = dict(done)
    else:
        body = {"status": "REJECTED", "rejected": True, "reason": rejected}
    body.update(repo=key.repo, work_item=key.work_item)
    return json.dumps(body, ensure_ascii=False)


def progress_line(row: ProbeRow, max_ticks: int | None, failed_so_far: int) -> str:
    """One probed tick, for stderr: `tick 3/20: health ok (200, 12 ms), 5xx 0/2`.

    Ticks are numbered from 1 here (the last one is `max_ticks/max_ticks`); `series.jsonl`
    counts from 0. A failed tick says why, and the count of failed ticks so far."""
    of = f"/{max_ticks}" if max_ticks is not None else ""
    if row.health_ok:
        health = f"health ok ({row.health_code}, {row.latency_ms:.0f} ms)"
    elif row.health_code:
        health = f"health FAILED ({row.health_code}, {row.latency_ms:.0f} ms)"
    else:
        health = "health FAILED (no answer)"
    parts = [f"tick {row.tick + 1}{of}: {health}"]
    if row.total:
        parts.append(f"5xx {row.fivexx}/{row.total}")
    failing = sorted(name for name, c in row.checks.items() if c.get("ok") is False)
    if failing:
        parts.append("check " + ", ".join(failing) + " FAILED")
    text = ", ".join(parts)
    if row.catch_up:
        text += " (catch-up after a restart)"
    if row.inconclusive:
        text += " (inconclusive: the control probe failed too)"
    if row.failed:
        text += f"; {failed_so_far} failed so far: {row.detail[:DETAIL_CHARS]}"
    return text


def rollback_refusal(done: Mapping[str, Any] | None, present: Collection[str]) -> str | None:
    """Why a person's rollback is refused before the request is even written, or None.

    `present`: the names that exist in the item directory. The daemon makes the same checks
    (and answers with `rollback.refused`); these are the ones the CLI can already see.
    """
    if done is not None:
        status, action = done.get("status"), done.get("action_taken")
        if MANUAL_ROLLBACK in done:
            manual = done[MANUAL_ROLLBACK]
            action_run = manual.get("action") if isinstance(manual, dict) else manual
            return f"a person's rollback already ran ({action_run})"
        if action in ROLLBACK_ACTIONS:
            return f"the window was already rolled back ({action})"
        if status != "DEGRADED":
            return f"the window ended {status}, not DEGRADED: there is nothing to roll back"
    if layout.ROLLBACK_REQUEST in present:
        return "a rollback was already requested for this work item"
    if layout.ROLLBACK_INTENT in present:
        return "a rollback of this work item has already started"
    if done is None and layout.REJECTED in present:
        return "the sentinel was rejected: no window was started"
    if done is None and layout.ARMED not in present:
        return "the work item is not armed"
    return None


def rollback_answer(done: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """The daemon's answer to a rollback request, read from `done`: (exit code, line)."""
    if done is None:
        return None
    manual = done.get(MANUAL_ROLLBACK)
    if isinstance(manual, dict) and "action" in manual:
        action = str(manual["action"])
        detail = manual.get("detail") or manual.get("reason") or done.get("reason")
    elif done.get("action_taken") in ROLLBACK_ACTIONS:
        # An open window: the daemon ends it DEGRADED and rolls back as the window's own
        # reaction. Its `done` should carry `manual_rollback` too; if it does not, the
        # window's own rollback is still the answer.
        action = str(done["action_taken"])
        rollback = done.get("rollback")
        detail = rollback.get("detail") if isinstance(rollback, dict) else None
        detail = detail or done.get("reason")
    else:
        return None
    code = EXIT_OK if action == "ROLLBACK_OK" else EXIT_DEGRADED
    return code, f"rollback {action}: {detail}"


# -- reading the item -----------------------------------------------------------------------


class Unreadable(Exception):
    """A file the daemon writes atomically does not parse, or is not a regular file."""


def _kind_and_text(dfd: int, name: str, limit: int) -> tuple[str | None, bytes | None]:
    kind = layout.lstat_kind(dfd, name)
    if kind is None:
        return None, None
    if kind != "file":
        return kind, None
    try:
        return kind, read_at(dfd, name, limit)
    except FileNotFoundError:  # removed between the lstat and the open
        return None, None


def parse_object(name: str, data: bytes | None) -> dict[str, Any]:
    """A JSON object from `data`; Unreadable otherwise."""
    if data is None:
        raise Unreadable(f"{name} is not a regular file")
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise Unreadable(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{name} does not hold a JSON object")
    return value


def _line(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace").strip()


@dataclass
class SeriesTail:
    """Reads `series.jsonl` incrementally: only the bytes appended since the last read.

    Only complete lines are consumed; a torn last line (the daemon mid-append, or cut off
    after a crash) is read again next time. A row whose tick does not move forward is
    skipped (as the daemon's fold does), so a file read again from the start (replaced, or
    shorter than what was read) prints no row twice.
    """

    offset: int = 0
    last_tick: int = -1
    failed: int = 0  # probed ticks that failed so far

    def read(self, dfd: int) -> list[ProbeRow]:
        """The new complete rows, in order."""
        try:
            fd = os.open(
                layout.SERIES, layout.open_file_flags(os.O_RDONLY | os.O_NONBLOCK), dir_fd=dfd
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return []  # a symlink in its place: never followed, and the daemon won't either
            raise
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:
                self.offset = 0
            os.lseek(fd, self.offset, os.SEEK_SET)
            data = b""
            while len(data) < size - self.offset:
                chunk = os.read(fd, size - self.offset - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        complete, newline, _torn = data.rpartition(b"\n")
        if not newline:
            return []
        self.offset += len(complete) + 1
        rows = []
        for line in complete.split(b"\n"):
            try:
                raw = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                continue
            row = ProbeRow.from_dict(raw) if isinstance(raw, dict) else None
            if row is None or row.tick <= self.last_tick:
                continue
            self.last_tick = row.tick
            self.failed += row.failed
            rows.append(row)
        return rows


@dataclass
class Look:
    """One look at an item directory."""

    exists: bool = False  # the item directory exists
    armed: bool = False
    present: set[str] = field(default_factory=set)  # names that exist in the directory
    done: dict[str, Any] | None = None
    done_problem: str | None = None  # `done` exists but cannot be used (yet)
    rejected: str | None = None  # the reason, when `rejected` exists
    refused: str | None = None  # the reason, when `rollback.refused` exists
    max_ticks: int | None = None  # from window.json, once the daemon has written it
    rows: list[ProbeRow] = field(default_factory=list)  # new series rows since the last look


WATCHED_NAMES = (
    layout.ARMED,
    layout.DONE,
    layout.REJECTED,
    layout.WINDOW,
    layout.ROLLBACK_INTENT,
    layout.ROLLBACK_REQUEST,
    layout.ROLLBACK_REFUSED,
)


def look(root: Path, key: ItemKey, tail: SeriesTail | None = None) -> Look:
    """Read what matters of the item now. Raises UnsafePath (a symlink or a file where a
    directory belongs) and OSError (e.g. no permission); a missing item is `exists=False`."""
    result = Look()
    try:
        with open_item_dir(root, key) as dfd:
            result.exists = True
            result.present = {n for n in WATCHED_NAMES if layout.lstat_kind(dfd, n) is not None}
            result.armed = layout.ARMED in result.present
            if tail is not None:
                # The rows before `done`: the daemon appends every row before writing `done`.
                result.rows = tail.read(dfd)
            if layout.DONE in result.present:
                _, data = _kind_and_text(dfd, layout.DONE, MAX_FILE_BYTES)
                try:
                    result.done = parse_object(layout.DONE, data)
                except Unreadable as exc:
                    result.done_problem = str(exc)
            if layout.REJECTED in result.present:
                result.rejected = _line(_kind_and_text(dfd, layout.REJECTED, MAX_LINE_BYTES)[1])
            if layout.ROLLBACK_REFUSED in result.present:
                refused = _kind_and_text(dfd, layout.ROLLBACK_REFUSED, MAX_LINE_BYTES)[1]
                result.refused = _line(refused) or "refused by the daemon"
            if layout.WINDOW in result.present:
                with contextlib.suppress(Unreadable):
                    window = parse_object(layout.WINDOW, _kind_and_text(dfd, layout.WINDOW, -1)[1])
                    if isinstance(window.get("max_ticks"), int):
                        result.max_ticks = window["max_ticks"]
    except FileNotFoundError:
        pass  # not there yet (or removed): the caller waits
    return result


# -- waking up ------------------------------------------------------------------------------

# The watches of `Hints`: below the state directory, directories appear (CREATE, MOVED_TO);
# in the item directory, files appear (CREATE, MOVED_TO: the daemon renames `done` into
# place) and `series.jsonl` grows (MODIFY). ONLYDIR and DONT_FOLLOW: a watch never goes
# through a symlink by its last name; the watch is a hint only, and every read goes through
# the no-follow helpers. inotify_simple (and ctypes with it) is imported by `Hints` only:
# `look`, which `arm` and `cancel` use, watches nothing.


class Hints:
    """inotify watches on the state directory, the repo directory and the item directory,
    added as each appears. `wait` returns on an event or after `timeout`, whichever first;
    without inotify (none left, not allowed) it just sleeps."""

    def __init__(self, root: Path, key: ItemKey) -> None:
        from inotify_simple import INotify
        from inotify_simple import flags as F

        parent_mask = F.CREATE | F.MOVED_TO | F.ONLYDIR
        item_mask = F.CREATE | F.MOVED_TO | F.MODIFY | F.ONLYDIR | F.DONT_FOLLOW
        self._paths = [
            (str(root), parent_mask),  # the configured path: may itself be a symlink
            (str(root / key.repo), parent_mask | F.DONT_FOLLOW),
            (str(root / key.repo / key.work_item), item_mask),
        ]
        self._ignored = F.IGNORED
        self._wds: dict[int, int] = {}  # level -> watch descriptor
        try:
            self._inotify: INotify | None = INotify()
        except OSError:
            self._inotify = None

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def refresh(self) -> None:
        """Watch every level that exists now, outermost first (call before looking)."""
        if self._inotify is None:
            return
        for level, (path, mask) in enumerate(self._paths):
            if level in self._wds:
                continue
            try:
                self._wds[level] = self._inotify.add_watch(path, mask)
            except OSError:
                return  # not there (yet), not allowed, or no watches left: the poll covers it

    def wait(self, timeout: float) -> None:
        """Return on an event or after `timeout` seconds."""
        timeout = max(0.0, timeout)
        if self._inotify is None:
            time.sleep(timeout)
            return
        for event in self._inotify.read(timeout=int(timeout * 1000) + 1):
            if event.mask & self._ignored:  # the directory is gone: watch it again once it is back
                self._wds = {lv: wd for lv, wd in self._wds.items() if wd != event.wd}


# -- the waits ------------------------------------------------------------------------------


class _Clock:
    """The time left before `timeout` seconds from now (None: no limit)."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def nap(self, most: float) -> float:
        left = self.left()
        return most if left is None else max(0.0, min(most, left))


def _say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def _look(root: Path, key: ItemKey, err: TextIO, tail: SeriesTail | None = None) -> Look | None:
    """`look`, or None once the item cannot be read (a symlink or a file where a directory
    belongs, no permission), which is said on `err`: a wait then ends with exit 2."""
    try:
        return look(root, key, tail)
    except layout.UnsafePath as exc:
        _say(err, f"postdeploy: {key}: {exc}; it is never followed or watched")
    except OSError as exc:
        _say(err, f"postdeploy: cannot read {root / key.repo / key.work_item}: {exc}")
    return None


def _phase(seen: Look) -> str:
    if not seen.exists or not seen.armed:
        return "not armed yet"
    if layout.WINDOW not in seen.present:
        return "armed, not yet taken up by the daemon"
    of = f" of {seen.max_ticks}" if seen.max_ticks is not None else ""
    return f"window open: waiting for its ticks{of}"


def wait_for_verdict(
    root: Path,
    key: ItemKey,
    *,
    timeout: float | None,
    as_json: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Wait for the item's `done` or `rejected`, printing progress to `err` and the outcome
    to `out` (stderr and stdout by default); returns the exit code (see `verdict_exit`; 124
    on timeout, 2 on an error). A tick is shown out of `max_ticks` from `window.json`, which
    the daemon writes before the window's first tick."""
    out, err = out or sys.stdout, err or sys.stderr
    clock = _Clock(timeout)
    hints = Hints(root, key)
    tail = SeriesTail()
    phase, bad_done = "", 0
    try:
        while True:
            hints.refresh()  # before the look: whatever appears after it raises an event
            seen = _look(root, key, err, tail)
            if seen is None:
                return EXIT_USAGE
            if phase != _phase(seen):  # the first line comes once the watches are in place
                phase = _phase(seen)
                _say(err, f"{key}: {phase}")
            # The count as of each row (several may come in one read).
            failed_so_far = tail.failed - sum(row.failed for row in seen.rows)
            for row in seen.rows:
                failed_so_far += row.failed
                _say(err, progress_line(row, seen.max_ticks, failed_so_far))
            if seen.done is not None:
                _say(
                    out, outcome_json(key, seen.done, None) if as_json else outcome_line(seen.done)
                )
                return verdict_exit(seen.done)
            if seen.done_problem is not None:
                bad_done += 1
                if bad_done >= BAD_DONE_TRIES:
                    path = root / key.repo / key.work_item / layout.DONE
                    _say(err, f"postdeploy: {path}: {seen.done_problem}")
                    return EXIT_USAGE
                time.sleep(clock.nap(BAD_DONE_RETRY_S))
            elif seen.rejected is not None:
                text = outcome_json(key, None, seen.rejected) if as_json else None
                _say(out, text or f"REJECTED: {seen.rejected}")
                return verdict_exit(None, rejected=True)
            left = clock.left()
            if left is not None and left <= 0:
                _say(err, f"postdeploy: {key}: no verdict within {timeout:g}s")
                return EXIT_TIMEOUT
            if seen.done_problem is None:
                hints.wait(clock.nap(POLL_S))
    finally:
        hints.close()


def requested_by() -> str:
    """Who asks: the person behind sudo, else the login name, else the uid's name."""
    for name in ("SUDO_USER", "USER"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def write_request(dfd: int, body: dict[str, Any]) -> bool:
    """Create `rollback.request` in the item directory `dfd`, exclusively and durably.
    False if it already exists (someone else asked first)."""
    flags = layout.open_file_flags(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(layout.ROLLBACK_REQUEST, flags, 0o644, dir_fd=dfd)
    except FileExistsError:
        return False
    try:
        data = json.dumps(body, ensure_ascii=False).encode() + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dfd)
    return True


def poke(root: Path, key: ItemKey) -> None:
    """Tell the daemon about a request: an empty `<root>/.requests/<repo>~<item>` (see
    `layout.REQUESTS_DIR`); nothing is followed through a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    root_fd = os.open(root, flags)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(layout.REQUESTS_DIR, 0o2775, dir_fd=root_fd)
        requests_fd = os.open(layout.REQUESTS_DIR, flags, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        name = f"{key.repo}~{key.work_item}"
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o664, dir_fd=requests_fd
        )
        os.close(fd)
    finally:
        os.close(requests_fd)


def request_rollback(
    root: Path,
    key: ItemKey,
    *,
    reason: str,
    timeout: float | None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`postdeploy rollback`: refuse what can already be seen, else write the request and
    wait for the daemon's answer (the answer on `out`, the rest on `err`: stdout and stderr
    by default). Exit 0 ROLLBACK_OK, 1 FAILED or UNKNOWN, 3 refused, 124 timeout, 2 no such
    item (or unreadable)."""
    out, err = out or sys.stdout, err or sys.stderr
    path = root / key.repo / key.work_item
    try:
        seen = look(root, key)
        if not seen.exists:
            _say(err, f"postdeploy: {key}: no such work item in {root}")
            return EXIT_USAGE
        if seen.done_problem is not None:
            _say(err, f"postdeploy: {path / layout.DONE}: {seen.done_problem}")
            return EXIT_USAGE
        refusal = rollback_refusal(seen.done, seen.present)
        if refusal is None and seen.refused is not None:
            refusal = seen.refused
        if refusal is not None:
            _say(err, f"postdeploy: rollback of {key} refused: {refusal}")
            return EXIT_NO_VERDICT
        body = {"reason": reason, "requested_by": requested_by(), "at": time.time()}
        with open_item_dir(root, key) as dfd:
            written = write_request(dfd, body)
    except layout.UnsafePath as exc:
        _say(err, f"postdeploy: {key}: {exc}; it is never followed")
        return EXIT_USAGE
    except OSError as exc:
        _say(err, f"postdeploy: cannot request the rollback of {key}: {exc}")
        return EXIT_USAGE
    if not written:
        _say(err, f"postdeploy: rollback of {key} refused: someone else asked first")
        return EXIT_NO_VERDICT
    try:
        poke(root, key)
    except OSError as exc:
        _say(
            err,
            f"postdeploy: warning: cannot notify the daemon ({root / layout.REQUESTS_DIR}: "
            f"{exc}); it finds the request at its next rescan",
        )
    _say(
        err, f"{key}: rollback requested ({path / layout.ROLLBACK_REQUEST}); waiting for the daemon"
    )
    return _wait_for_answer(root, key, timeout=timeout, out=out, err=err)


def _wait_for_answer(
    root: Path, key: ItemKey, *, timeout: float | None, out: TextIO, err: TextIO
) -> int:
    clock = _Clock(timeout)
    hints = Hints(root, key)
    try:
        while True:
            hints.refresh()
            seen = _look(root, key, err)
            if seen is None:
                return EXIT_USAGE
            answer = rollback_answer(seen.done)
            if answer is not None:
                _say(out, answer[1])
                return answer[0]
            if seen.refused is not None:
                _say(err, f"postdeploy: rollback of {key} refused: {seen.refused}")
                return EXIT_NO_VERDICT
            left = clock.left()
            if left is not None and left <= 0:
                _say(
                    err, f"postdeploy: {key}: no answer to the rollback request within {timeout:g}s"
                )
                return EXIT_TIMEOUT
            hints.wait(clock.nap(POLL_S))
    finally:
        hints.close()
