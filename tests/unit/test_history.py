"""The history index's pure decisions: journal lines, which windows count as finished, which
are due for removal, how often the sweep runs, when a listing can stand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postdeploy import history
from postdeploy.history import Entry, History, Listing, Record, RepoScan, Scan
from postdeploy.layout import ItemKey

DAY = 86400.0
NOW = 1_800_000_000.0
ID = (1, 100, 5)


GOOD = ["w1", "1", "100", "5", "10.0", "20.0", "2027-01-15T08:00:00+00:00", '{"status": "OK"}']


def line(*fields: str, **changes: str) -> bytes:
    """A journal line: the GOOD fields (or `fields`), with some changed by column name."""
    columns = ["work_item", "dev", "ino", "ctime_ns", "armed_at", "finished_ts", "key", "done"]
    values = list(fields or GOOD)
    for name, value in changes.items():
        values[columns.index(name)] = value
    return "\t".join(values).encode() + b"\n"


# -- the journal ----------------------------------------------------------------------------

JOURNALS: list[tuple[str, bytes, list[str], bool]] = [
    # (case, journal content, work items read, untidy: rewrite it)
    ("empty", b"", [], False),
    ("one line", line(), ["w1"], False),
    ("two windows", line() + line(work_item="w2", ino="101"), ["w1", "w2"], False),
    ("a torn last line", line() + line(work_item="w2")[:30], ["w1"], True),
    ("a line without a newline only", line()[:-1], [], True),
    ("too few columns", b"w1\t1\t2\n" + line(), ["w1"], True),
    ("not UTF-8", b"\xff\n" + line(), ["w1"], True),
    # A name no directory can have is read, and never matches a listed item directory.
    ("a name no directory has", line(work_item="../etc"), ["../etc"], False),
    ("an inode that is not a number", line(ino="x100"), [], True),
    ("a negative device", line(dev="-1"), [], True),
    ("a time that is not a number", line(finished_ts="yesterday"), [], True),
    ("a time that is not finite", line(armed_at="inf"), [], True),
    ("a sort key that is bad JSON", line(key='"oops'), [], True),
    ("the same window twice", line() + line(ino="102"), ["w1"], True),
    (
        "unknown times and an unreadable done",
        line(armed_at="-", finished_ts="-", done="-"),
        ["w1"],
        False,
    ),
    ("a corrupt done column is read later", line(done="{oops"), ["w1"], False),
]


@pytest.mark.parametrize(
    ("case", "data", "names", "untidy"), JOURNALS, ids=[c[0] for c in JOURNALS]
)
def test_parse_journal(case: str, data: bytes, names: list[str], untidy: bool) -> None:
    journal = history.parse_journal(data)
    assert sorted(journal.records) == names
    assert journal.untidy is untidy


def test_the_last_line_about_a_window_wins() -> None:
    journal = history.parse_journal(line() + line(ino="102", finished_ts="30.5"))
    assert journal.records["w1"] == Record(
        "w1", (1, 102, 5), 10.0, 30.5, "2027-01-15T08:00:00+00:00", '{"status": "OK"}'
    )
    assert journal.records["w1"].done == {"status": "OK"}
    assert history.parse_journal(line(done="{oops")).records["w1"].done is None


ROUND_TRIPS: list[tuple[str, Record]] = [
    ("a window", Record("w1", ID, 10.25, 20.5, "2027-01-15T08:00:00+00:00", '{"a": "\\t"}')),
    ("unknowns", Record("w.1-x_2", ID, None, None, "", None)),
    ("a sort key with a tab", Record("w1", ID, 1.0, 2.0, "a\tb\nc", None)),
    ("a sort key that looks like JSON", Record("w1", ID, 1.0, 2.0, '"quoted"', None)),
]


@pytest.mark.parametrize(("case", "record"), ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_a_record_round_trips(case: str, record: Record) -> None:
    data = record.to_line()
    assert data.count(b"\n") == 1 and data.count(b"\t") == 7
    assert history.parse_journal(data).records == {record.work_item: record}


def test_finished_at_is_read_as_an_aware_iso_time() -> None:
    aware = history.finished_ts("2027-01-15T08:00:00+00:00")
    assert aware is not None
    assert history.finished_ts("2027-01-15T08:00:00Z") == aware
    assert history.finished_ts("2027-01-15T10:00:00+02:00") == aware
    for bad in ("2027-01-15T08:00:00", "yesterday", None, 1_800_000_000, ""):
        assert history.finished_ts(bad) is None, bad


DONES: list[tuple[str, bytes | None, dict[str, Any] | None]] = [
    (
        "a done",
        b'{"status": "DEGRADED", "action_taken": "ALERT_ONLY", "reason": "r", "checks_total": 4,'
        b' "checks_failed": 3, "window_s": 1, "finished_at": "2027-01-15T08:00:00+00:00"}',
        {
            "status": "DEGRADED",
            "action_taken": "ALERT_ONLY",
            "finished_at": "2027-01-15T08:00:00+00:00",
            "reason": "r",
            "checks_total": 4,
            "checks_failed": 3,
        },
    ),
    ("not JSON", b"{", None),
    ("not an object", b"[]", None),
    ("unreadable", None, None),
]


@pytest.mark.parametrize(("case", "data", "kept"), DONES, ids=[c[0] for c in DONES])
def test_record_from_done_keeps_what_status_shows(
    case: str, data: bytes | None, kept: dict[str, Any] | None
) -> None:
    record = history.record_from_done("w1", ID, 10.0, data)
    assert (record.work_item, record.dir_id, record.armed_at, record.done) == ("w1", ID, 10.0, kept)
    assert (record.finished_ts is not None) is (kept is not None)
    assert record.sort_key == (kept["finished_at"] if kept else "")
    assert history.parse_journal(record.to_line()).records["w1"] == record


# -- retention ------------------------------------------------------------------------------


def entries(**finished: float | None) -> dict[str, Entry]:
    return {name: Entry(ID, None, ts) for name, ts in finished.items()}


DUE: list[tuple[str, dict[str, Entry], float, list[str]]] = [
    # (case, index, retention_days, due for removal, oldest first)
    ("nothing", {}, 90, []),
    ("0 keeps forever", entries(a=NOW - 1000 * DAY), 0, []),
    ("older than the retention", entries(a=NOW - 91 * DAY), 90, ["a"]),
    ("younger", entries(a=NOW - 89 * DAY), 90, []),
    ("just at the limit stays", entries(a=NOW - 90 * DAY), 90, []),
    ("unknown finishing time stays", entries(a=None), 90, []),
    (
        "oldest first",
        entries(b=NOW - 95 * DAY, a=NOW - 99 * DAY, c=NOW - 1 * DAY),
        90,
        ["a", "b"],
    ),
    ("a fraction of a day", entries(a=NOW - 2.0, b=NOW - 0.5), 0.00001, ["a"]),
]


@pytest.mark.parametrize(("case", "index", "days", "due"), DUE, ids=[c[0] for c in DUE])
def test_due_for_removal(case: str, index: dict[str, Entry], days: float, due: list[str]) -> None:
    assert history.due_for_removal(index, NOW, days) == due


SWEEPS: list[tuple[float, float]] = [
    (90, 3600.0),  # hourly
    (0, 3600.0),  # nothing to remove, but the hourly full listing still runs
    (1 / 24, 1800.0),  # an hour's retention: every half hour
    (0.00001, 1.0),  # tests: not more often than every second
]


@pytest.mark.parametrize(("days", "every"), SWEEPS)
def test_sweep_every_s(days: float, every: float) -> None:
    assert history.sweep_every_s(days) == every


# -- listings -------------------------------------------------------------------------------

TRUST: list[tuple[str, float, bool]] = [
    # (case, the directory's mtime relative to the listing's start, the listing stands)
    ("changed long before", -60.0, True),
    ("changed just before", -0.5, False),
    ("changed in the same clock tick", 0.0, False),
    ("an mtime in the future", 30.0, False),
]


@pytest.mark.parametrize(("case", "offset", "stands"), TRUST, ids=[c[0] for c in TRUST])
def test_a_listing_stands_only_for_a_directory_changed_well_before(
    case: str, offset: float, stands: bool
) -> None:
    assert history.trusted(int((NOW + offset) * 1e9), NOW) is stands


# -- which windows are finished (History.merge) ---------------------------------------------

OTHER = (1, 200, 5)  # another directory under the same name
MERGES: list[tuple[str, dict[str, Entry], dict[str, history.DirId], list[str], list[str]]] = [
    # (case, index before, directories listed, looked at by intake, index after)
    ("a new directory", {}, {"w1": ID}, ["w1"], []),
    ("the indexed directory", {"w1": Entry(ID, 1.0, 2.0)}, {"w1": ID}, [], ["w1"]),
    ("made anew: another inode", {"w1": Entry(ID, 1.0, 2.0)}, {"w1": OTHER}, ["w1"], []),
    ("same inode, new ctime", {"w1": Entry(ID, 1.0, 2.0)}, {"w1": (1, 100, 6)}, ["w1"], []),
    ("gone", {"w1": Entry(ID, 1.0, 2.0)}, {}, [], []),
    (
        "some of each",
        {"a": Entry(ID, 1.0, 2.0), "b": Entry(OTHER, 1.0, 2.0)},
        {"a": ID, "b": ID, "c": OTHER},
        ["b", "c"],
        ["a"],
    ),
]


@pytest.mark.parametrize(
    ("case", "before", "seen", "looked_at", "after"), MERGES, ids=[c[0] for c in MERGES]
)
def test_merge_decides_which_windows_are_finished(
    case: str,
    before: dict[str, Entry],
    seen: dict[str, history.DirId],
    looked_at: list[str],
    after: list[str],
) -> None:
    h = History(Path("/nonexistent"))  # merge touches no file
    h.index["shop"] = dict(before)
    live = {n for n, did in seen.items() if before.get(n) is None or before[n].dir_id != did}
    stale = [n for n, e in before.items() if seen.get(n) != e.dir_id]
    listing = Listing((1, 1), int((NOW - 60) * 1e9), live, trusted=True)
    found = Scan([RepoScan("shop", listing, dict(seen), stale)], present={"shop"})
    items = h.merge(found)
    assert [key.work_item for key in items] == looked_at
    assert sorted(h.index.get("shop", {})) == after
    assert bool(h.take_untidy()) is (len(after) < len(before))  # a forgotten entry: rewrite
    # The listing stands: the next scan that does not list the directory again gives the
    # same items, less those indexed since.
    for key in items[:1]:
        h.add(key, Record(key.work_item, seen[key.work_item], 1.0, 2.0, "", None))
    assert h.merge(Scan([RepoScan("shop", None)], present={"shop"})) == items[1:]


def test_a_repo_directory_that_is_gone_takes_its_entries_along() -> None:
    h = History(Path("/nonexistent"))
    h.index["shop"] = {"w1": Entry(ID, 1.0, 2.0)}
    h.listings["shop"] = Listing((1, 1), 0, set(), trusted=True)
    assert h.merge(Scan(only_repo="billing")) == []  # a scan of another repo only
    assert "shop" in h.index and "shop" in h.listings
    assert h.merge(Scan()) == []
    assert h.index == {} and h.listings == {}


def test_latest_armed_counts_finished_windows_for_supersede() -> None:
    h = History(Path("/nonexistent"))
    h.add(ItemKey("shop", "a"), Record("a", ID, 5.0, 9.0, "", None))
    h.add(ItemKey("shop", "b"), Record("b", OTHER, 7.0, 8.0, "", None))
    h.add(ItemKey("shop", "c"), Record("c", OTHER, None, 8.0, "", None))
    assert h.latest_armed() == {"shop": (7.0, "b")}
    assert [r.work_item for r in h.take_queued()["shop"]] == ["a", "b", "c"]
    assert h.take_queued() == {}
