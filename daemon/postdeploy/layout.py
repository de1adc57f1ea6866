"""Where files live in the state directory, the name rules, and parsing of `armed`.

The state directory is the daemon's only API, so it is treated as untrusted input:
`<state_dir>/<repo>/<work_item>/` where both names match `NAME_RE`. Directories are opened
one level at a time with `O_NOFOLLOW`, and files are opened relative to the item directory's
descriptor with `O_NOFOLLOW`, so no symlink anywhere below the state directory is followed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
META_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_ARMED_BYTES = 64 * 1024
SEED_ARMED_TEXT = "armed"  # the seed's writer's `armed` content: no metadata

# Files of one work item's directory.
ARMED = "armed"  # written by the deploy side
CANCEL = "cancel"  # written by an operator
SERIES = "series.jsonl"  # probe rows, append-only
WINDOW = "window.json"  # the window's start, recorded the first time the daemon sees it
ROLLBACK_INTENT = "rollback.intent"  # written durably before the rollback command starts
ROLLBACK_RESULT = "rollback.json"  # the rollback command's outcome
ROLLBACK_LOG = "rollback.log"  # the rollback command's stdout and stderr
VERIFY = "verify.jsonl"  # probe rows after a rollback, confirming recovery
# The repo's baseline rows this window is compared with, copied from the repo's
# `.baseline.jsonl` when the window is first loaded: a restart compares with the same rows.
BASELINE = "baseline.jsonl"
REPORT = "report.md"
TIMELINE = "timeline.svg"  # the window's picture, written with report.md (which embeds it)
DONE = "done"  # written last: the window is finished for good
REJECTED = "rejected"  # written instead of starting a window
ROLLBACK_REQUEST = "rollback.request"  # written by `postdeploy rollback`: a person asks
ROLLBACK_REFUSED = "rollback.refused"  # the daemon's answer when it will not roll back
# `<state_dir>/.requests/<repo>~<work_item>`: `postdeploy rollback` leaves one here after it
# wrote the request, so the daemon learns of it at once, even for a finished window whose
# directory it no longer watches ("~" is in no valid name, so the split is unambiguous).
REQUESTS_DIR = ".requests"

KNOWN_META_KEYS = ("branch", "commit", "image", "deployed_by", "url", "mode")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def valid_name(name: str) -> bool:
    """Whether `name` is a valid repo or work item name."""
    return NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True, order=True)
class ItemKey:
    """Identifies one work item: `<repo>/<work_item>`."""

    repo: str
    work_item: str

    def __str__(self) -> str:
        return f"{self.repo}/{self.work_item}"


class UnsafePath(Exception):
    """A path below the state directory is not a plain directory or file (e.g. a symlink)."""


@contextmanager
def open_item_dir(
    root: Path, key: ItemKey, *, create: bool = False, root_fd: int | None = None
) -> Iterator[int]:
    """Yield a descriptor of `root/repo/work_item`, refusing symlinks at each level.

    With `create`, missing levels are made (mode 2775, so a deploy group keeps access).
    `root_fd`: `root` already open (it is not closed). Raises UnsafePath for a symlink or
    non-directory, FileNotFoundError if missing.
    """
    if not (valid_name(key.repo) and valid_name(key.work_item)):
        raise UnsafePath(f"invalid name {key}")
    fds: list[int] = []
    try:
        if root_fd is None:
            fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        parent = root_fd if root_fd is not None else fds[-1]
        for name in (key.repo, key.work_item):
            fds.append(_open_subdir(parent, name, create=create))
            parent = fds[-1]
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _open_subdir(parent: int, name: str, *, create: bool) -> int:
    if create:
        try:
            os.mkdir(name, 0o2775, dir_fd=parent)
            os.chmod(name, 0o2775, dir_fd=parent, follow_symlinks=False)
        except FileExistsError:
            pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{name} is not a plain directory (symlink or file)") from None
        raise


def open_file_flags(flags: int) -> int:
    """Add the flags every file open below the state directory uses."""
    return flags | os.O_NOFOLLOW | os.O_CLOEXEC


def has_cancel(repo_fd: int, item: str) -> bool:
    """Whether `<item>/cancel` exists below the repo directory `repo_fd` (any kind of entry;
    nothing is followed or read)."""
    try:
        os.lstat(f"{item}/{CANCEL}", dir_fd=repo_fd)
    except OSError:
        return False
    return True


def lstat_kind(dir_fd: int, name: str) -> str | None:
    """'file', 'dir', 'symlink' or 'other' for `name` in `dir_fd`; None if it does not exist."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "other"


class ArmedError(ValueError):
    """The content of `armed` is not acceptable; the message is the `rejected` reason."""


def parse_armed(data: bytes) -> dict[str, str]:
    """Parse the content of `armed` into metadata; raises ArmedError with the reason.

    Empty or whitespace-only content, or the exact text `armed` (what the seed's own writer
    puts there, with or without a trailing newline), means no metadata. Otherwise a JSON object of
    at most 64 KiB whose keys match META_KEY_RE and whose values are strings.
    """
    if len(data) > MAX_ARMED_BYTES:
        raise ArmedError(f"armed is {len(data)} bytes, more than {MAX_ARMED_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArmedError(f"armed is not UTF-8: {exc}") from None
    if not text.strip() or text.rstrip("\r\n") == SEED_ARMED_TEXT:
        return {}  # nothing, or what the seed's own writer puts there
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ArmedError(f"armed is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArmedError(f"armed must hold a JSON object, not {type(value).__name__}")
    for key, item in value.items():
        if not META_KEY_RE.fullmatch(key):
            raise ArmedError(f"metadata key {key!r} must match {META_KEY_RE.pattern}")
        if not isinstance(item, str):
            raise ArmedError(
                f"metadata value of {key!r} must be a string, not {type(item).__name__}"
            )
        if "\0" in item:
            raise ArmedError(f"metadata value of {key!r} contains a NUL character")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ArmedError(f"metadata value of {key!r} is not valid Unicode text") from None
    mode = value.get("mode")
    if mode is not None and mode not in ("act", "shadow"):
        raise ArmedError(f"metadata mode {mode!r} must be 'act' or 'shadow'")
    return value
