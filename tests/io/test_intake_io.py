"""Intake's shell on real files and real inotify: the watcher's hints, the batched looks and
the group commit."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from postdeploy import intake, layout
from postdeploy.intake import Look, look_all, write_all
from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.watcher import Watcher

KEY = ItemKey("shop", "w1")


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    w = Watcher(tmp_path)
    try:
        yield w
    finally:
        w.close()


# -- the watcher ----------------------------------------------------------------------------


def test_new_repo_and_item_directories_are_hinted_and_watched(
    tmp_path: Path, watcher: Watcher
) -> None:
    (tmp_path / "shop").mkdir()
    assert watcher.read().repos == {"shop"}
    (tmp_path / "shop" / "w1").mkdir()  # the repo directory is watched by now
    assert watcher.read().items == {KEY}
    (tmp_path / "shop" / "w1" / "armed").touch()  # and so is the item directory
    assert watcher.read().armed == {KEY}


def test_only_armed_and_cancel_are_news_in_an_item_directory(
    tmp_path: Path, watcher: Watcher
) -> None:
    item = tmp_path / "shop" / "w1"
    item.mkdir(parents=True)
    watcher.follow([KEY])
    assert watcher.read().repos == {"shop"}  # the news of the repo directory itself
    (item / "series.jsonl").write_text("{}\n")  # the daemon's own writing
    with open(item / "series.jsonl", "a") as f:
        f.write("{}\n")
    (item / ".window.json.1234.tmp").write_text("{}")
    os.replace(item / ".window.json.1234.tmp", item / "window.json")
    assert not watcher.read()
    (item / "cancel").touch()
    os.rename(item / "series.jsonl", item / "armed")  # renamed into place counts too
    changes = watcher.read()
    assert (changes.cancel, changes.armed, changes.items) == ({KEY}, {KEY}, set())


def test_hidden_entries_are_skipped(tmp_path: Path, watcher: Watcher) -> None:
    (tmp_path / ".outbox").mkdir()
    (tmp_path / "shop").mkdir()
    assert watcher.read().repos == {"shop"}
    (tmp_path / "shop" / ".tmp-w1").mkdir()
    (tmp_path / ".outbox" / "event.json").touch()
    assert not watcher.read()


def test_a_symlink_is_hinted_but_never_watched_through(tmp_path: Path, watcher: Watcher) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "w1").mkdir(parents=True)
    (tmp_path / "shop").symlink_to(outside)
    assert watcher.read().repos == {"shop"}  # the daemon's scan reports it
    watches = watcher.watches
    watcher.follow([KEY])  # through the symlink: refused (IN_DONT_FOLLOW | IN_ONLYDIR)
    assert watcher.watches == watches
    (outside / "w1" / "armed").touch()
    assert not watcher.read()


def test_unfollowed_and_removed_directories_fall_silent(tmp_path: Path, watcher: Watcher) -> None:
    done, gone = ItemKey("shop", "done"), ItemKey("shop", "gone")
    for key in (done, gone):
        (tmp_path / key.repo / key.work_item).mkdir(parents=True)
    watcher.follow([done, gone])
    assert watcher.read().repos == {"shop"}
    watcher.unfollow(done)
    (tmp_path / "shop" / "gone").rmdir()
    assert not watcher.read()  # the removal is no news; the watch is dropped with it
    assert watcher.watches == 2  # the state directory and the repo
    (tmp_path / "shop" / "done" / "armed").touch()
    assert not watcher.read()
    (tmp_path / "shop" / "gone").mkdir()  # the same name again: a new directory, hinted
    assert watcher.read().items == {gone}


async def test_changes_are_yielded_as_soon_as_the_kernel_has_them(
    tmp_path: Path, watcher: Watcher
) -> None:
    (tmp_path / "shop" / "w1").mkdir(parents=True)
    watcher.follow([KEY])
    with anyio.fail_after(10):
        stream = watcher.changes()
        (tmp_path / "shop" / "w1" / "armed").touch()
        changes = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
    assert changes.armed == {KEY}


# -- looks and the group commit -------------------------------------------------------------


def _close(looks: list[Look | Exception]) -> None:
    for result in looks:
        if isinstance(result, Look) and result.fd is not None:
            os.close(result.fd)


def test_look_all_gives_one_result_per_directory_in_order(tmp_path: Path) -> None:
    good = tmp_path / "shop" / "w1"
    good.mkdir(parents=True)
    (good / "armed").write_text('{"branch": "main"}')
    os.utime(good / "armed", (1, 1))  # long quiet: its content is read
    (tmp_path / "shop" / "link").symlink_to(good)
    requests = [(KEY, None, False), (ItemKey("shop", "missing"), None, False)]
    requests.append((ItemKey("shop", "link"), None, False))
    looks = look_all(tmp_path, requests)
    try:
        first = looks[0]
        assert isinstance(first, Look)
        assert first.data == b'{"branch": "main"}' and first.fd is not None
        assert isinstance(looks[1], FileNotFoundError)
        assert isinstance(looks[2], UnsafePath)
    finally:
        _close(looks)


def test_armed_is_read_only_once_quiet_or_unchanged(tmp_path: Path) -> None:
    """`read_if_quiet`: fresh -> identity only; 100 ms old, or unchanged since the
    identity given, or forced -> its content too."""
    item = tmp_path / "shop" / "w1"
    item.mkdir(parents=True)
    armed = item / "armed"
    armed.write_text('{"branch": "main"}')
    dfd = os.open(item, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st, data, _ = intake.read_if_quiet(dfd, None)
        assert st is not None and data is None  # just written
        assert intake.read_if_quiet(dfd, intake.identity(st))[1] == b'{"branch": "main"}'
        assert intake.read_if_quiet(dfd, None, force=True)[1] == b'{"branch": "main"}'
        armed.write_text('{"branch": "release"}')  # written again: a new identity
        assert intake.read_if_quiet(dfd, intake.identity(st))[1] is None
        old = time.time() - intake.QUIET_S - 0.05
        os.utime(armed, (old, old))
        assert intake.read_if_quiet(dfd, None)[1] == b'{"branch": "release"}'
    finally:
        os.close(dfd)


def test_a_settled_directory_is_not_kept_open(tmp_path: Path) -> None:
    item = tmp_path / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "armed").touch()
    (item / "done").write_text("{}")
    [result] = look_all(tmp_path, [(KEY, None, False)])
    assert isinstance(result, Look) and result.fd is None and result.armed is not None


def test_write_all_writes_every_file_and_reports_each_failure(tmp_path: Path) -> None:
    keys = [ItemKey("shop", f"w{i}") for i in range(40)]
    for key in keys:
        (tmp_path / key.repo / key.work_item).mkdir(parents=True)
    looks = look_all(tmp_path, [(key, None, False) for key in keys])
    try:
        fds = [look.fd for look in looks if isinstance(look, Look) and look.fd is not None]
        assert len(fds) == len(keys)
        os.rmdir(tmp_path / "shop" / "w7")  # removed after the look: its write fails
        # Half of them with a spare made beforehand, as while `armed` was not quiet yet.
        made = intake.make_spares(tmp_path, keys[::2], layout.WINDOW)
        spares = [spare for spare in made if isinstance(spare, intake.Spare)]
        assert len(spares) == len(made)  # every one made, none an exception
        by_index = {i * 2: spare for i, spare in enumerate(spares)}
        errors = write_all(
            layout.WINDOW,
            [(fd, b'{"n": %d}\n' % i, by_index.get(i)) for i, fd in enumerate(fds)],
        )
    finally:
        _close(looks)
    assert [i for i, error in enumerate(errors) if error is not None] == [7]
    assert isinstance(errors[7], FileNotFoundError)
    for i, key in enumerate(keys):
        if i != 7:
            directory = tmp_path / key.repo / key.work_item
            assert json.loads((directory / "window.json").read_text()) == {"n": i}
            assert sorted(os.listdir(directory)) == ["window.json"]  # no temporary file left


def test_write_all_replaces_atomically_and_never_follows_a_symlink(tmp_path: Path) -> None:
    item = tmp_path / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "window.json").write_text("old")
    target = tmp_path / "elsewhere"
    [result] = look_all(tmp_path, [(KEY, None, False)])
    assert isinstance(result, Look) and result.fd is not None
    (item / "rejected").symlink_to(target)  # put there after the look
    try:
        assert write_all(layout.WINDOW, [(result.fd, b"new\n", None)]) == [None]
        # A symlink in the target's place is replaced by the rename, not written through.
        assert write_all(layout.REJECTED, [(result.fd, b"reason\n", None)]) == [None]
    finally:
        os.close(result.fd)
    assert (item / "window.json").read_text() == "new\n"
    assert not (item / "rejected").is_symlink() and not target.exists()


def test_unused_spares_leave_nothing_behind(tmp_path: Path) -> None:
    item = tmp_path / "shop" / "w1"
    item.mkdir(parents=True)
    [spare] = intake.make_spares(tmp_path, [KEY], layout.WINDOW)
    assert isinstance(spare, intake.Spare)
    assert [p.name for p in item.iterdir()] == [spare.name]  # hidden: scans skip it
    assert spare.name.startswith(".")
    intake.drop_spares([spare])
    assert list(item.iterdir()) == []
    [missing] = intake.make_spares(tmp_path, [ItemKey("shop", "nope")], layout.WINDOW)
    assert isinstance(missing, FileNotFoundError)


async def test_run_all_keeps_the_order_across_chunks() -> None:
    items = list(range(100))
    results = await intake.run_all(lambda part: [x * 2 for x in part], items)
    assert results == [x * 2 for x in items]
    assert await intake.run_all(lambda part: list(part), []) == []
