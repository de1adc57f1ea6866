"""The durable writes (`durable.py`) on real files.

A disk that refuses a write part-way is real here: the write runs in a child process whose
file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) is a few bytes past the file's current
size, so the kernel writes what fits and then fails with EFBIG, as a full disk does with
ENOSPC. Crashes (SIGKILL mid-write) are the chaos suite's (tests/chaos).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postdeploy import durable


def open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def run_limited(code: str, limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` (with `durable` imported, and `args` as sys.argv[1:]) in a child process
    that cannot make any file larger than `limit` bytes."""
    prelude = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        from postdeploy import durable
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "is_tmp"),
    [
        (durable.tmp_name("window.json"), True),
        (durable.tmp_name("0123456789abcdef"), True),
        ("window.json", False),
        (".finished.tsv", False),
        ("notes.tmp", False),
    ],
)
def test_tmp_names_are_hidden_and_recognised(name: str, is_tmp: bool) -> None:
    assert durable.is_tmp_name(name) is is_tmp
    assert name.startswith(".") or not is_tmp


def test_write_atomic_at_replaces_and_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    item = tmp_path / "item"
    item.mkdir()
    (item / "done").symlink_to(outside)
    (item / "report.md").write_text("old")
    dfd = open_dir(item)
    try:
        durable.write_atomic_at(dfd, "report.md", b"new\n")
        durable.write_atomic_at(dfd, "done", b"{}\n", 0o640)
    finally:
        os.close(dfd)
    assert (item / "report.md").read_text() == "new\n"
    assert not (item / "done").is_symlink() and (item / "done").read_text() == "{}\n"
    assert (item / "done").stat().st_mode & 0o777 == 0o640 & ~_umask()
    assert outside.read_text() == "untouched"
    assert sorted(os.listdir(item)) == ["done", "report.md"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_refused_atomic_write_keeps_the_old_content_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    (tmp_path / "window.json").write_text("old")
    child = run_limited(
        """
        dfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        try:
            durable.write_atomic_at(dfd, "window.json", b"x" * 100)
        except OSError as exc:
            print(exc.errno)
        """,
        10,
        str(tmp_path),
    )
    assert child.stdout.split() == [str(errno.EFBIG)], child.stderr
    assert (tmp_path / "window.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["window.json"]


def test_a_refused_append_is_cut_back_to_whole_lines(tmp_path: Path) -> None:
    series = tmp_path / "series.jsonl"
    series.write_bytes(b'{"tick":0}\n')
    child = run_limited(
        """
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
        try:
            durable.append_fd(fd, b'{"tick":1}\\n{"tick":2}\\n')
        except OSError as exc:
            print(exc.errno)
        durable.append_fd(fd, b'{"t":3}\\n')  # what fits is still appended whole
        """,
        len(b'{"tick":0}\n') + 10,  # room for 10 more bytes: half of the first new line
        str(series),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [str(errno.EFBIG)]
    assert series.read_bytes() == b'{"tick":0}\n{"t":3}\n'


def test_truncate_fd_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "series.jsonl"
    path.write_bytes(b'{"tick":0}\n{"ti')
    fd = os.open(path, os.O_WRONLY)
    try:
        durable.truncate_fd(fd, len(b'{"tick":0}\n'))
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"tick":0}\n'


def test_write_group_writes_each_directory_and_reports_each_failure(tmp_path: Path) -> None:
    dirs = [tmp_path / f"w{i}" for i in range(20)]
    for d in dirs:
        d.mkdir()
    fds = [open_dir(d) for d in dirs]
    try:
        spares = {i: durable.make_spare(fds[i], "window.json") for i in range(0, 20, 3)}
        os.rmdir(dirs[5])  # removed before the write: its file cannot be created
        errors = durable.write_group(
            "window.json", [(fd, b"%d\n" % i, spares.get(i)) for i, fd in enumerate(fds)]
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert [i for i, error in enumerate(errors) if error is not None] == [5]
    for i, d in enumerate(dirs):
        if i != 5:
            assert os.listdir(d) == ["window.json"]  # the spare became it; nothing else left
            assert (d / "window.json").read_text() == f"{i}\n"


def test_a_refused_group_commit_fails_only_the_files_that_did_not_fit(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"w{i}").mkdir()
    child = run_limited(
        """
        names = sys.argv[1:]
        fds = [os.open(n, os.O_RDONLY | os.O_DIRECTORY) for n in names]
        spare = durable.make_spare(fds[1], "window.json")
        items = [(fd, b"x" * (50 if i % 2 else 5), spare if i == 1 else None)
                 for i, fd in enumerate(fds)]
        print(" ".join(type(e).__name__ for e in durable.write_group("window.json", items)))
        """,
        10,
        *(str(tmp_path / f"w{i}") for i in range(6)),
    )
    assert child.stdout.split() == ["NoneType", "OSError"] * 3, child.stderr
    for i in range(6):
        listed = os.listdir(tmp_path / f"w{i}")
        assert listed == ([] if i % 2 else ["window.json"])  # no temporary file left


def test_unused_spares_are_dropped(tmp_path: Path) -> None:
    dfd = open_dir(tmp_path)
    try:
        spare = durable.make_spare(dfd, "window.json")
        assert os.listdir(tmp_path) == [spare.name] and durable.is_tmp_name(spare.name)
        durable.drop_spares([spare])
    finally:
        os.close(dfd)
    assert os.listdir(tmp_path) == []


def test_directories_made_moved_and_built_whole(tmp_path: Path) -> None:
    root = open_dir(tmp_path)
    try:
        assert durable.mkdir_at(root, "pending", 0o750) is True
        assert durable.mkdir_at(root, "pending", 0o750) is False
        durable.mkdir_at(root, "delivered", 0o750)
        pending, delivered = open_dir(tmp_path / "pending"), open_dir(tmp_path / "delivered")
        try:
            files = {"event.json": b"{}\n", "sink.a.json": b"[]\n"}
            durable.write_dir_at(pending, "e1", files, dir_mode=0o750, file_mode=0o640)
            assert sorted(os.listdir(tmp_path / "pending" / "e1")) == sorted(files)
            # A name already taken (not empty): refused, and no temporary directory left.
            with pytest.raises(OSError):
                durable.write_dir_at(pending, "e1", files, dir_mode=0o750, file_mode=0o640)
            assert os.listdir(tmp_path / "pending") == ["e1"]
            durable.move_at(pending, "e1", delivered)
        finally:
            os.close(pending)
            os.close(delivered)
    finally:
        os.close(root)
    assert os.listdir(tmp_path / "pending") == []
    assert (tmp_path / "delivered" / "e1" / "event.json").read_bytes() == b"{}\n"


def test_a_directory_that_cannot_be_filled_never_appears(tmp_path: Path) -> None:
    child = run_limited(
        """
        dfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        try:
            durable.write_dir_at(dfd, "e1", {"event.json": b"x" * 100}, dir_mode=0o750,
                                 file_mode=0o640)
        except OSError as exc:
            print(exc.errno)
        """,
        10,
        str(tmp_path),
    )
    assert child.stdout.split() == [str(errno.EFBIG)], child.stderr
    assert os.listdir(tmp_path) == []
