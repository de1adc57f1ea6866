"""The history index and retention on real directories: listings that stand while a repo
directory is unchanged, a name deleted and armed again, a torn journal, and removals that
never follow a symlink."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from postdeploy import history, layout
from postdeploy.history import History, JournalWriter, Removal
from postdeploy.layout import ItemKey

DONE = {
    "status": "HEALTHY",
    "action_taken": "NONE",
    "reason": "all good",
    "checks_total": 3,
    "checks_failed": 0,
    "window_s": 1,
    "finished_at": "2027-01-15T08:00:00+00:00",
}


def finished(root: Path, repo: str, item: str) -> Path:
    d = root / repo / item
    d.mkdir(parents=True)
    (d / "armed").touch()
    (d / "series.jsonl").write_text("{}\n")
    (d / "done").write_text(json.dumps(DONE))
    return d


def armed(root: Path, repo: str, item: str) -> Path:
    d = root / repo / item
    d.mkdir(parents=True)
    (d / "armed").touch()
    return d


def age(path: Path, seconds: float = 60.0) -> None:
    """Make a directory's mtime old enough for its listing to stand (`history.TRUST_S`)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def index(h: History, root: Path, key: ItemKey) -> None:
    """What the daemon does when it sees a window finished."""
    with layout.open_item_dir(root, key) as dfd:
        h.add(key, history.look_record(key.work_item, dfd))


def rescan(h: History, root: Path) -> list[str]:
    found = history.scan(root, h.listings, h.index)
    return [str(key) for key in h.merge(found)]


def test_an_unchanged_repo_directory_is_not_listed_again(tmp_path: Path) -> None:
    finished(tmp_path, "shop", "old")
    armed(tmp_path, "shop", "open")
    age(tmp_path / "shop")
    h = History(tmp_path)
    assert rescan(h, tmp_path) == ["shop/old", "shop/open"]  # the first look: all of them
    index(h, tmp_path, ItemKey("shop", "old"))
    assert rescan(h, tmp_path) == ["shop/open"]
    [repo] = history.scan(tmp_path, h.listings, h.index).repos
    assert repo.listing is None  # the listing stood: the directory was not read again
    # `armed` touched again, `cancel` written: the repo directory's mtime stays, and the
    # open item is handed to intake anyway, as on every rescan.
    (tmp_path / "shop" / "open" / "cancel").touch()
    assert rescan(h, tmp_path) == ["shop/open"]
    # A new item directory changes the repo directory: listed again.
    armed(tmp_path, "shop", "new")
    assert rescan(h, tmp_path) == ["shop/new", "shop/open"]


def test_a_name_deleted_and_armed_again_is_a_new_window(tmp_path: Path) -> None:
    key = ItemKey("shop", "w1")
    finished(tmp_path, "shop", "w1")
    age(tmp_path / "shop")
    h = History(tmp_path)
    assert rescan(h, tmp_path) == ["shop/w1"]
    index(h, tmp_path, key)
    assert rescan(h, tmp_path) == []
    # The deploy side removes the finished window and arms the same name again; whatever
    # inode the new directory gets (the old one's may be reused at once), it is new.
    shutil.rmtree(tmp_path / "shop" / "w1")
    armed(tmp_path, "shop", "w1")
    assert rescan(h, tmp_path) == ["shop/w1"]
    assert not h.is_finished(key)


def test_a_change_in_the_same_clock_tick_as_a_listing_is_not_missed(tmp_path: Path) -> None:
    """Directory timestamps are coarse: an entry added right after a listing may leave the
    repo directory's mtime as the listing saw it. A recently changed directory is listed
    again until its mtime is older than `history.TRUST_S`."""
    shop = tmp_path / "shop"
    armed(tmp_path, "shop", "w1")
    h = History(tmp_path)
    assert rescan(h, tmp_path) == ["shop/w1"]
    st = os.stat(shop)
    armed(tmp_path, "shop", "w2")
    os.utime(shop, ns=(st.st_atime_ns, st.st_mtime_ns))  # as if in the same clock tick
    assert rescan(h, tmp_path) == ["shop/w1", "shop/w2"]


def test_a_torn_journal_loses_no_window(tmp_path: Path) -> None:
    """A crash mid-append left a torn last line: the windows it names are looked at once
    more and journalled again; the rewrite leaves only whole lines."""
    keys = [ItemKey("shop", f"w{i}") for i in range(3)]
    for key in keys:
        finished(tmp_path, key.repo, key.work_item)
    age(tmp_path / "shop")
    writer = JournalWriter(tmp_path)
    records = []
    for key in keys:
        with layout.open_item_dir(tmp_path, key) as dfd:
            records.append(history.look_record(key.work_item, dfd))
    writer.append("shop", records)
    journal = tmp_path / "shop" / history.JOURNAL
    data = journal.read_bytes()
    journal.write_bytes(data[: -len(records[2].to_line()) + 20])  # w2's line torn

    h = History(tmp_path)
    h.load(history.read_journals(tmp_path))
    assert sorted(h.index["shop"]) == ["w0", "w1"]
    assert rescan(h, tmp_path) == ["shop/w2"]  # the window the journal lost: looked at
    index(h, tmp_path, keys[2])
    writer_queue = h.take_queued()
    for repo, queued in writer_queue.items():
        writer.append(repo, queued)
    for repo, keep in h.take_untidy().items():
        writer.compact(repo, keep)
    assert journal.read_bytes().endswith(b"\n")
    again = history.read_journals(tmp_path)["shop"]
    assert sorted(again.records) == ["w0", "w1", "w2"] and not again.untidy
    assert again.records["w0"].done == {k: DONE[k] for k in history.DONE_FIELDS}


def test_a_journal_that_is_not_a_regular_file_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text("precious\n")
    (tmp_path / "state" / "shop").mkdir(parents=True)
    (tmp_path / "state" / "shop" / history.JOURNAL).symlink_to(outside)
    journal = history.read_journals(tmp_path / "state")["shop"]
    assert journal.records == {} and journal.untidy  # rewritten (replaced), never read
    writer = JournalWriter(tmp_path / "state")
    with pytest.raises(OSError):  # O_NOFOLLOW: nothing is written through the link
        writer.append("shop", [history.record_from_done("w1", (1, 2, 3), None, None)])
    writer.compact("shop", {})
    assert outside.read_text() == "precious\n"
    assert not (tmp_path / "state" / "shop" / history.JOURNAL).is_symlink()


def dir_id(path: Path) -> history.DirId:
    return history.dir_id(os.lstat(path))


def test_removal_never_follows_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "state"
    outside = tmp_path / "outside"
    (outside / "item").mkdir(parents=True)
    (outside / "item" / "done").write_text("{}")
    (outside / "precious").write_text("keep me")
    (root / "shop").mkdir(parents=True)
    # An item directory that is a symlink: left alone, its target untouched.
    (root / "shop" / "linked").symlink_to(outside / "item")
    # A finished window holding a symlink to a file outside: the link goes, not the file.
    plain = finished(root, "shop", "plain")
    (plain / "report.md").symlink_to(outside / "precious")
    # A finished window holding a directory: left alone.
    nested = finished(root, "shop", "nested")
    (nested / "extra").mkdir()
    # No `done` any more (someone emptied it): not a finished window, left alone.
    undone = finished(root, "shop", "undone")
    (undone / "done").unlink()
    # Another directory under the indexed name: the indexed one is gone, the new one stays.
    replaced = finished(root, "shop", "replaced")
    old_id = (*dir_id(replaced)[:1], dir_id(replaced)[1] + 10_000_000, 0)

    outcomes = history.remove_items(
        root,
        "shop",
        [
            ("linked", dir_id(outside / "item")),
            ("plain", dir_id(plain)),
            ("nested", dir_id(nested)),
            ("undone", dir_id(undone)),
            ("replaced", old_id),
            ("vanished", (1, 2, 3)),
        ],
    )
    by_name = {o.work_item: o for o in outcomes}
    assert by_name["linked"].removed is False and "not followed" in str(by_name["linked"].problem)
    assert by_name["plain"] == Removal("plain", True)
    assert by_name["nested"].removed is False and "directory" in str(by_name["nested"].problem)
    assert by_name["undone"].removed is False
    assert by_name["replaced"] == Removal("replaced", True)
    assert by_name["vanished"] == Removal("vanished", True)
    assert sorted(os.listdir(root / "shop")) == ["linked", "nested", "replaced", "undone"]
    assert (outside / "precious").read_text() == "keep me"
    assert sorted(os.listdir(outside / "item")) == ["done"]
    assert sorted(os.listdir(nested)) == ["armed", "done", "extra", "series.jsonl"]
    assert (replaced / "done").is_file()


def test_a_repo_directory_that_is_a_symlink_is_not_swept(tmp_path: Path) -> None:
    root = tmp_path / "state"
    real = finished(tmp_path / "elsewhere", "shop", "w1")
    root.mkdir()
    (root / "shop").symlink_to(tmp_path / "elsewhere" / "shop")
    [outcome] = history.remove_items(root, "shop", [("w1", dir_id(real))])
    assert outcome.removed is False
    assert (real / "done").is_file()
