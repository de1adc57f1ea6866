"""Finished windows: an index so that none is looked at again, and their removal (retention).

A finished window (`done` in its directory) never changes again, yet without an index every
rescan, every start-up and every `postdeploy status` would list and open all of them: with
20,000 on disk READY took 2.3 s and an idle daemon used 2.8 % of a core. So:

- **The index.** Each repo directory holds a journal, `<state_dir>/<repo>/.finished.tsv`:
  one line per finished window (its name, its directory's identity, its `armed` time, and
  the few `done` fields `status` shows; see `Record`). The daemon appends a line when it
  sees a window finished (its own runner ending, or a look at a directory with `done`). It
  is a cache, not the truth: a missing, torn or corrupt journal costs one look at each
  directory it lacks, which appends the lines again; it never loses a window.
- **Identity.** A directory can be deleted and made again under the same name to arm a new
  deploy. An entry therefore only counts while the directory under that name is the same one:
  same device, inode and ctime (`DirId`). The ctime catches an inode number reused at once by
  the new directory; anything that changes it in a finished directory (a file added later)
  costs one more look, which records the window again.
- **Listings.** A repo directory is listed again only when its own mtime or identity changed
  since the last listing (an item directory was added, removed or renamed), and then each
  entry is checked with one `lstat` against the index. What is not finished (open windows,
  directories not armed yet, rejected ones) is remembered per repo (`Listing.live`) and
  handed to intake on every rescan as before. Coarse file-system timestamps: a directory
  changed less than `TRUST_S` before it was listed is listed again on the next rescan, so a
  change in the same clock tick as the listing is never missed. The hourly sweep lists
  everything again anyway.
- **Retention.** `retention_days` (0: keep forever) removes finished windows whose
  `finished_at` is older: the whole item directory, entry by entry through a descriptor of
  it (`O_NOFOLLOW`; a symlink inside is removed, never followed). A directory that is no
  longer the indexed one, has no `done`, or holds a subdirectory is left alone and logged.

The decisions (`parse_journal`, `due_for_removal`, `sweep_every_s`, `trusted`, `pending`) are
pure and table-tested; the blocking functions below them run in worker threads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from postdeploy import layout
from postdeploy.durable import append_lines_at, write_atomic_at
from postdeploy.layout import NAME_RE, ItemKey, valid_name
from postdeploy.store import read_at

JOURNAL = ".finished.tsv"  # hidden: scans, inotify and intake skip it
SWEEP_EVERY_S = 3600.0  # retention sweeps (and full listings) at most this far apart
MIN_SWEEP_EVERY_S = 1.0  # a tiny retention (tests) sweeps at most this often
SWEEP_BATCH = 100  # item directories removed per worker-thread hop
TRUST_S = 2.0  # a directory changed this recently may change again unseen in the same tick
# The `done` fields kept in the journal: what `postdeploy status` shows of a finished window.
DONE_FIELDS = ("status", "action_taken", "finished_at", "reason", "checks_total", "checks_failed")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

DirId = tuple[int, int, int]  # (st_dev, st_ino, st_ctime_ns) of an item directory


def dir_id(st: os.stat_result) -> DirId:
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class Record(NamedTuple):
    """One finished window, as a journal line holds it.

    A line is tab-separated, so that reading 20,000 of them costs a split each rather than a
    JSON parse (about 0.3 s against 0.06 s): `work_item, dev, ino, ctime_ns, armed_at,
    finished_ts, sort_key, done`, `-` for a missing number or `done`. `sort_key` is
    `done.finished_at` as `status` sorts by it; `done` is the JSON of the DONE_FIELDS,
    parsed only for the windows `status` shows. Neither can hold a raw tab or newline: JSON
    escapes them, and a `sort_key` holding one is written as a JSON string."""

    work_item: str
    dir_id: DirId
    armed_at: float | None  # `armed`'s mtime: a finished window still counts for supersede
    finished_ts: float | None  # `done.finished_at` in epoch seconds; None if unreadable
    sort_key: str  # str(done.finished_at or ""): the order `status` lists windows in
    done_json: str | None  # JSON of DONE_FIELDS of `done`; None if `done` is unreadable

    @property
    def done(self) -> dict[str, Any] | None:
        """The DONE_FIELDS of `done`, or None (unreadable, or a corrupt journal column)."""
        if self.done_json is None:
            return None
        try:
            value = json.loads(self.done_json)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def to_line(self) -> bytes:
        key = self.sort_key
        if key.startswith('"') or any(c in key for c in "\t\n\r"):
            key = json.dumps(key)
        fields = (
            self.work_item,
            *(str(x) for x in self.dir_id),
            _num(self.armed_at),
            _num(self.finished_ts),
            key,
            self.done_json if self.done_json is not None else "-",
        )
        return "\t".join(fields).encode() + b"\n"

    @staticmethod
    def from_line(raw: bytes) -> Record | None:
        """The record of a journal line (without its newline), or None if it is not one."""
        try:
            fields = raw.decode("utf-8").split("\t", 7)
            name, dev, ino, ctime, armed_at, finished, key, done = fields
            # The name is not checked against NAME_RE here (a third of the cost): an entry
            # only ever counts when a listed, valid item directory has its name.
            if not (dev.isdigit() and ino.isdigit() and ctime.isdigit()):
                return None
            if key.startswith('"'):
                key = json.loads(key)
                if not isinstance(key, str):
                    return None
            return Record(
                name,
                (int(dev), int(ino), int(ctime)),
                _parse_num(armed_at),
                _parse_num(finished),
                key,
                None if done == "-" else done,
            )
        except (ValueError, RecursionError):  # UnicodeDecodeError, too few fields, bad float
            return None


def _num(x: float | None) -> str:
    return "-" if x is None else repr(float(x))


def _parse_num(text: str) -> float | None:
    if text == "-":
        return None
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is not a finite number")
    return x


class Entry(NamedTuple):
    """What the daemon keeps in memory of a finished window (a Record without `done`)."""

    dir_id: DirId
    armed_at: float | None
    finished_ts: float | None


def finished_ts(value: object) -> float | None:
    """`done.finished_at` (ISO 8601) as epoch seconds; None if it is not a valid time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # the daemon always writes an offset; a naive time is not ours
    return moment.timestamp()


def record_from_done(
    work_item: str, did: DirId, armed_at: float | None, done: bytes | None
) -> Record:
    """The record of a finished window from its `done` file's content (None: unreadable)."""
    value: Any = None
    if done is not None:
        try:
            value = json.loads(done)
        except (ValueError, RecursionError):
            value = None
    if not isinstance(value, dict):
        return Record(work_item, did, armed_at, None, "", None)
    kept = {k: value.get(k) for k in DONE_FIELDS}
    return Record(
        work_item,
        did,
        armed_at,
        finished_ts(value.get("finished_at")),
        str(value.get("finished_at") or ""),
        json.dumps(kept),  # ASCII only: no raw tab or newline can be in it
    )


# -- decisions (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Journal:
    """What a journal held: the latest record of each work item, and whether it needs a
    rewrite (torn or bad lines, or records repeated or superseded)."""

    records: dict[str, Record]
    untidy: bool


def parse_journal(data: bytes) -> Journal:
    """Parse a journal; the last line about a work item wins; pure."""
    complete, _, tail = data.rpartition(b"\n")
    records: dict[str, Record] = {}
    untidy = bool(tail)  # a torn last line (a crash mid-append)
    for raw in complete.split(b"\n") if complete else ():
        record = Record.from_line(raw)
        if record is None:
            untidy = True
            continue
        if record.work_item in records:
            untidy = True
        records[record.work_item] = record
    return Journal(records, untidy)


def due_for_removal(entries: Mapping[str, Entry], now: float, retention_days: float) -> list[str]:
    """The work items whose window finished more than `retention_days` ago, oldest first;
    none with 0 (keep forever) or an unknown finishing time; pure."""
    if retention_days <= 0:
        return []
    cutoff = now - retention_days * 86400.0
    due = [
        (e.finished_ts, name)
        for name, e in entries.items()
        if e.finished_ts is not None and e.finished_ts < cutoff
    ]
    return [name for _, name in sorted(due)]


def sweep_every_s(retention_days: float) -> float:
    """How often the retention sweep runs: hourly, or twice per retention period when that
    is shorter (so a window stays at most 1.5 periods), but not more than once a second."""
    if retention_days <= 0:
        return SWEEP_EVERY_S
    return max(MIN_SWEEP_EVERY_S, min(SWEEP_EVERY_S, retention_days * 86400.0 / 2))


def trusted(mtime_ns: int, listed_at: float) -> bool:
    """Whether a listing of a directory whose mtime was `mtime_ns` (read just before the
    listing began at wall time `listed_at`) can stand while the mtime stays the same.

    File-system timestamps are coarse (a clock tick, several ms): a change in the same tick
    as the listing leaves the mtime as it was. A directory changed `TRUST_S` or less before
    the listing is therefore listed again next time."""
    return listed_at - mtime_ns / 1e9 > TRUST_S


def pending(live: Iterable[str], finished: Mapping[str, object]) -> list[str]:
    """The names of a listing intake should look at: those not indexed as finished; pure."""
    return [name for name in live if name not in finished]


# -- listing (blocking) ---------------------------------------------------------------------


@dataclass
class Listing:
    """A repo directory's last listing: what stands while its mtime and identity do."""

    repo_id: tuple[int, int]  # (st_dev, st_ino) of the repo directory
    mtime_ns: int
    live: set[str]  # item directories that were not finished (indexed) then
    trusted: bool


@dataclass
class RepoScan:
    """One repo directory looked at by `scan`."""

    repo: str
    listing: Listing | None  # None: not listed again (the cached listing stands)
    seen: dict[str, DirId] = field(default_factory=dict)  # when listed: each item directory
    stale: list[str] = field(default_factory=list)  # index entries that no longer match


@dataclass
class Scan:
    """What a rescan found."""

    repos: list[RepoScan] = field(default_factory=list)
    present: set[str] = field(default_factory=set)  # every repo directory that is there
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what is wrong)
    cancelled: list[ItemKey] = field(default_factory=list)  # of those asked about
    only_repo: str | None = None  # the scan looked at this repo only


def _entry_problem(entry: os.DirEntry[str]) -> tuple[str | None, os.stat_result | None]:
    """What is wrong with an entry (None: a plain, well-named directory; "": a hidden entry,
    skipped silently) and its lstat."""
    if entry.name.startswith("."):
        return "", None
    if not valid_name(entry.name):
        return f"name does not match {NAME_RE.pattern}", None
    st = entry.stat(follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink; symlinks are never followed", st
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory", st
    return None, st


class Indexed(Protocol):
    """An index entry as `scan` needs it: an `Entry` (the daemon) or a `Record` (status)."""

    @property
    def dir_id(self) -> DirId: ...


def scan(
    root: Path,
    listings: Mapping[str, Listing],
    index: Mapping[str, Mapping[str, Indexed]],
    only_repo: str | None = None,
    watched: frozenset[ItemKey] = frozenset(),
) -> Scan:
    """Look at the state directory (blocking; run in a thread): each repo directory whose
    listing no longer stands is listed again, its items checked against the `index`; which
    of the `watched` items hold a `cancel` file. Reads `listings` and `index`, never
    changes them (the event loop does, with `History.merge`)."""
    found = Scan(only_repo=only_repo)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    watched_by_repo: dict[str, list[str]] = {}
    for key in watched:
        watched_by_repo.setdefault(key.repo, []).append(key.work_item)
    try:
        for repo in os.scandir(root_fd):
            if only_repo is not None and repo.name != only_repo:
                continue
            problem, st = _entry_problem(repo)
            if problem is not None:
                if problem:
                    found.problems.append((str(root / repo.name), problem))
                continue
            assert st is not None
            found.present.add(repo.name)
            old = listings.get(repo.name)
            same = (
                old is not None
                and old.trusted
                and old.repo_id == (st.st_dev, st.st_ino)
                and old.mtime_ns == st.st_mtime_ns
            )
            if same and repo.name not in watched_by_repo:
                found.repos.append(RepoScan(repo.name, None))
                continue
            try:
                repo_fd = os.open(repo.name, _DIR_FLAGS, dir_fd=root_fd)
            except OSError as exc:
                found.problems.append((str(root / repo.name), f"cannot be opened: {exc}"))
                continue
            try:
                if same:
                    found.repos.append(RepoScan(repo.name, None))
                else:
                    found.repos.append(
                        _list_repo(root, repo.name, repo_fd, index.get(repo.name, {}), found)
                    )
                for item in watched_by_repo.get(repo.name, ()):
                    if layout.has_cancel(repo_fd, item):
                        found.cancelled.append(ItemKey(repo.name, item))
            finally:
                os.close(repo_fd)
    finally:
        os.close(root_fd)
    return found


def _list_repo(
    root: Path, repo: str, repo_fd: int, finished: Mapping[str, Indexed], found: Scan
) -> RepoScan:
    # The directory's own stat before the listing: a change during it makes the mtime newer.
    st = os.fstat(repo_fd)
    listed_at = time.time()
    result = RepoScan(repo, None)
    live: set[str] = set()
    with os.scandir(repo_fd) as entries:
        for item in entries:
            try:
                problem, ist = _entry_problem(item)
            except FileNotFoundError:
                continue  # removed while we listed
            if problem is None:
                assert ist is not None
                did = dir_id(ist)
                result.seen[item.name] = did
                entry = finished.get(item.name)
                if entry is None or entry.dir_id != did:
                    live.add(item.name)
            elif problem:
                found.problems.append((str(root / repo / item.name), problem))
    result.stale = [
        name for name, entry in list(finished.items()) if result.seen.get(name) != entry.dir_id
    ]
    result.listing = Listing(
        (st.st_dev, st.st_ino), st.st_mtime_ns, live, trusted(st.st_mtime_ns, listed_at)
    )
    return result


# -- the journal (blocking) -----------------------------------------------------------------


def _open_repo(root: Path, repo: str) -> int:
    """A descriptor of `root/repo`, refusing a symlink (raises OSError / UnsafePath)."""
    if not valid_name(repo):
        raise layout.UnsafePath(f"invalid repo name {repo!r}")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(repo, _DIR_FLAGS, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def read_journal(root: Path, repo: str) -> Journal:
    """The repo's journal; an empty one if it is missing or not a regular file."""
    try:
        repo_fd = _open_repo(root, repo)
    except (OSError, layout.UnsafePath):
        return Journal({}, False)
    try:
        data = read_at(repo_fd, JOURNAL)
    except OSError:
        return Journal({}, True)  # not a regular file: rewritten (replaced) by the daemon
    finally:
        os.close(repo_fd)
    return parse_journal(data) if data is not None else Journal({}, False)


def read_journals(root: Path) -> dict[str, Journal]:
    """Every repo's journal (blocking)."""
    journals: dict[str, Journal] = {}
    try:
        names = [e.name for e in os.scandir(root) if valid_name(e.name)]
    except FileNotFoundError:
        return journals
    for repo in names:
        journal = read_journal(root, repo)
        if journal.records or journal.untidy:
            journals[repo] = journal
    return journals


def look_finished(root: Path, keys: Sequence[ItemKey]) -> list[tuple[ItemKey, Record]]:
    """Records of windows that just finished (blocking): each directory's identity, `armed`
    mtime and `done`. A directory that is gone, not a plain directory or without a regular
    `done` gives none (the next rescan looks at it as at any other)."""
    records: list[tuple[ItemKey, Record]] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for key in keys:
            with (
                contextlib.suppress(OSError, layout.UnsafePath),
                layout.open_item_dir(root, key, root_fd=root_fd) as dfd,
            ):
                if layout.lstat_kind(dfd, layout.DONE) == "file":
                    records.append((key, look_record(key.work_item, dfd)))
    finally:
        os.close(root_fd)
    return records


def look_record(work_item: str, dfd: int) -> Record:
    """The record of the finished window whose directory is open as `dfd` (blocking)."""
    did = dir_id(os.fstat(dfd))
    try:
        armed = os.lstat(layout.ARMED, dir_fd=dfd)
        armed_at = armed.st_mtime if stat.S_ISREG(armed.st_mode) else None
    except FileNotFoundError:
        armed_at = None
    try:
        done = read_at(dfd, layout.DONE, limit=1024 * 1024)
    except OSError:
        done = None
    return record_from_done(work_item, did, armed_at, done)


class JournalWriter:
    """Appends and rewrites of the journals, one at a time (a rewrite must not lose a line
    appended meanwhile). Blocking; called from worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def append(self, repo: str, records: Sequence[Record]) -> None:
        """Append lines (one write, not fsynced: the journal is a cache)."""
        data = b"".join(r.to_line() for r in records)
        with self._lock:
            repo_fd = _open_repo(self.root, repo)
            try:
                append_lines_at(repo_fd, JOURNAL, data, sync=False)
            finally:
                os.close(repo_fd)

    def compact(self, repo: str, keep: Mapping[str, DirId]) -> None:
        """Rewrite the journal atomically with one line per window still indexed (`keep`:
        work item -> directory identity); a window whose line is lost is simply not in it
        (the next start-up looks at its directory once and records it again)."""
        with self._lock:
            try:
                repo_fd = _open_repo(self.root, repo)
            except FileNotFoundError:
                return  # the repo directory is gone, and its journal with it
            try:
                try:
                    data = read_at(repo_fd, JOURNAL) or b""
                except OSError:
                    data = b""  # not a regular file: replaced below
                records = parse_journal(data).records
                kept = [r for name, r in records.items() if keep.get(name) == r.dir_id]
                write_atomic_at(repo_fd, JOURNAL, b"".join(r.to_line() for r in kept))
            finally:
                os.close(repo_fd)


# -- removal (blocking) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """What became of one item directory due for removal."""

    work_item: str
    removed: bool  # the directory is gone (removed now, or already gone)
    problem: str | None = None  # why it was left alone; None if removed or already gone


def remove_items(root: Path, repo: str, items: Sequence[tuple[str, DirId]]) -> list[Removal]:
    """Remove each finished window's directory (blocking), never following a symlink.

    Each must still be the indexed directory (device and inode; its ctime may have moved)
    and still hold a regular `done`; its entries are unlinked through a descriptor of it (a
    symlink is unlinked itself). One holding a subdirectory is left alone."""
    out: list[Removal] = []
    try:
        repo_fd = _open_repo(root, repo)
    except FileNotFoundError:
        return [Removal(name, True) for name, _ in items]
    except (OSError, layout.UnsafePath) as exc:
        return [
            Removal(name, False, f"the repo directory cannot be opened: {exc}") for name, _ in items
        ]
    try:
        for name, did in items:
            try:
                out.append(_remove_one(repo_fd, name, did))
            except OSError as exc:
                out.append(Removal(name, False, f"{type(exc).__name__}: {exc}"))
    finally:
        os.close(repo_fd)
    return out


def _remove_one(repo_fd: int, name: str, did: DirId) -> Removal:
    try:
        st = os.lstat(name, dir_fd=repo_fd)
    except FileNotFoundError:
        return Removal(name, True)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return Removal(name, False, "is no longer a plain directory; it is not followed")
    if (st.st_dev, st.st_ino) != did[:2]:
        return Removal(name, True)  # another directory now: the indexed one is gone
    fd = os.open(name, _DIR_FLAGS, dir_fd=repo_fd)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != did[:2]:
            return Removal(name, True)
        kinds = {e.name: e for e in os.scandir(fd)}
        done = kinds.get(layout.DONE)
        if done is None or not done.is_file(follow_symlinks=False):
            return Removal(name, False, "has no regular done file any more; not removed")
        nested = sorted(n for n, e in kinds.items() if e.is_dir(follow_symlinks=False))
        if nested:
            return Removal(name, False, f"holds a directory ({nested[0]}); not removed")
        # `done` last: until the directory is gone it stays finished (never an open window).
        for entry in sorted(kinds, key=lambda n: n == layout.DONE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    # The name may have been given to another directory meanwhile: only ours is removed.
    st = os.lstat(name, dir_fd=repo_fd)
    if (st.st_dev, st.st_ino) == did[:2]:
        os.rmdir(name, dir_fd=repo_fd)
    return Removal(name, True)


# -- the daemon's side ----------------------------------------------------------------------


class History:
    """The daemon's index of finished windows and its repo listings (event-loop state).

    `scan` (in a thread) reads them; `merge` folds a scan's findings in and says which items
    intake should look at; `add` records a finished window (memory now, the journal line is
    queued for `flush`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index: dict[str, dict[str, Entry]] = {}  # repo -> work_item -> entry
        self.listings: dict[str, Listing] = {}
        self.writer = JournalWriter(root)
        self.queued: dict[str, list[Record]] = {}  # journal lines not yet appended
        self.untidy: set[str] = set()  # repos whose journal should be rewritten

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.index.values())

    def load(self, journals: Mapping[str, Journal]) -> None:
        """Take in the journals read at start-up."""
        for repo, journal in journals.items():
            self.index[repo] = {
                name: Entry(r.dir_id, r.armed_at, r.finished_ts)
                for name, r in journal.records.items()
            }
            if journal.untidy:
                self.untidy.add(repo)

    def is_finished(self, key: ItemKey) -> bool:
        return key.work_item in self.index.get(key.repo, {})

    def add(self, key: ItemKey, record: Record) -> None:
        """A window seen finished: never looked at again while its directory stays."""
        self.index.setdefault(key.repo, {})[key.work_item] = Entry(
            record.dir_id, record.armed_at, record.finished_ts
        )
        listing = self.listings.get(key.repo)
        if listing is not None:
            listing.live.discard(key.work_item)
        self.queued.setdefault(key.repo, []).append(record)

    def forget(self, key: ItemKey) -> None:
        """The name no longer holds the indexed window (its directory was replaced)."""
        entries = self.index.get(key.repo)
        if entries is not None and entries.pop(key.work_item, None) is not None:
            self.untidy.add(key.repo)

    def relist_all(self) -> None:
        """Every repo directory is listed again at the next scan (the hourly safety net)."""
        self.listings.clear()

    def merge(self, found: Scan) -> list[ItemKey]:
        """Fold a scan in; the items intake should look at (not finished, as far as known)."""
        items: list[ItemKey] = []
        for rs in found.repos:
            entries = self.index.get(rs.repo, {})
            if rs.listing is not None:
                for name in rs.stale:  # checked again: the index may have moved on since
                    entry = entries.get(name)
                    if entry is not None and rs.seen.get(name) != entry.dir_id:
                        self.forget(ItemKey(rs.repo, name))
                if rs.listing.trusted:
                    self.listings[rs.repo] = rs.listing
                else:
                    self.listings.pop(rs.repo, None)
                live: Iterable[str] = rs.listing.live
            else:
                listing = self.listings.get(rs.repo)
                live = listing.live if listing is not None else ()
            items.extend(ItemKey(rs.repo, name) for name in sorted(pending(live, entries)))
        if found.only_repo is None:  # a repo directory that is gone takes its entries along
            for repo in [r for r in self.listings if r not in found.present]:
                del self.listings[repo]
            for repo in [r for r in self.index if r not in found.present]:
                del self.index[repo]
        return items

    def take_queued(self) -> dict[str, list[Record]]:
        """The journal lines to append (`JournalWriter.append`), by repo."""
        queued, self.queued = self.queued, {}
        return queued

    def take_untidy(self) -> dict[str, dict[str, DirId]]:
        """The journals to rewrite (`JournalWriter.compact`), each with what it keeps."""
        untidy, self.untidy = self.untidy, set()
        return {
            repo: {name: e.dir_id for name, e in self.index.get(repo, {}).items()}
            for repo in sorted(untidy)
        }

    def latest_armed(self) -> dict[str, tuple[float, str]]:
        """Each repo's latest finished window (armed_at, work_item): it counts for supersede."""
        latest: dict[str, tuple[float, str]] = {}
        for repo, entries in self.index.items():
            best = max(
                ((e.armed_at, name) for name, e in entries.items() if e.armed_at is not None),
                default=None,
            )
            if best is not None:
                latest[repo] = best
        return latest
