"""A repo's baseline samples: `<state_dir>/<repo>/.baseline.jsonl`.

The baseline task (`sampler.py`) probes a repo while none of its windows is open and appends
one row per probe here, so a window can later be compared with what normal looked like
before its deploy. The file is append-only JSON Lines like a window's `series.jsonl`: each row
is appended whole and fsynced, a torn last line (a crash mid-append) is skipped when read and
never glued to the next row. It is bounded: once enough rows are older than `baseline_keep_s`,
the file is rewritten atomically with the recent rows only.

A row is a `baseline.BaselineRow` (its JSON form is defined there, with the pure rules that
judge a window against the rows). The functions that decide here (`parse`, `recent`,
`due_for_compaction`) are pure; `SampleFile` does the blocking I/O (callers run it in a
worker thread), relative to the repo directory's descriptor and never through a symlink.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from postdeploy import layout
from postdeploy.baseline import BaselineRow, kept, parse_rows
from postdeploy.durable import append_lines_at, mkdir_at, write_atomic_at
from postdeploy.store import dump_line, parse_json_lines, read_at

BASELINE = ".baseline.jsonl"

# Rewrite the file once this share of its rows (and at least COMPACT_MIN) have expired: the
# file stays within ~1.25x of what `baseline_keep_s` holds, and a rewrite is rare.
COMPACT_SHARE = 4
COMPACT_MIN = 32
# However short the interval, the file never holds more rows than this.
MAX_ROWS = 20_000
# A larger file is not read whole (a window reads this file at its start).
MAX_BYTES = 64 * 1024 * 1024


def parse(data: bytes) -> list[BaselineRow]:
    """The valid rows of a baseline file, oldest first; bad and torn lines count for nothing."""
    return read_rows(data)[0]


def read_rows(data: bytes) -> tuple[list[BaselineRow], bool]:
    """The valid rows, oldest first, and whether anything else was there (bad lines, a torn
    last line, rows that are not baseline rows): a file to rewrite with its rows alone."""
    lines = parse_json_lines(data)
    rows, skipped = parse_rows(lines.rows)
    untidy = bool(lines.bad_lines or lines.torn_bytes or skipped)
    return sorted(rows, key=lambda row: row.ts), untidy


def recent(rows: Sequence[BaselineRow], now: float, keep_s: float) -> list[BaselineRow]:
    """The rows still within `keep_s` of `now` (at most MAX_ROWS, the newest)."""
    return kept(rows, now, keep_s)[-MAX_ROWS:]


def due_for_compaction(total: int, expired: int) -> bool:
    """Whether a file of `total` rows, `expired` of them too old, should be rewritten."""
    return expired >= max(COMPACT_MIN, total // COMPACT_SHARE) or total > MAX_ROWS


class SampleFile:
    """The blocking reads and writes of one repo's baseline file."""

    def __init__(self, root: Path, repo: str) -> None:
        if not layout.valid_name(repo):
            raise layout.UnsafePath(f"invalid repo name {repo!r}")
        self.root = root
        self.repo = repo

    def _repo_fd(self, *, create: bool) -> int:
        """A descriptor of the repo's directory (made if `create`), refusing a symlink."""
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if create:
                mkdir_at(root_fd, self.repo, 0o775)
            flags = layout.open_file_flags(os.O_RDONLY | os.O_DIRECTORY)
            return os.open(self.repo, flags, dir_fd=root_fd)
        finally:
            os.close(root_fd)

    def load(self) -> list[BaselineRow]:
        """Every valid row, oldest first; none when the file or the repo directory is missing.

        Raises OSError when the file cannot be read (not a regular file, an I/O error)."""
        return self.load_checked()[0]

    def load_checked(self) -> tuple[list[BaselineRow], bool]:
        """`load`, and whether the file holds more than its rows (see `read_rows`), or is
        larger than MAX_BYTES (only that much is read): then it should be rewritten."""
        try:
            repo_fd = self._repo_fd(create=False)
        except FileNotFoundError:
            return [], False
        try:
            data = read_at(repo_fd, BASELINE, limit=MAX_BYTES + 1)
        finally:
            os.close(repo_fd)
        if data is None:
            return [], False
        rows, untidy = read_rows(data[:MAX_BYTES])
        return rows, untidy or len(data) > MAX_BYTES

    def append(self, row: BaselineRow) -> None:
        """Append one row and fsync it (all or nothing)."""
        repo_fd = self._repo_fd(create=True)
        try:
            append_lines_at(repo_fd, BASELINE, dump_line(row.to_dict()), sync=True)
        finally:
            os.close(repo_fd)

    def rewrite(self, rows: Sequence[BaselineRow]) -> None:
        """Replace the file atomically with `rows` (a crash leaves the old file or the new)."""
        repo_fd = self._repo_fd(create=True)
        try:
            write_atomic_at(repo_fd, BASELINE, b"".join(dump_line(r.to_dict()) for r in rows))
        finally:
            os.close(repo_fd)
