"""The baseline file: its pure rules (table-driven) and its real reads and writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postdeploy import layout, samples
from postdeploy.baseline import BaselineRow
from postdeploy.samples import (
    BASELINE,
    COMPACT_MIN,
    MAX_ROWS,
    SampleFile,
    due_for_compaction,
    parse,
    recent,
)
from postdeploy.store import dump_line


def row(n: int, ts: float, ok: bool = True, latency_ms: float = 30.0) -> BaselineRow:
    """A baseline row; `n` goes in its detail, so tests can tell rows apart."""
    return BaselineRow(
        ts=ts,
        health_ok=ok,
        health_code=200 if ok else 503,
        total=1,
        fivexx=0 if ok else 1,
        latency_ms=latency_ms,
        detail=f"row {n}",
    )


def numbers(rows: list[BaselineRow]) -> list[int]:
    return [int(r.detail.split()[1]) for r in rows]


@pytest.mark.parametrize(
    ("total", "expired", "due"),
    [
        (0, 0, False),
        (10, 0, False),
        (10, 10, False),  # under COMPACT_MIN: a small file is never rewritten
        (COMPACT_MIN * 4, COMPACT_MIN - 1, False),
        (COMPACT_MIN * 4, COMPACT_MIN, True),
        (1000, 249, False),  # a quarter of the rows is the bar on a large file
        (1000, 250, True),
        (MAX_ROWS + 1, 0, True),  # too many rows, even when none expired
        (MAX_ROWS, 0, False),
    ],
)
def test_due_for_compaction(total: int, expired: int, due: bool) -> None:
    assert due_for_compaction(total, expired) is due


@pytest.mark.parametrize(
    ("times", "now", "keep", "kept"),
    [
        ([], 100.0, 10.0, []),
        ([80.0, 89.9, 90.0, 95.0], 100.0, 10.0, [90.0, 95.0]),  # the cut is inclusive
        ([99.0], 100.0, 0.0, []),
        ([100.0], 100.0, 0.0, [100.0]),
    ],
)
def test_recent(times: list[float], now: float, keep: float, kept: list[float]) -> None:
    rows = [row(i, ts) for i, ts in enumerate(times)]
    assert [r.ts for r in recent(rows, now, keep)] == kept


def test_recent_keeps_at_most_max_rows_the_newest() -> None:
    rows = [row(i, float(i)) for i in range(MAX_ROWS + 5)]
    kept = recent(rows, now=float(MAX_ROWS + 5), keep_s=1e9)
    assert len(kept) == MAX_ROWS
    assert numbers(kept)[0] == 5


def test_parse_skips_bad_and_torn_lines_and_sorts_by_time() -> None:
    data = (
        dump_line(row(2, 20.0).to_dict())
        + b"not json\n"
        + b'{"ts": "x"}\n'  # an object, but not a row
        + dump_line(row(1, 10.0).to_dict())
        + b'{"ts": 3, "hea'  # torn last line
    )
    assert numbers(parse(data)) == [1, 2]


def test_append_then_load_round_trips(tmp_path: Path) -> None:
    file = SampleFile(tmp_path, "shop")
    assert file.load() == []  # no repo directory yet
    rows = [row(0, 10.0), row(1, 20.0, ok=False, latency_ms=5000.0)]
    for r in rows:
        file.append(r)
    assert file.load() == rows


def test_append_after_a_torn_line_is_not_glued_to_it(tmp_path: Path) -> None:
    file = SampleFile(tmp_path, "shop")
    file.append(row(0, 10.0))
    with (tmp_path / "shop" / BASELINE).open("ab") as f:
        f.write(b'{"ts": 20.0, "heal')  # a crash mid-append
    file.append(row(2, 30.0))
    assert numbers(file.load()) == [0, 2]


def test_rewrite_replaces_the_file(tmp_path: Path) -> None:
    file = SampleFile(tmp_path, "shop")
    for i in range(5):
        file.append(row(i, float(i)))
    file.rewrite([row(3, 3.0), row(4, 4.0)])
    assert numbers(file.load()) == [3, 4]
    leftovers = [n for n in os.listdir(tmp_path / "shop") if n != BASELINE]
    assert leftovers == []


def test_a_symlinked_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious\n")
    (tmp_path / "shop" / BASELINE).symlink_to(target)
    file = SampleFile(tmp_path, "shop")
    with pytest.raises(OSError):
        file.append(row(0, 1.0))
    with pytest.raises(OSError):
        file.load()
    assert target.read_bytes() == b"precious\n"


def test_a_symlinked_repo_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "shop").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        SampleFile(tmp_path, "shop").append(row(0, 1.0))
    assert os.listdir(tmp_path / "real") == []


def test_a_fifo_in_the_files_place_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    os.mkfifo(tmp_path / "shop" / BASELINE)
    file = SampleFile(tmp_path, "shop")
    with pytest.raises(OSError):
        file.load()
    with pytest.raises(OSError):
        file.append(row(0, 1.0))


def test_a_hostile_repo_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(layout.UnsafePath):
        SampleFile(tmp_path, "../etc")


@pytest.mark.parametrize(
    ("tail", "untidy"),
    [
        (b"", False),
        (b"not json\n", True),
        (b'{"ts": "x"}\n', True),  # an object that is not a row
        (b'{"ts": 3, "hea', True),  # torn
    ],
)
def test_load_checked_says_when_the_file_holds_more_than_rows(
    tmp_path: Path, tail: bytes, untidy: bool
) -> None:
    file = SampleFile(tmp_path, "shop")
    file.append(row(0, 1.0))
    with (tmp_path / "shop" / BASELINE).open("ab") as f:
        f.write(tail)
    assert file.load_checked() == ([row(0, 1.0)], untidy)


def test_an_oversized_file_is_read_up_to_the_bound_and_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(samples, "MAX_BYTES", 1000)
    file = SampleFile(tmp_path, "shop")
    for i in range(40):  # ~140 bytes a row: well over the bound
        file.append(row(i, float(i)))
    rows, untidy = file.load_checked()
    assert untidy
    assert 0 < len(rows) < 40
    assert numbers(rows) == list(range(len(rows)))  # the first rows, whole
