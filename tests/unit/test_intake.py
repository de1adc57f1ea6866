"""Intake's decision (`intake.judge`): one look at an item directory in, what to do out."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest

from postdeploy import layout
from postdeploy.intake import (
    QUIET_S,
    Arm,
    Decision,
    Look,
    Quiet,
    Reject,
    Resume,
    Settled,
    Unarmed,
    judge,
)
from postdeploy.verdict import Status

SEEN = 1000.0  # the look's wall time
START = {
    "armed_at": 990.0,
    "initial_delay_s": 30.0,
    "interval_s": 30.0,
    "max_ticks": 4,
    "window_s": 120.0,
    "first_seen_at": 990.2,
    "metadata": {"branch": "main"},
}


def armed_stat(mtime: float, *, ino: int = 7, size: int = 0) -> os.stat_result:
    ns = int(mtime * 1e9)
    return os.stat_result(
        (stat.S_IFREG | 0o644, ino, 1, 1, 0, 0, size, 0, 0, 0, mtime, mtime, mtime, ns, ns, ns)
    )


def look(
    files: dict[str, str] | None = None,
    *,
    mtime: float | None = 900.0,
    data: bytes | None = b"",
    window: dict[str, Any] | bytes | None = None,
) -> Look:
    """A look at a directory holding `files` (name -> kind); `armed` is a quiet, empty
    regular file with `mtime` unless said otherwise."""
    names = {layout.ARMED, layout.DONE, layout.REJECTED, layout.CANCEL, layout.WINDOW}
    names |= {layout.SERIES, layout.VERIFY, layout.ROLLBACK_INTENT, layout.ROLLBACK_RESULT}
    names |= {layout.ROLLBACK_LOG, layout.REPORT}
    kinds: dict[str, str | None] = dict.fromkeys(names)
    kinds.update({layout.ARMED: "file"} if files is None else files)
    raw = json.dumps(window).encode() if isinstance(window, dict) else window
    st = armed_stat(mtime) if mtime is not None and kinds[layout.ARMED] == "file" else None
    return Look(kinds, st, data if st is not None else None, SEEN, raw, b"")


def decide(lk: Look, *, known: bool = True, enabled: bool = True) -> Decision:
    return judge(lk, repo="shop", known=known, enabled=enabled)


A, W = layout.ARMED, layout.WINDOW

CASES: list[tuple[str, Look, dict[str, bool], Decision]] = [
    # -- settled for good
    ("done", look({A: "file", layout.DONE: "file"}), {}, Settled(900.0)),
    (
        "done, armed in the future",
        look({A: "file", layout.DONE: "file"}, mtime=5000.0),
        {},
        Settled(SEEN),
    ),
    ("done without armed", look({layout.DONE: "file"}), {}, Settled(None)),
    ("rejected", look({A: "file", layout.REJECTED: "file"}), {}, Settled(None)),
    ("done beats a broken armed", look({A: "symlink", layout.DONE: "file"}), {}, Settled(None)),
    # -- not armed yet, or armed with something that is not a file
    ("no armed yet", look({}), {}, Unarmed()),
    (
        "armed is a symlink",
        look({A: "symlink"}),
        {},
        Reject("armed is a symlink, not a regular file; it is not followed"),
    ),
    (
        "armed is a directory",
        look({A: "dir"}),
        {},
        Reject("armed is a dir, not a regular file; it is not followed"),
    ),
    (
        "armed replaced between two calls",
        look({A: "file"}, mtime=None),
        {},
        Reject("armed is not a regular file; it is not followed"),
    ),
    ("unknown repo", look(), {"known": False}, Reject("no [repos.shop] section in the config")),
    # -- the daemon's own files must be regular files or absent
    (
        "series is a symlink, new window",
        look({A: "file", layout.SERIES: "symlink"}),
        {},
        Reject("series.jsonl is a symlink, not a regular file; it is never followed"),
    ),
    (
        "window.json is a FIFO",
        look({A: "file", W: "other"}),
        {},
        Reject("window.json is a other, not a regular file; it is never followed"),
    ),
    # -- a new window
    ("new, quiet", look(), {}, Arm({}, 900.0, None, False)),
    (
        "new, with metadata",
        look(data=b'{"branch": "main", "commit": "abc"}'),
        {},
        Arm({"branch": "main", "commit": "abc"}, 900.0, None, False),
    ),
    ("new, armed in the future counts as now", look(mtime=5000.0), {}, Arm({}, SEEN, None, False)),
    (
        "new, cancelled already",
        look({A: "file", layout.CANCEL: "file"}),
        {},
        Arm({}, 900.0, None, False),
    ),  # stop checked below: Verdict has no equality by status only
    (
        "new, bad metadata",
        look(data=b'{"branch": 1}'),
        {},
        Reject("metadata value of 'branch' must be a string"),
    ),
    ("new, not JSON", look(data=b"{nope"), {}, Reject("armed is not valid JSON")),
    # -- not quiet yet: look again once it can be
    (
        "written 30 ms ago",
        look(mtime=SEEN - 0.03, data=None),
        {},
        Quiet((7, 0, int((SEEN - 0.03) * 1e9)), QUIET_S - 0.03),
    ),
    (
        "mtime in the future, unread",
        look(mtime=SEEN + 60, data=None),
        {},
        Quiet((7, 0, int((SEEN + 60) * 1e9)), QUIET_S),
    ),
]


@pytest.mark.parametrize(
    ("lk", "options", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_judge(lk: Look, options: dict[str, bool], expected: Decision) -> None:
    got = decide(lk, **options)
    if isinstance(expected, Arm):
        assert isinstance(got, Arm)
        assert (got.metadata, got.armed_at, got.reacting) == (
            expected.metadata,
            expected.armed_at,
            expected.reacting,
        )
    elif isinstance(expected, Reject):
        assert isinstance(got, Reject)
        assert got.reason.startswith(expected.reason), got.reason
    elif isinstance(expected, Quiet):
        assert isinstance(got, Quiet)
        assert got.identity == expected.identity
        assert got.delay == pytest.approx(expected.delay, abs=1e-6)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("files", "enabled", "status"),
    [
        ({A: "file"}, True, None),
        ({A: "file", layout.CANCEL: "file"}, True, Status.CANCELLED),
        ({A: "file"}, False, Status.DISABLED),
        ({A: "file", layout.CANCEL: "file"}, False, Status.CANCELLED),  # cancel says more
    ],
)
def test_a_new_window_is_recorded_even_when_it_ends_at_once(
    files: dict[str, str], enabled: bool, status: Status | None
) -> None:
    got = decide(look(files), enabled=enabled)
    assert isinstance(got, Arm)
    assert (got.stop.status if got.stop else None) == status


@pytest.mark.parametrize(
    ("files", "window", "enabled", "status", "reason"),
    [
        ({A: "file", W: "file"}, START, True, None, None),
        ({A: "file", W: "file", layout.CANCEL: "file"}, START, True, Status.CANCELLED, None),
        ({A: "file", W: "file"}, START, False, Status.DISABLED, None),
        ({A: "file", W: "file"}, b"{torn", True, Status.ERROR, "window.json is unreadable"),
        ({A: "file", W: "file"}, b"[1, 2]", True, Status.ERROR, "window.json is unreadable"),
        ({A: "file", W: "file"}, {"armed_at": 1}, True, Status.ERROR, "window.json is unreadable"),
        # A window under way whose report.md became a symlink ends, loudly, as ERROR.
        (
            {A: "file", W: "file", layout.REPORT: "symlink"},
            START,
            True,
            Status.ERROR,
            "report.md is a symlink, not a regular file; the window cannot go on",
        ),
    ],
)
def test_resume(
    files: dict[str, str],
    window: dict[str, Any] | bytes,
    enabled: bool,
    status: Status | None,
    reason: str | None,
) -> None:
    got = decide(look(files, window=window), enabled=enabled)
    assert isinstance(got, Resume)
    assert (got.stop.status if got.stop else None) == status
    if reason is not None:
        assert got.stop is not None and got.stop.reason.startswith(reason), got.stop
    if status is not Status.ERROR:
        assert got.start is not None and got.start.schedule.armed_at == START["armed_at"]


@pytest.mark.parametrize("intent", [True, False])
def test_a_rollback_under_way_is_reported_as_reacting(intent: bool) -> None:
    files = {A: "file", W: "file"} | ({layout.ROLLBACK_INTENT: "file"} if intent else {})
    got = decide(look(files, window=START))
    assert isinstance(got, Resume) and got.reacting is intent
