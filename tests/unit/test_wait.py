"""`postdeploy.wait`: the exit-code table, progress lines, the incremental series reader, the
rollback refusals and the rollback client against files written by hand (no daemon)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postdeploy import layout, wait
from postdeploy.durable import write_atomic_at
from postdeploy.layout import ItemKey, open_item_dir
from postdeploy.series import ProbeRow

KEY = ItemKey("shop", "w1")
DEADLINE_S = 30.0  # only reached when something is wrong

# (status, action_taken, exit code): the contract's table, every status and action.
EXIT_TABLE = [
    ("HEALTHY", "NONE", 0),
    ("DEGRADED", "SHADOW", 0),
    *[
        ("DEGRADED", action, 1)
        for action in ("ALERT_ONLY", "ROLLBACK_OK", "ROLLBACK_FAILED", "ROLLBACK_UNKNOWN")
    ],
    *[
        (status, "NONE", 3)
        for status in ("INCONCLUSIVE", "CANCELLED", "SUPERSEDED", "MISSED", "DISABLED", "ERROR")
    ],
    ("SOMETHING_NEW", "NONE", 3),  # a status this client does not know: never a pass
    (None, None, 3),  # no status at all
]


@pytest.mark.parametrize(("status", "action", "code"), EXIT_TABLE)
def test_verdict_exit_table(status: str | None, action: str | None, code: int) -> None:
    done = {} if status is None else {"status": status, "action_taken": action}
    assert wait.verdict_exit(done) == code


def test_verdict_exit_rejected_is_no_verdict() -> None:
    assert wait.verdict_exit(None, rejected=True) == 3


def _row(tick: int, ok: bool = True, **extra: Any) -> ProbeRow:
    """A probed tick at 12.4 ms, two 5xx paths (one failing when the health check fails)."""
    code, detail = (200, "health ok") if ok else (503, "health: HTTP 503")
    fields: dict[str, Any] = {"health_code": code, "detail": detail, **extra}
    times: dict[str, Any] = {
        "scheduled_ts": 1000.0 + tick,
        "ts": 1000.001 + tick,
        "latency_ms": 12.4,
    }
    return ProbeRow(tick=tick, health_ok=ok, total=2, fivexx=int(not ok), **times, **fields)


PROGRESS = [
    (_row(2), 20, 0, "tick 3/20: health ok (200, 12 ms), 5xx 0/2"),
    (_row(3, ok=False), 20, 1, "tick 4/20: health FAILED (503, 12 ms), 5xx 1/2; 1 failed so far: "),
    (_row(0, ok=False, health_code=0), None, 1, "tick 1: health FAILED (no answer), 5xx 1/2; 1 fa"),
    (_row(7, catch_up=True), 8, 2, "tick 8/8: health ok (200, 12 ms), 5xx 0/2 (catch-up after"),
]


@pytest.mark.parametrize(("row", "max_ticks", "failed", "start"), PROGRESS)
def test_progress_line(row: ProbeRow, max_ticks: int | None, failed: int, start: str) -> None:
    line = wait.progress_line(row, max_ticks, failed)
    assert line.startswith(start), line
    assert "\n" not in line


def test_outcome_line_and_json() -> None:
    done = {"status": "HEALTHY", "action_taken": "NONE", "reason": "10 checks passed"}
    assert wait.outcome_line(done) == "HEALTHY / NONE: 10 checks passed"
    assert json.loads(wait.outcome_json(KEY, done, None)) == {
        **done,
        "repo": "shop",
        "work_item": "w1",
    }
    rejected = json.loads(wait.outcome_json(KEY, None, "armed is not valid JSON"))
    assert rejected["status"] == "REJECTED" and rejected["rejected"] is True
    assert (rejected["repo"], rejected["work_item"]) == ("shop", "w1")


# (done or None, names present, refused?)
REFUSALS: list[tuple[dict[str, Any] | None, set[str], bool]] = [
    (None, {"armed"}, False),  # an open window: the daemon ends it and rolls back
    ({"status": "DEGRADED", "action_taken": "ALERT_ONLY"}, {"armed", "done"}, False),
    ({"status": "DEGRADED", "action_taken": "SHADOW"}, {"armed", "done"}, False),
    ({"status": "HEALTHY", "action_taken": "NONE"}, {"armed", "done"}, True),
    ({"status": "CANCELLED", "action_taken": "NONE"}, {"armed", "done"}, True),
    ({"status": "DEGRADED", "action_taken": "ROLLBACK_OK"}, {"done"}, True),
    ({"status": "DEGRADED", "action_taken": "ROLLBACK_FAILED"}, {"done"}, True),
    ({"status": "DEGRADED", "action_taken": "ROLLBACK_UNKNOWN"}, {"done"}, True),
    (
        {"status": "DEGRADED", "action_taken": "ALERT_ONLY", "manual_rollback": {"action": "X"}},
        {"done"},
        True,
    ),
    (None, {"armed", "rollback.request"}, True),
    (None, {"armed", "rollback.intent"}, True),
    (None, {"armed", "rejected"}, True),
    (None, set(), True),  # not armed
]


@pytest.mark.parametrize(("done", "present", "refused"), REFUSALS)
def test_rollback_refusal_table(
    done: dict[str, Any] | None, present: set[str], refused: bool
) -> None:
    reason = wait.rollback_refusal(done, present)
    assert (reason is not None) == refused, reason


ANSWERS: list[tuple[dict[str, Any] | None, tuple[int, str] | None]] = [
    (None, None),
    ({"status": "DEGRADED", "action_taken": "ALERT_ONLY"}, None),  # not answered yet
    (
        {
            "status": "DEGRADED",
            "action_taken": "ALERT_ONLY",
            "manual_rollback": {"action": "ROLLBACK_OK", "detail": "exit code 0"},
        },
        (0, "rollback ROLLBACK_OK: exit code 0"),
    ),
    (
        {
            "status": "DEGRADED",
            "action_taken": "SHADOW",
            "manual_rollback": {"action": "ROLLBACK_FAILED"},
        },
        (1, "rollback ROLLBACK_FAILED: None"),
    ),
    (
        {"status": "DEGRADED", "manual_rollback": {"action": "ROLLBACK_UNKNOWN"}, "reason": "r"},
        (1, "rollback ROLLBACK_UNKNOWN: r"),
    ),
]


@pytest.mark.parametrize(("done", "answer"), ANSWERS)
def test_rollback_answer_table(done: dict[str, Any] | None, answer: tuple[int, str] | None) -> None:
    assert wait.rollback_answer(done) == answer


# -- the series reader --------------------------------------------------------------------


def _item(root: Path, key: ItemKey = KEY) -> Path:
    path = root / key.repo / key.work_item
    path.mkdir(parents=True, exist_ok=True)
    return path


def _line(tick: int, ok: bool = True) -> bytes:
    return json.dumps(_row(tick, ok).to_dict()).encode() + b"\n"


def test_series_tail_reads_only_new_complete_lines(state_root: Path) -> None:
    item = _item(state_root)
    tail = wait.SeriesTail()
    with open_item_dir(state_root, KEY) as dfd:
        assert tail.read(dfd) == []  # no file yet
        (item / "series.jsonl").write_bytes(_line(0) + _line(1, ok=False) + b'{"tick": 2, "sch')
        assert [r.tick for r in tail.read(dfd)] == [0, 1]
        assert tail.failed == 1
        assert tail.read(dfd) == []  # the torn line is not consumed ...
        with (item / "series.jsonl").open("ab") as f:  # ... until it is complete
            f.write(b'eduled_ts": 1002.0, "ts": 1002.0, "health_ok": true, "health_code": 200, ')
            f.write(b'"total": 2, "fivexx": 0, "latency_ms": 1.0, "detail": "ok"}\n')
            f.write(b"not json\n" + _line(1) + _line(3))  # junk and a repeated tick: skipped
        assert [r.tick for r in tail.read(dfd)] == [2, 3]
        # The file replaced by a shorter one: read again from the start, nothing twice.
        (item / "series.jsonl").write_bytes(_line(0) + _line(4))
        assert [r.tick for r in tail.read(dfd)] == [4]


def test_series_tail_never_follows_a_symlink(state_root: Path, outside: Path) -> None:
    (outside / "rows").write_bytes(_line(0))
    (_item(state_root) / "series.jsonl").symlink_to(outside / "rows")
    with open_item_dir(state_root, KEY) as dfd:
        assert wait.SeriesTail().read(dfd) == []


# -- waiting on files written by hand --------------------------------------------------------


def _write(root: Path, name: str, data: bytes, key: ItemKey = KEY) -> None:
    _item(root, key)
    with open_item_dir(root, key) as dfd:
        write_atomic_at(dfd, name, data)


def _wait(root: Path, timeout: float | None = DEADLINE_S, **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = wait.wait_for_verdict(
        root, KEY, timeout=timeout, as_json=kw.get("as_json", False), out=out, err=err
    )
    return code, out.getvalue(), err.getvalue()


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_finished_item_answers_at_once(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    _write(
        state_root, "done", b'{"status": "DEGRADED", "action_taken": "ALERT_ONLY", "reason": "r"}'
    )
    assert _wait(state_root, timeout=0)[:2] == (1, "DEGRADED / ALERT_ONLY: r\n")


def test_rejected_answers_3(state_root: Path) -> None:
    _write(state_root, "armed", b"[1]")
    _write(state_root, "rejected", b"armed must hold a JSON object, not list\n")
    code, out, _ = _wait(state_root, timeout=0)
    assert (code, out) == (3, "REJECTED: armed must hold a JSON object, not list\n")


def test_timeout_is_124_and_nothing_is_written(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    before = sorted(p.name for p in (state_root / "shop" / "w1").iterdir())
    code, out, err = _wait(state_root, timeout=0.05)
    assert (code, out) == (124, "")
    assert "no verdict within" in err
    assert sorted(p.name for p in (state_root / "shop" / "w1").iterdir()) == before


def test_waits_for_an_item_that_does_not_exist_yet(state_root: Path) -> None:
    """Neither the repo nor the item exists: the first stderr line says so; then the whole
    item appears (as the daemon would write it) and the wait answers."""
    out, err = io.StringIO(), io.StringIO()
    thread, result = _in_thread(
        lambda: wait.wait_for_verdict(
            state_root, KEY, timeout=DEADLINE_S, as_json=True, out=out, err=err
        )
    )
    _until("the first progress line", lambda: "not armed yet" in err.getvalue())
    _write(state_root, "armed", b"")
    _write(state_root, "window.json", b'{"max_ticks": 2}')
    with (state_root / "shop" / "w1" / "series.jsonl").open("ab") as f:
        f.write(_line(0) + _line(1, ok=False))
    _write(state_root, "done", b'{"status": "HEALTHY", "action_taken": "NONE", "reason": "ok"}')
    thread.join(DEADLINE_S)
    assert result == [0]
    assert json.loads(out.getvalue())["work_item"] == "w1"
    lines = err.getvalue().splitlines()
    assert any(line.startswith("tick 1/2: health ok") for line in lines), lines
    assert any(line.startswith("tick 2/2: health FAILED (503") for line in lines), lines


def test_an_unparsable_done_is_read_again_then_exit_2(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    _write(state_root, "done", b'{"status": "HEAL')
    code, _, err = _wait(state_root)
    assert code == 2
    assert str(state_root / "shop" / "w1" / "done") in err


def test_a_done_repaired_before_the_last_try_is_read(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    _write(state_root, "done", b"{")
    err = io.StringIO()
    thread, result = _in_thread(
        lambda: wait.wait_for_verdict(
            state_root, KEY, timeout=DEADLINE_S, as_json=False, out=io.StringIO(), err=err
        )
    )
    # Written at once: the first re-read (BAD_DONE_RETRY_S later) already sees it.
    _write(state_root, "done", b'{"status": "CANCELLED", "action_taken": "NONE", "reason": "x"}')
    thread.join(DEADLINE_S)
    assert result == [3]


def test_a_symlinked_item_is_never_followed(state_root: Path, outside: Path) -> None:
    (outside / "done").write_text('{"status": "HEALTHY"}')
    (state_root / "shop").mkdir()
    (state_root / "shop" / "w1").symlink_to(outside)
    code, out, err = _wait(state_root, timeout=0)
    assert (code, out) == (2, "")
    assert "never followed" in err


# -- the rollback client ---------------------------------------------------------------------


def _rollback(root: Path, timeout: float | None = DEADLINE_S) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = wait.request_rollback(root, KEY, reason="p99 doubled", timeout=timeout, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


DEGRADED_ALERT = b'{"status": "DEGRADED", "action_taken": "ALERT_ONLY", "reason": "r"}'


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"done": b'{"status": "HEALTHY", "action_taken": "NONE"}'}, "not DEGRADED"),
        ({"done": b'{"status": "DEGRADED", "action_taken": "ROLLBACK_OK"}'}, "already rolled"),
        (
            {"done": b'{"status": "DEGRADED", "action_taken": "NONE", "manual_rollback": 1}'},
            "person's rollback already ran",
        ),
        ({"done": DEGRADED_ALERT, "rollback.request": b"{}"}, "already requested"),
        ({"rollback.intent": b"{}"}, "already started"),
    ],
)
def test_rollback_refused_before_writing(
    state_root: Path, files: dict[str, bytes], why: str
) -> None:
    _write(state_root, "armed", b"")
    for name, data in files.items():
        _write(state_root, name, data)
    before = sorted(p.name for p in (state_root / "shop" / "w1").iterdir())
    code, out, err = _rollback(state_root)
    assert (code, out) == (3, "")
    assert why in err
    assert sorted(p.name for p in (state_root / "shop" / "w1").iterdir()) == before


def test_rollback_of_a_missing_item_is_a_usage_error(state_root: Path) -> None:
    assert _rollback(state_root)[0] == 2
    assert not (state_root / "shop").exists()


def test_write_request_is_exclusive_under_a_race(state_root: Path) -> None:
    """Eight clients at once: exactly one request is written; the others learn it exists."""
    _write(state_root, "armed", b"")
    barrier = threading.Barrier(8)

    def one(n: int) -> bool:
        with open_item_dir(state_root, KEY) as dfd:
            barrier.wait()
            return wait.write_request(dfd, {"reason": f"client {n}"})

    results: list[bool] = []
    threads = [threading.Thread(target=lambda n=n: results.append(one(n))) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert sorted(results) == [False] * 7 + [True]
    body = json.loads((state_root / "shop" / "w1" / "rollback.request").read_text())
    assert body["reason"].startswith("client ")


def _answer_after_request(root: Path, name: str, data: bytes) -> tuple[int, str, str]:
    """Run the client; once its request is on disk, write the daemon's answer by hand."""
    request = root / "shop" / "w1" / layout.ROLLBACK_REQUEST
    thread, result = _in_thread(lambda: _rollback(root))
    _until("the request", request.is_file)
    body = json.loads(request.read_text())
    assert body["reason"] == "p99 doubled"
    assert body["requested_by"] and isinstance(body["at"], float)
    assert request.stat().st_mode & 0o777 == 0o644 & ~_umask()
    _write(root, name, data)
    thread.join(DEADLINE_S)
    assert result, "the client did not return"
    code, out, err = result[0]
    return int(code), str(out), str(err)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_rollback_answered_by_refused(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    code, out, err = _answer_after_request(
        state_root, layout.ROLLBACK_REFUSED, b"the window ended HEALTHY meanwhile\n"
    )
    assert (code, out) == (3, "")
    assert "the window ended HEALTHY meanwhile" in err


@pytest.mark.parametrize(
    ("action", "code"), [("ROLLBACK_OK", 0), ("ROLLBACK_FAILED", 1), ("ROLLBACK_UNKNOWN", 1)]
)
def test_rollback_answered_by_done(state_root: Path, action: str, code: int) -> None:
    _write(state_root, "armed", b"")
    _write(state_root, "done", DEGRADED_ALERT)
    done = json.loads(DEGRADED_ALERT) | {
        "manual_rollback": {"action": action, "detail": "hook ran"}
    }
    got = _answer_after_request(state_root, "done", json.dumps(done).encode())
    assert got[:2] == (code, f"rollback {action}: hook ran\n")


def test_rollback_times_out_with_124(state_root: Path) -> None:
    _write(state_root, "armed", b"")
    code, out, err = _rollback(state_root, timeout=0.05)
    assert (code, out) == (124, "")
    assert "no answer" in err
    assert (state_root / "shop" / "w1" / layout.ROLLBACK_REQUEST).is_file()
    # Asked again: refused, someone (here: the first call) already asked.
    assert _rollback(state_root)[0] == 3
