"""`postdeploy status` (rich view and --json) and `postdeploy show REPO ITEM`."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from postdeploy import status, view
from postdeploy.config import load_config, parse_config
from postdeploy.layout import ItemKey
from support.series import series_line

if TYPE_CHECKING:
    from ops.conftest import Ops

HERE = Path(__file__).parent
SNAPSHOT = HERE / "status_snapshot.json"
EXPECTED = HERE / "status_snapshot.txt"


def test_status_view_snapshot() -> None:
    """A fixed snapshot drawn 100 columns wide, without colour, is exactly the stored text.
    Regenerate after an intended change: UPDATE_SNAPSHOTS=1 pytest tests/ops -k snapshot."""
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    console = Console(
        width=100, record=True, color_system=None, file=io.StringIO(), legacy_windows=False
    )
    view.render(snapshot, console)
    # Trailing spaces are dropped: rich pads every line, editors strip them.
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        EXPECTED.write_text(text, encoding="utf-8")
    assert text == EXPECTED.read_text(encoding="utf-8")
    # What the screen must show, independently of its layout:
    for needle in (
        "Open windows (2)",
        "tick 4/10",  # progress in ticks ...
        "2m of 5m",  # ... and in time
        "▂█·▄✗",  # latency sparkline: a gap (skipped tick 2) and a failed tick
        "health streak 1/3",
        "5xx 1/8 = 0.12 (limit 0.2)",
        "not yet taken up",
        "DEGRADED",
        "ROLLBACK_OK",
        "Rejected sentinels",
        "armed is not valid JSON",
    ):
        assert needle in text, needle


def test_sparkline_scales_and_marks() -> None:
    probes = [
        {"tick": t, "latency_ms": ms, "ok": ok, "catch_up": False}
        for t, ms, ok in [(0, 10.0, True), (1, 80.0, True), (2, 5.0, False), (4, 40.0, True)]
    ]
    assert view.sparkline(probes).plain == "▂█✗·▅\n10-80 ms, 1 failed"
    many = [{"tick": t, "latency_ms": 1.0, "ok": True, "catch_up": False} for t in range(50)]
    assert view.sparkline(many, width=20).plain.split("\n")[0] == "█" * 20


def _write_series(item: Path, rows: list[dict[str, object]], tail: bytes = b"") -> None:
    lines = [json.dumps(r) for r in rows]
    (item / "series.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + tail)


def _row(tick: int, ok: bool = True, latency: float = 5.0) -> dict[str, object]:
    detail = "ok" if ok else "health: HTTP 503"
    fivexx = 0 if ok else 1
    return series_line(
        tick, ok, total=1, fivexx=fivexx, latency_ms=latency, detail=detail, start=1000.0
    )


def test_collect_folds_the_series_like_the_daemon(tmp_path: Path) -> None:
    """Bad lines, a repeated tick and a torn last line count for nothing; the sparkline keeps
    only the last rows; an armed item the daemon has not seen gets a predicted schedule."""
    config = parse_config(
        'state_dir = "state"\n[defaults]\nwindow_s = 60\ninterval_s = 2\nprobe_timeout_s = 1\n'
        '[repos.shop]\nbase_url = "http://127.0.0.1:1"\nfail_threshold = 4\n',
        str(tmp_path / "config.toml"),
    )
    item = tmp_path / "state" / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "armed").write_text("")
    window = {"armed_at": 990.0, "initial_delay_s": 10.0, "interval_s": 1.0, "max_ticks": 40}
    (item / "window.json").write_text(json.dumps({**window, "first_seen_at": 990.0}))
    rows = [_row(t) for t in range(30)] + [_row(30, ok=False), _row(31, ok=False)]
    rows.insert(5, _row(3))  # a tick that does not move forward: ignored
    _write_series(item, rows, tail=b'{"tick": 32, "sched')
    with (item / "series.jsonl").open("r+b") as f:  # a garbage line in the middle
        data = f.read().replace(b"\n", b"\nnot json\n", 1)
        f.seek(0)
        f.write(data)
    fresh = tmp_path / "state" / "shop" / "w2"
    fresh.mkdir()
    (fresh / "armed").write_text("")

    snap = status.collect(config, now=1100.0)
    assert snap["now"] == 1100.0
    assert snap["active_count"] == 2
    w1, w2 = sorted(snap["active"], key=lambda a: a["work_item"])
    assert (w1["ticks"], w1["max_ticks"], w1["checks_failed"]) == (32, 40, 2)
    assert (w1["health_streak"], w1["fail_threshold"], w1["last_tick"]) == (2, 4, 31)
    assert w1["ends_at"] == 990.0 + 10.0 + 39 * 1.0
    assert [p["tick"] for p in w1["probes"]] == list(range(32 - status.SPARK_POINTS, 32))
    assert w1["last_failure"] == "health: HTTP 503"
    assert w1["seen_by_daemon"] is True
    assert w2["seen_by_daemon"] is False
    assert (w2["max_ticks"], w2["interval_s"], w2["ticks"]) == (30, 2.0, 0)
    assert w2["armed_at"] == (fresh / "armed").stat().st_mtime


def test_status_and_show_on_a_real_state_dir(ops: Ops) -> None:
    """After a daemon ran: `status --json` has the contract's keys and agrees with the files;
    `status` draws the tables; `show` prints a finished window's timeline and report, an
    open window's state so far, and fails on an unknown item."""
    ops.write_config(repos={"shop": ops.repo(), "billing": ops.repo(window_s=30.0)})
    daemon = ops.start()
    daemon.wait_for("daemon.ready")
    ops.arm("shop", "green", {"commit": "abc123"})
    ops.arm("billing", "open")
    ops.arm("nowhere", "x")  # no [repos.nowhere]: rejected
    assert ops.wait_done("shop", "green")["status"] == "HEALTHY"
    ops.wait_until(lambda: len(ops.rows("billing", "open")) >= 2, "two probes of billing/open")
    ops.wait_until((ops.item("nowhere", "x") / "rejected").is_file, "the rejection")
    assert daemon.stop(signal.SIGTERM) == 0  # the open window stays open, paused

    result = ops.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert {"enabled", "active", "active_count", "recent"} <= snap.keys()
    assert snap["enabled"] is True
    assert snap["active_count"] == len(snap["active"]) == 1
    active = snap["active"][0]
    window = json.loads((ops.item("billing", "open") / "window.json").read_text())
    rows = ops.rows("billing", "open")
    # A probe may time out on a loaded machine: expectations come from the rows on disk.
    failed = sum(1 for r in rows if not r["health_ok"] or r["fivexx"])
    streak = len(rows) - max((i + 1 for i, r in enumerate(rows) if r["health_ok"]), default=0)
    assert {k: active[k] for k in ("repo", "work_item", "ticks", "max_ticks", "checks_failed")} == {
        "repo": "billing",
        "work_item": "open",
        "ticks": len(rows),
        "max_ticks": 150,
        "checks_failed": failed,
    }
    assert active["armed_at"] == window["armed_at"]
    done = json.loads((ops.item("shop", "green") / "done").read_text())
    recent = snap["recent"][0]
    assert {k: recent[k] for k in ("repo", "work_item", "status", "action_taken")} == {
        "repo": "shop",
        "work_item": "green",
        "status": "HEALTHY",
        "action_taken": "NONE",
    }
    assert recent["finished_at"] == done["finished_at"]
    assert snap["rejected"][0]["work_item"] == "x"

    result = ops.cli("status")
    assert result.returncode == 0, result.stderr
    for needle in ("Open windows (1)", "billing", f"tick {len(rows)}/150", "Recent outcomes"):
        assert needle in result.stdout, (needle, result.stdout)
    assert "HEALTHY" in result.stdout and "Rejected sentinels" in result.stdout

    result = ops.cli("show", "shop", "green")
    assert result.returncode == 0, result.stderr
    timeline = ops.rows("shop", "green")
    assert len(timeline) == done["checks_total"] >= 1  # a loaded machine may skip ticks
    lines = result.stdout.splitlines()
    for row in timeline:  # one timeline line per probe: tick, scheduled time, health, latency
        scheduled = time.strftime("%H:%M:%S", time.gmtime(row["scheduled_ts"]))
        assert any(
            line.split()[:1] == [str(row["tick"])]
            and scheduled in line
            and f"{row['health_code']} {'ok' if row['health_ok'] else 'FAIL'}" in line
            for line in lines
        ), (row, result.stdout)
    assert "post_deploy_status: HEALTHY" in result.stdout
    assert "`commit`: abc123" in result.stdout

    # The same code, in this process (each CLI run costs a second of imports).
    config = load_config(ops.config_path)
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    assert view.render_show(ops.state, ItemKey("billing", "open"), console, config) == 0
    text = console.export_text()
    assert "billing/open: OPEN" in text
    assert f"tick {len(rows)}/150" in text
    assert f"health streak {streak}/3" in text  # the threshold comes from the config
    assert view.render_show(ops.state, ItemKey("shop", "nope"), console) == 1


def test_show_renders_into_a_console(tmp_path: Path) -> None:
    """`render_show` on hand-made files: a rejected item, and a finished one without report."""
    root = tmp_path / "state"
    item = root / "shop" / "bad"
    item.mkdir(parents=True)
    (item / "armed").write_text("{")
    (item / "rejected").write_text("armed is not valid JSON\n")
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    assert view.render_show(root, ItemKey("shop", "bad"), console) == 0
    assert "shop/bad: REJECTED: armed is not valid JSON" in console.export_text()
