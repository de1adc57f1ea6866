"""The timeline picture (`timeline.py`): golden files for fixed windows, any size from 1 tick
to 10,000 drawn with a bounded number of shapes, hostile text escaped.

The goldens are under tests/golden/. After a deliberate change to the picture, rewrite them
with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_timeline.py` (each rewritten
file is reported as a skip, never passed silently) and review `git diff` before committing.
"""

from __future__ import annotations

import os
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from postdeploy import timeline
from postdeploy.config import WindowSettings
from postdeploy.layout import ItemKey
from postdeploy.report import Outcome, render_report
from postdeploy.series import ProbeRow
from postdeploy.timeline import Band, Limits, Rollback, Timeline, render
from postdeploy.window import Schedule
from support.outcome import outcome as sample_outcome

GOLDEN = Path(__file__).parent.parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"
ARMED = 1_795_766_400.0  # 2026-11-27T08:00:00+00:00
LIMITS = Limits(probe_timeout_s=5, fail_threshold=3, fivexx_threshold=0.2, min_samples=6)
SPAN = Schedule(ARMED, 30.0, 30.0, 30)


def row(k: int, span: Schedule = SPAN, **changes: Any) -> ProbeRow:
    """Tick k of `span`, healthy unless `changes` say otherwise."""
    at = span.tick_time(k)
    fields: dict[str, Any] = {
        "tick": k,
        "scheduled_ts": at,
        "ts": at + 0.004,
        "health_ok": True,
        "health_code": 200,
        "total": 2,
        "fivexx": 0,
        "latency_ms": 12.0 + (k * 7) % 5,
        "detail": "health ok; /status 200; /queue 200",
    }
    fields.update(changes)
    return ProbeRow(**fields)


def failing(k: int, span: Schedule = SPAN, **changes: Any) -> ProbeRow:
    fields: dict[str, Any] = {"latency_ms": 4.2, "detail": "health 503", **changes}
    return row(k, span, health_ok=False, health_code=503, **fields)


def window(rows: list[ProbeRow], **changes: Any) -> Timeline:
    last = rows[-1] if rows else None
    fields: dict[str, Any] = {
        "repo": "shop",
        "work_item": "ORCH-21",
        "span": SPAN,
        "rows": rows,
        "status": "HEALTHY",
        "action": "NONE",
        "reason": "30 ticks passed the rules",
        "verdict_at": last.ts + last.latency_ms / 1000 if last else None,
        "verdict_tick": last.tick if last else None,
        "limits": LIMITS,
        "metadata": {"commit": "4f1c2e0", "deployed_by": "alice"},
    }
    fields.update(changes)
    return Timeline(**fields)


def healthy() -> Timeline:
    checks = {"catalog": {"ok": True, "value": 3, "detail": "3 items"}}
    return window([row(k, checks=checks) for k in range(30)])


def degraded() -> Timeline:
    """Health fails 3 ticks in a row, tick 2 was skipped, the rollback worked and three
    probes after it confirm the recovery."""
    rows = [row(k) for k in (0, 1, 3, 4)] + [failing(k, fivexx=1) for k in (5, 6, 7)]
    after = rows[-1].ts + 20
    verification = [
        row(k, scheduled_ts=after + 30 * (k + 1), ts=after + 30 * (k + 1)) for k in range(3)
    ]
    return window(
        rows,
        status="DEGRADED",
        action="ROLLBACK_OK",
        reason="health failed 3 consecutive probes (threshold 3); last: health 503",
        rollback=Rollback("ROLLBACK_OK", duration_s=12.5, started_at=rows[-1].ts + 1),
        verification=verification,
    )


def blind() -> Timeline:
    """The control probe failed with the service in most ticks: no verdict on this deploy."""
    rows = [failing(k, inconclusive=True) if k % 4 else row(k) for k in range(30)]
    return window(
        rows,
        status="INCONCLUSIVE",
        reason="only 8 of 30 probed ticks could be judged, below min_judged_fraction 0.5",
    )


def baseline_regression() -> Timeline:
    """Health passes throughout, but latency climbs far above the baseline band."""
    rows = [row(k, latency_ms=11.0 + (k % 3)) for k in range(6)]
    rows += [row(k, latency_ms=48.0 + (k % 4) * 3) for k in range(6, 12)]
    return window(
        rows,
        status="DEGRADED",
        action="ALERT_ONLY",
        reason="health latency median 52 ms is 4.3x the baseline's 12 ms (p=0.0004)",
        band=Band(median_ms=12.0, low_ms=9.5, high_ms=15.0, limit_ms=18.0),
    )


def ten_thousand() -> Timeline:
    """10,000 one-second ticks, some failed, some skipped, a feature check that flaps."""
    span = Schedule(ARMED, 5.0, 1.0, 10_000)
    rnd = random.Random(7)
    rows = []
    for k in range(10_000):
        if k % 997 == 5:
            continue  # skipped
        check = {"search": {"ok": rnd.random() > 0.01, "detail": "hits"}}
        if rnd.random() < 0.03:
            rows.append(failing(k, span, checks=check))
        else:
            rows.append(row(k, span, latency_ms=rnd.uniform(5, 80), checks=check))
    return window(rows, span=span, reason="10000 ticks passed the rules")


CASES = {
    "healthy": healthy,
    "degraded-rollback": degraded,
    "blind": blind,
    "baseline-regression": baseline_regression,
    "ten-thousand-ticks": ten_thousand,
}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # our own output, parsed to prove it well-formed


def classes(root: ET.Element, *wanted: str) -> list[ET.Element]:
    return [e for e in root.iter() if set(wanted) <= set((e.get("class") or "").split())]


@pytest.mark.parametrize("name", list(CASES))
def test_the_picture_matches_its_golden_file(name: str) -> None:
    svg = render(CASES[name]())
    path = GOLDEN / f"timeline-{name}.svg"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(svg, encoding="utf-8")
        pytest.skip(f"rewrote {path}: review it with git diff before committing")
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 on purpose"
    assert svg == path.read_text(encoding="utf-8"), f"{name} changed: see the module docstring"


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_window_always_draws_the_same_bytes(name: str) -> None:
    assert render(CASES[name]()) == render(CASES[name]())


def test_failed_ticks_are_drawn_red_and_passing_ones_green() -> None:
    root = parse(render(degraded()))
    failed, passed = classes(root, "tick", "failed"), classes(root, "tick", "ok")
    assert failed and passed
    assert {e.get("fill") for e in failed} == {timeline.COLOUR["failed"]}
    assert {e.get("fill") for e in passed} == {timeline.COLOUR["ok"]}
    assert timeline.COLOUR["failed"] != timeline.COLOUR["ok"]
    assert classes(root, "tick", "skipped"), "tick 2 has no row: it is marked skipped"
    assert classes(root, "rollback", "ok") and classes(root, "verify", "ok")
    assert classes(root, "verdict-line") and classes(root, "timeout-line")


def test_the_verdict_and_the_reason_have_stable_ids() -> None:
    root = parse(render(degraded(), id_prefix="tl-"))
    by_id = {e.get("id"): e for e in root.iter() if e.get("id")}
    assert "".join(by_id["tl-verdict"].itertext()) == "DEGRADED"
    assert "health failed 3 consecutive probes" in "".join(by_id["tl-reason"].itertext())


def test_inconclusive_ticks_are_grey_and_the_band_is_drawn() -> None:
    blind_root = parse(render(blind()))
    assert {e.get("fill") for e in classes(blind_root, "tick", "inconclusive")} == {
        timeline.COLOUR["inconclusive"]
    }
    band_root = parse(render(baseline_regression()))
    assert classes(band_root, "band") and classes(band_root, "band-limit")


@pytest.mark.parametrize("ticks", [1, 2, 3, 50, 211, 212, 420, 421, 1000, 10_000])
def test_any_window_size_is_well_formed_and_bounded(ticks: int) -> None:
    span = Schedule(ARMED, 0.0, 2.0, ticks)
    rows = [failing(k, span) if k == ticks // 2 else row(k, span) for k in range(ticks)]
    svg = render(window(rows, span=span, status="DEGRADED"))
    root = parse(svg)
    shapes = sum(1 for e in root.iter() if e.tag in (f"{SVG}rect", f"{SVG}circle", f"{SVG}path"))
    assert shapes <= 2 * timeline.PLOT_W, (ticks, shapes)
    # The one failed tick is never folded away, however many ticks share its column.
    assert classes(root, "tick", "failed") and classes(root, "lat", "failed")


def test_ten_thousand_ticks_stay_small() -> None:
    svg = render(ten_thousand())
    root = parse(svg)
    assert len(svg) < 120_000, len(svg)
    assert sum(1 for _ in root.iter()) < 3000
    assert classes(root, "tick", "skipped") and classes(root, "check", "failed")


def test_one_tick_without_a_delay_still_has_a_width() -> None:
    span = Schedule(ARMED, 0.0, 30.0, 1)
    root = parse(render(window([row(0, span)], span=span)))
    (cell,) = classes(root, "tick", "ok")
    assert float(cell.get("width") or 0) > 100


def test_an_open_window_shows_the_whole_planned_window() -> None:
    root = parse(render(window([row(0), row(1)], status="", action="", verdict_at=None)))
    by_id = {e.get("id"): e for e in root.iter() if e.get("id")}
    assert "".join(by_id["verdict"].itertext()) == "OPEN"
    assert not classes(root, "verdict-line")
    (cell,) = classes(root, "tick", "ok")
    assert float(cell.get("width") or 0) < timeline.PLOT_W / 10  # 2 of 30 ticks


HOSTILE = "<script>alert(1)</script> & \"q\" 'a' ]]> <![CDATA[x]]> \x01\x1b[31m \ud800 é"


def test_hostile_text_is_escaped_and_the_svg_stays_well_formed() -> None:
    checks = {HOSTILE: {"ok": False, "detail": HOSTILE}}
    tl = window(
        [row(0, detail=HOSTILE, checks=checks), failing(1, detail=HOSTILE)],
        repo=HOSTILE,
        work_item=HOSTILE,
        status="DEGRADED",
        action=HOSTILE,
        reason=HOSTILE,
        metadata={"commit": HOSTILE, "deployed_by": HOSTILE, "branch": HOSTILE},
        rollback=Rollback("ROLLBACK_FAILED", 1.0, detail=HOSTILE),
        band=Band(10, 5, 20, 30, label=HOSTILE),
    )
    svg = render(tl, id_prefix='x"><script>')
    root = parse(svg)
    assert not [e for e in root.iter() if "script" in e.tag.lower()]
    assert "<script" not in svg
    reason = next(e for e in root.iter() if (e.get("id") or "").endswith("reason"))
    title = reason.find(f"{SVG}title")
    assert title is not None
    assert title.text == HOSTILE.replace("\x01", "\ufffd").replace("\x1b", "\ufffd").replace(
        "\ud800", "\ufffd"
    )


def test_the_moment_of_a_verdict() -> None:
    rows = [row(0), failing(1, latency_ms=500.0)]
    assert timeline.verdict_moment("DEGRADED", rows, 99.0) == (rows[1].ts + 0.5, 1)
    assert timeline.verdict_moment("CANCELLED", rows, 99.0) == (99.0, None)
    assert timeline.verdict_moment("HEALTHY", [], 99.0) == (99.0, None)


@pytest.mark.parametrize(
    ("rows", "max_ticks", "skipped"),
    [
        ([], 5, []),
        ([0, 1, 2], 5, []),
        ([0, 2, 4], 5, [1, 3]),
        ([0, 1], 3, []),
    ],
)
def test_skipped_ticks(rows: list[int], max_ticks: int, skipped: list[int]) -> None:
    assert timeline.skipped_ticks([row(k) for k in rows], max_ticks) == skipped


def test_after_a_catch_up_probe_every_tick_of_the_window_was_due() -> None:
    rows = [row(0), row(1), row(2, catch_up=True, scheduled_ts=SPAN.tick_time(29))]
    assert timeline.skipped_ticks(rows, 30) == list(range(3, 30))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "+0s"),
        (0.5, "+0.5s"),
        (45, "+45s"),
        (60, "+1m"),
        (90, "+1.5m"),
        (990, "+16.5m"),
        (3600, "+1h"),
        (9000, "+2.5h"),
    ],
)
def test_offsets_on_the_time_axis(seconds: float, text: str) -> None:
    assert timeline.offset(seconds) == text


def finished() -> tuple[Outcome, list[ProbeRow]]:
    rows = [row(0), failing(1), failing(2), failing(3)]
    rolled_back = sample_outcome(
        key=ItemKey("shop", "ORCH-21"),
        checks_total=4,
        finished_at=ARMED + 200,
        armed_at=None,
        metadata={},
        rollback={"exit_code": 0, "detail": "exited 0", "duration_s": 2.0},
    )
    return rolled_back, rows


def test_a_finished_window_gets_its_picture_and_report_md_links_it() -> None:
    outcome, rows = finished()
    schedule = Schedule(ARMED, 30.0, 30.0, 30)
    drawn = timeline.attach(outcome, rows, schedule, WindowSettings())
    root = parse(drawn.timeline)
    assert classes(root, "rollback", "ok") and classes(root, "tick", "failed")
    assert "![timeline](timeline.svg)" in render_report(drawn, rows)
    assert "timeline" not in render_report(outcome, rows)  # no picture, no link


def test_a_picture_that_cannot_be_drawn_never_holds_up_the_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object, **__: object) -> str:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(timeline, "render", broken)
    outcome, rows = finished()
    drawn = timeline.attach(outcome, rows, Schedule(ARMED, 30.0, 30.0, 30), None)
    assert drawn.timeline == timeline.UNDRAWN
    parse(drawn.timeline)
