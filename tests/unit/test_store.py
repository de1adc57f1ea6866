"""JSON Lines parsing and the file access of one work item (`store.py`), on real files."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.store import ItemStore, JsonLines, dump_line, parse_json_lines, read_at

FAST = settings(max_examples=100, deadline=None)
KEY = ItemKey("shop", "w1")

# -- parse_json_lines (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "rows", "bad", "torn"),
    [
        (b"", [], [], 0),
        (b"\n", [], [], 0),
        (b'{"a":1}\n', [{"a": 1}], [], 0),
        (b'{"a":1}\n{"b":2}\n', [{"a": 1}, {"b": 2}], [], 0),
        # No final newline: the last line is torn (a crash mid-append), even if it parses.
        (b'{"a":1}', [], [], 7),
        (b'{"a":1}\n{"b":', [{"a": 1}], [], 5),
        (b'{"a":1}\n{"b":2}', [{"a": 1}], [], 7),
        # Bad complete lines in the middle are skipped and reported by number (1-based).
        (b'{"a":1}\nxx\n{"b":2}\n', [{"a": 1}, {"b": 2}], [2], 0),
        (b'{"a":1}\n{"a":\n{"b":2}\n', [{"a": 1}, {"b": 2}], [2], 0),
        (b'\xff\xfe\n{"a":1}\n', [{"a": 1}], [1], 0),
        # Empty and blank lines are neither rows nor bad lines.
        (b'\n\n{"a":1}\n \t \n\n', [{"a": 1}], [], 0),
        (b'\n{"a":1}\n', [{"a": 1}], [], 0),
        # Valid JSON that is not an object is a bad line.
        (b'[1]\n"s"\n3\nnull\ntrue\n{"a":1}\n', [{"a": 1}], [1, 2, 3, 4, 5], 0),
        (b'{"a":1}\r\n', [{"a": 1}], [], 0),
        ('{"é":"✓"}\n'.encode(), [{"é": "✓"}], [], 0),
    ],
)
def test_parse_json_lines(data: bytes, rows: list[Any], bad: list[int], torn: int) -> None:
    assert parse_json_lines(data) == JsonLines(rows, bad, torn)


def test_parse_json_lines_survives_deep_nesting() -> None:
    parsed = parse_json_lines(b"[" * 100_000 + b'\n{"a":1}\n')
    assert parsed == JsonLines([{"a": 1}], [1], 0)


objects = st.dictionaries(
    st.text(max_size=5), st.integers() | st.text(max_size=5) | st.booleans(), max_size=3
)


@FAST
@given(st.lists(objects, max_size=6), st.binary(max_size=30).filter(lambda b: b"\n" not in b))
def test_dumped_lines_plus_a_torn_tail_parse_back(rows: list[dict[str, Any]], tail: bytes) -> None:
    data = b"".join(dump_line(row) for row in rows) + tail
    assert parse_json_lines(data) == JsonLines(rows, [], len(tail))


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parsed = parse_json_lines(data)
    assert all(isinstance(row, dict) for row in parsed.rows)
    assert parsed.torn_bytes == len(data) - (data.rfind(b"\n") + 1)
    assert len(parsed.rows) + len(parsed.bad_lines) <= data.count(b"\n")


def test_dump_line_is_one_compact_line() -> None:
    line = dump_line({"a": 1, "t": "x\ny", "u": "é"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"a": 1, "t": "x\ny", "u": "é"}


# -- ItemStore with real files ----------------------------------------------------------------


@pytest.fixture
def store(state_root: Path) -> ItemStore:
    """A store whose item directory exists."""
    (state_root / KEY.repo / KEY.work_item).mkdir(parents=True)
    return ItemStore(state_root, KEY)


def test_write_atomic_replaces_content_and_leaves_no_temp_file(store: ItemStore) -> None:
    store.write_atomic_sync("done", b"first\n")
    assert (store.path / "done").read_bytes() == b"first\n"
    store.write_atomic_sync("done", b"second\n")
    assert (store.path / "done").read_bytes() == b"second\n"
    assert sorted(p.name for p in store.path.iterdir()) == ["done"]
    assert store.read_sync("done") == b"second\n"


def test_write_atomic_creates_the_directories(state_root: Path) -> None:
    store = ItemStore(state_root, KEY)
    with pytest.raises(FileNotFoundError):
        store.write_atomic_sync("rejected", b"no\n")
    store.write_atomic_sync("rejected", b"reason\n", create_dirs=True)
    assert (state_root / "shop" / "w1" / "rejected").read_bytes() == b"reason\n"


def test_write_atomic_replaces_a_symlink_without_writing_through_it(
    store: ItemStore, outside: Path
) -> None:
    target = outside / "precious"
    target.write_bytes(b"keep me\n")
    (store.path / "done").symlink_to(target)
    store.write_atomic_sync("done", b"new\n")
    assert target.read_bytes() == b"keep me\n"
    assert not (store.path / "done").is_symlink()
    assert (store.path / "done").read_bytes() == b"new\n"


def test_write_atomic_refuses_a_symlinked_item_dir(state_root: Path, outside: Path) -> None:
    (state_root / "shop").mkdir()
    (state_root / "shop" / "w1").symlink_to(outside)
    with pytest.raises(UnsafePath):
        ItemStore(state_root, KEY).write_atomic_sync("done", b"x\n")
    assert list(outside.iterdir()) == []


def test_read_and_exists(store: ItemStore) -> None:
    assert store.read_sync("armed") is None
    assert store.exists_sync("armed") is False
    (store.path / "armed").write_bytes(b'{"branch": "main"}')
    assert store.exists_sync("armed") is True
    assert store.read_sync("armed") == b'{"branch": "main"}'
    assert store.read_sync("armed", limit=4) == b'{"br'


def test_read_does_not_follow_a_symlinked_done(store: ItemStore, outside: Path) -> None:
    target = outside / "secret"
    target.write_bytes(b'{"status": "HEALTHY"}')
    (store.path / "done").symlink_to(target)
    with pytest.raises(OSError) as info:
        store.read_sync("done")
    assert info.value.errno == errno.ELOOP
    assert store.exists_sync("done") is True  # it is there, it just is not followed


async def test_async_read_does_not_follow_a_symlink(store: ItemStore, outside: Path) -> None:
    (outside / "secret").write_bytes(b"{}")
    (store.path / "done").symlink_to(outside / "secret")
    with pytest.raises(OSError):
        await store.read_json("done")


async def test_write_and_read_json(store: ItemStore) -> None:
    await store.write_json("window.json", {"armed_at": 1.5, "note": "é"})
    assert await store.read_json("window.json") == {"armed_at": 1.5, "note": "é"}
    assert await store.read_json("missing.json") is None
    (store.path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        await store.read_json("list.json")


async def test_read_lines_cuts_a_torn_tail_durably(store: ItemStore) -> None:
    series = store.path / "series.jsonl"
    good = dump_line({"tick": 0}) + b"garbage\n" + dump_line({"tick": 1})
    series.write_bytes(good + b'{"tick": 2, "hea')
    parsed = await store.read_lines("series.jsonl")
    assert parsed.rows == [{"tick": 0}, {"tick": 1}]
    assert parsed.bad_lines == [2]
    assert parsed.torn_bytes == len(b'{"tick": 2, "hea')
    # The file is cut back to its complete lines...
    assert series.read_bytes() == good
    # ...so the next append starts on a fresh line instead of gluing onto the torn one.
    await store.append_lines("series.jsonl", [dump_line({"tick": 2})])
    again = parse_json_lines(series.read_bytes())
    assert again == JsonLines([{"tick": 0}, {"tick": 1}, {"tick": 2}], [2], 0)


async def test_read_lines_of_a_missing_file(store: ItemStore) -> None:
    assert await store.read_lines("series.jsonl") == JsonLines([], [], 0)


async def test_append_lines_creates_then_appends(store: ItemStore) -> None:
    await store.append_lines("series.jsonl", [dump_line({"tick": 0})])
    await store.append_lines("series.jsonl", [dump_line({"tick": 1}), dump_line({"tick": 2})])
    parsed = await store.read_lines("series.jsonl")
    assert [row["tick"] for row in parsed.rows] == [0, 1, 2]
    assert parsed.torn_bytes == 0


async def test_append_lines_refuses_a_symlinked_series(store: ItemStore, outside: Path) -> None:
    target = outside / "elsewhere.jsonl"
    target.write_bytes(b"original\n")
    (store.path / "series.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        await store.append_lines("series.jsonl", [dump_line({"tick": 0})])
    assert target.read_bytes() == b"original\n"


async def test_append_lines_refuses_a_dangling_symlinked_series(
    store: ItemStore, outside: Path
) -> None:
    (store.path / "series.jsonl").symlink_to(outside / "new.jsonl")
    with pytest.raises(OSError):
        await store.append_lines("series.jsonl", [dump_line({"tick": 0})])
    assert not (outside / "new.jsonl").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("file", b"data"),
        ("missing", None),
        ("symlink", OSError),  # never followed, even to a regular file
        ("fifo", OSError),  # opening it would block a worker thread for ever without O_NONBLOCK
        ("dir", OSError),
    ],
)
def test_read_at_reads_regular_files_only(tmp_path: Path, make: str, expected: Any) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"data")
    name = tmp_path / "f"
    if make == "file":
        name.write_bytes(b"data")
    elif make == "symlink":
        name.symlink_to(target)
    elif make == "fifo":
        os.mkfifo(name)
    elif make == "dir":
        name.mkdir()
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if isinstance(expected, type):
            with pytest.raises(expected):
                read_at(dfd, "f")
        else:
            assert read_at(dfd, "f") == expected
            assert read_at(dfd, "f", 2) in (None, b"da")
    finally:
        os.close(dfd)
