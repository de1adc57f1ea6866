"""One window from arming to verdict: the schedule, the files it leaves, and the two rules."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest

from support.series import ACTIONS, STATUSES

if TYPE_CHECKING:
    from e2e.conftest import Harness

ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "tick": int,
    "scheduled_ts": float,
    "ts": float,
    "health_ok": bool,
    "health_code": int,
    "total": int,
    "fivexx": int,
    "latency_ms": (int, float),
    "detail": str,
}
# INCONCLUSIVE needs a control probe, which no window of these tests has.
DONE_STATUSES = set(STATUSES) - {"INCONCLUSIVE"}
DONE_ACTIONS = set(ACTIONS)


def check_row_shape(row: dict[str, Any]) -> None:
    """A `series.jsonl` line has at least the contract's fields, with their types."""
    for name, kind in ROW_FIELDS.items():
        assert name in row, f"series row lacks {name!r}: {row}"
        assert isinstance(row[name], kind), f"{name} is {type(row[name]).__name__}: {row}"
    assert not isinstance(row["tick"], bool) and not isinstance(row["total"], bool)


def check_done_shape(done: dict[str, Any]) -> None:
    """`done` holds the contract's fields with their types."""
    assert done["status"] in DONE_STATUSES
    assert done["action_taken"] in DONE_ACTIONS
    assert isinstance(done["reason"], str) and done["reason"].strip()
    assert isinstance(done["checks_total"], int)
    assert isinstance(done["checks_failed"], int)
    assert isinstance(done["window_s"], int | float)
    finished = dt.datetime.fromisoformat(done["finished_at"])
    assert finished.tzinfo is not None, "finished_at must carry its time zone"


def test_healthy_window_writes_done_report_and_series_on_schedule(pd: Harness) -> None:
    """A service that stays green: HEALTHY/NONE, every tick on the contract's schedule."""
    # A first tick 1 s after arming leaves the daemon time to notice the sentinel, so no
    # tick is skipped and the numbers run 0..max_ticks-1.
    pd.configure(
        {"shop": pd.repo(window_s=1.5, interval_s=0.5, initial_delay_s=1.0, probe_timeout_s=0.4)}
    )
    run = pd.start()
    armed = pd.arm("shop", "w1", "commit=abc123")
    armed_at = armed.stat().st_mtime

    finished = run.wait_for("window.finished", work_item="w1")
    assert finished["repo"] == "shop"

    done = pd.done("shop", "w1")
    check_done_shape(done)
    assert (done["status"], done["action_taken"]) == ("HEALTHY", "NONE")
    assert (done["checks_total"], done["checks_failed"]) == (3, 0)
    assert done["window_s"] == pytest.approx(1.5)

    front = pd.report_front_matter("shop", "w1")
    assert front["post_deploy_status"] == "HEALTHY"
    assert front["action_taken"] == "NONE"
    assert front["work_item"] == "w1"
    assert front["window_s"] == pytest.approx(1.5)
    assert (front["checks_total"], front["checks_failed"]) == (3, 0)

    rows = pd.rows("shop", "w1")
    for row in rows:
        check_row_shape(row)
    assert [row["tick"] for row in rows] == [0, 1, 2]
    for row in rows:
        expected = armed_at + 1.0 + row["tick"] * 0.5
        assert row["scheduled_ts"] == pytest.approx(expected, abs=1e-3)
        assert row["ts"] >= row["scheduled_ts"] - 0.05, "a tick ran before its time"
        assert (row["health_ok"], row["health_code"]) == (True, 200)
        assert (row["total"], row["fivexx"]) == (2, 0)
    # One tick = one probe of each path; nothing more after the last tick.
    assert pd.service.hits("/health") == 3
    assert pd.service.hits("/status") == pd.service.hits("/queue") == 3


@pytest.mark.parametrize(("health", "code"), [("fail", 503), ("degraded", 200)])
def test_failing_health_degrades_after_fail_threshold_probes_and_stops(
    pd: Harness, health: str, code: int
) -> None:
    """Health fails from the start (a 503, or a 200 whose JSON status is not "ok"): DEGRADED
    after exactly fail_threshold rows, then silence."""
    pd.configure({"shop": pd.repo(window_s=5.0, fail_threshold=3)})
    pd.service.set(health=health)
    run = pd.start()
    pd.touch_armed("shop", "w1")

    run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    check_done_shape(done)
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    assert (done["checks_total"], done["checks_failed"]) == (3, 3)
    assert "3" in done["reason"], "the reason names the threshold"

    rows = pd.rows("shop", "w1")
    assert len(rows) == 3
    assert all(not row["health_ok"] and row["health_code"] == code for row in rows)
    assert [row["tick"] for row in rows] == sorted({row["tick"] for row in rows})

    # Probing stopped at the verdict: once the daemon is gone, count the requests it made.
    assert run.stop(signal.SIGTERM) == 0
    assert pd.service.hits("/health") == 3
    assert len(pd.rows("shop", "w1")) == 3


def test_fivexx_ratio_degrades_while_health_is_ok(pd: Harness) -> None:
    """/health says 200 but the other paths answer 503: DEGRADED on the 5xx ratio."""
    pd.configure(
        {"shop": pd.repo(window_s=5.0, fivexx_threshold=0.25, min_samples=4, fail_threshold=3)}
    )
    pd.service.set(status_code=503)
    run = pd.start()
    pd.touch_armed("shop", "w1")

    run.wait_for("window.finished", work_item="w1")
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    assert "0.25" in done["reason"], "the reason names the threshold"
    rows = pd.rows("shop", "w1")
    # Two paths per tick: min_samples (4) is reached after two ticks, and the ratio is 1.0.
    assert len(rows) == 2
    for row in rows:
        assert (row["health_ok"], row["health_code"]) == (True, 200)
        assert (row["total"], row["fivexx"]) == (2, 2)
    assert (done["checks_total"], done["checks_failed"]) == (2, 2)


def test_unreachable_and_hanging_targets_count_as_failures(pd: Harness) -> None:
    """No answer at all (a closed port) or no answer in time (a listener that never accepts):
    failed health with code 0, and every 5xx-path request counted in `fivexx`."""
    with socket.socket() as closed, socket.socket() as hung:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # connections complete in the backlog but nobody ever answers
        urls = {
            "closed": f"http://127.0.0.1:{closed.getsockname()[1]}",
            "hung": f"http://127.0.0.1:{hung.getsockname()[1]}",
        }
        pd.configure(
            {
                # min_samples out of reach: the health streak decides, after three rows.
                name: pd.repo(base_url=url, window_s=5.0, fail_threshold=3, min_samples=100)
                for name, url in urls.items()
            }
        )
        run = pd.start()
        for name in urls:
            pd.touch_armed(name, "w1")
        for name in urls:
            run.wait_for("window.finished", repo=name, work_item="w1")

    for name in urls:
        done = pd.done(name, "w1")
        assert (done["status"], done["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
        rows = pd.rows(name, "w1")
        assert len(rows) == 3, (name, done, rows)
        for row in rows:
            assert (row["health_ok"], row["health_code"]) == (False, 0)
            assert (row["total"], row["fivexx"]) == (2, 2)


def test_single_early_5xx_does_not_trip_before_min_samples(pd: Harness) -> None:
    """One 5xx on the very first request is a ratio of 1.0, but on too few samples to judge."""
    pd.configure(
        {
            "shop": pd.repo(
                fivexx_paths=["/status"],
                fivexx_threshold=0.4,
                min_samples=4,
                window_s=1.8,
                interval_s=0.3,
                initial_delay_s=0.3,
                probe_timeout_s=0.25,
            )
        }
    )
    # The service answers 503 to the first /status request only, decided inside the server.
    server = pd.service._server
    count = server.count

    def count_then_recover(path: str) -> None:
        count(path)
        if path == "/status":
            server.update({"status_code": 200})

    server.count = count_then_recover  # type: ignore[method-assign]
    pd.service.set(status_code=503)

    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")

    rows = pd.rows("shop", "w1")
    assert rows[0]["fivexx"] == 1 and rows[0]["total"] == 1
    assert sum(row["fivexx"] for row in rows) == 1
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("HEALTHY", "NONE"), done["reason"]
    assert done["checks_failed"] == 1


def test_touching_armed_again_changes_nothing(pd: Harness) -> None:
    """A second touch of `armed` after the window started moves neither its start nor ticks."""
    pd.configure(
        {"shop": pd.repo(window_s=1.0, interval_s=0.25, initial_delay_s=0.25, probe_timeout_s=0.2)}
    )
    run = pd.start()
    armed = pd.touch_armed("shop", "w1")
    armed_at = armed.stat().st_mtime
    pd.wait_rows("shop", "w1", 1)

    later = time.time() + 0.5
    os.utime(armed, (later, later))

    run.wait_for("window.finished", work_item="w1")
    rows = pd.rows("shop", "w1")
    ticks = [row["tick"] for row in rows]
    assert ticks == sorted(set(ticks)) and ticks[-1] == 3
    for row in rows:
        expected = armed_at + 0.25 + row["tick"] * 0.25
        assert row["scheduled_ts"] == pytest.approx(expected, abs=1e-3)
    assert len(run.find("window.armed", work_item="w1")) == 1
    assert pd.done("shop", "w1")["status"] == "HEALTHY"


def test_future_armed_time_counts_as_now(pd: Harness) -> None:
    """A sentinel dated an hour ahead (a skewed deploy host) starts its window now."""
    pd.configure({"shop": pd.repo(window_s=1.0)})
    run = pd.start()
    item = pd.item("shop", "w1")
    item.mkdir(parents=True)
    tmp = item / ".armed.tmp"
    tmp.write_text("")
    future = time.time() + 3600
    os.utime(tmp, (future, future))
    tmp.rename(item / "armed")

    run.wait_for("window.finished", work_item="w1")
    rows = pd.rows("shop", "w1")
    assert rows and all(row["scheduled_ts"] < future - 3000 for row in rows)
    assert pd.done("shop", "w1")["status"] == "HEALTHY"


def test_done_window_is_never_restarted(pd: Harness) -> None:
    """A directory with `done` is finished for good: no new rows after restarts and touches."""
    pd.configure({"shop": pd.repo(window_s=1.0)})
    run = pd.start()
    armed = pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    assert run.stop() == 0

    item = pd.item("shop", "w1")
    before = {name: (item / name).read_bytes() for name in ("series.jsonl", "done", "report.md")}

    run = pd.start()
    # Poke it the ways that would restart a careless daemon: touch, cancel after the verdict.
    os.utime(armed)
    (item / "cancel").write_text("")
    # A second window, run to its end, proves the daemon has looked at the directory since.
    pd.touch_armed("shop", "w2")
    run.wait_for("window.finished", work_item="w2")

    after = {name: (item / name).read_bytes() for name in before}
    assert after == before
    for event in ("window.armed", "window.resumed", "window.finished", "window.cancel_requested"):
        assert run.find(event, work_item="w1") == [], event
