"""The rules of `verdict.py`: classify a window's tally, decide and name the reaction.

Every tally is built the way the daemon builds it: raw row dicts replayed by `series.replay`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from postdeploy.series import replay
from postdeploy.verdict import (
    Action,
    Decision,
    Status,
    Thresholds,
    classify,
    decide_action,
    healthy,
    rollback_action,
)
from support.series import series_line

TH = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=6)

# Shorthand for one tick: (health_ok, total, fivexx).
OK = (True, 2, 0)
FAIL = (False, 2, 0)


def raw_row(tick: int, health_ok: bool = True, total: int = 2, fivexx: int = 0) -> dict[str, Any]:
    """One `series.jsonl` line, its detail naming the tick's figures."""
    detail = f"tick {tick} health={'ok' if health_ok else 'bad'} 5xx={fivexx}/{total}"
    return series_line(tick, health_ok, total=total, fivexx=fivexx, detail=detail)


def rows(*ticks: tuple[bool, int, int]) -> list[dict[str, Any]]:
    return [raw_row(k, ok, total, fivexx) for k, (ok, total, fivexx) in enumerate(ticks)]


# (id, ticks, thresholds, expected: None (no verdict) or which rule trips: "health" / "5xx")
CLASSIFY_CASES: list[tuple[str, list[tuple[bool, int, int]], Thresholds, str | None]] = [
    ("empty window", [], TH, None),
    ("all healthy", [OK] * 10, TH, None),
    ("single glitch that recovers", [FAIL, OK, OK, OK], TH, None),
    ("one below the streak threshold", [OK, FAIL, FAIL], TH, None),
    ("exactly the streak threshold", [FAIL, FAIL, FAIL], TH, "health"),
    ("streak threshold after a recovery", [FAIL, FAIL, OK, FAIL, FAIL, FAIL], TH, "health"),
    ("interrupted streaks never add up", [FAIL, FAIL, OK, FAIL, FAIL, OK, FAIL, FAIL], TH, None),
    ("fail_threshold 1: one failure trips", [OK, FAIL], Thresholds(1, 0.2, 6), "health"),
    # 5xx rule: health answers 200 all along.
    ("5xx ratio above, enough samples", [(True, 2, 1), (True, 2, 1), (True, 2, 0)], TH, "5xx"),
    ("5xx ratio equal to the threshold", [(True, 5, 1), (True, 5, 1)], TH, None),
    ("5xx ratio just above (3/14)", [(True, 7, 2), (True, 7, 1)], TH, "5xx"),
    ("5xx ratio above, too few samples", [(True, 2, 2), (True, 2, 2)], TH, None),
    ("5xx ratio above, exactly min_samples", [(True, 2, 2)] * 3, TH, "5xx"),
    ("a single early 5xx does not trip", [(True, 2, 1)], TH, None),
    ("early 5xx diluted below the threshold", [(True, 2, 1)] + [OK] * 5, TH, None),
    ("threshold 0: any 5xx trips", [OK] * 3 + [(True, 2, 1)], Thresholds(3, 0.0, 6), "5xx"),
    ("threshold 0: no 5xx, no trip", [OK] * 5, Thresholds(3, 0.0, 6), None),
    ("threshold 1: even all-5xx never trips", [(True, 2, 2)] * 5, Thresholds(3, 1.0, 1), None),
    (
        "ticks without 5xx paths never judge a ratio",
        [(True, 0, 0)] * 10,
        Thresholds(3, 0.0, 1),
        None,
    ),
]


@pytest.mark.parametrize(
    ("ticks", "th", "expected"),
    [pytest.param(t, th, e, id=name) for name, t, th, e in CLASSIFY_CASES],
)
def test_classify_table(
    ticks: list[tuple[bool, int, int]], th: Thresholds, expected: str | None
) -> None:
    """Each rule trips exactly at its boundary and not below it."""
    verdict = classify(replay(rows(*ticks)), th)
    if expected is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict.status is Status.DEGRADED
    if expected == "health":
        assert "consecutive" in verdict.reason
        assert verdict.evidence["health_streak"] >= th.fail_threshold
    else:
        assert "5xx ratio" in verdict.reason
        assert verdict.evidence["fivexx_total"] >= th.min_samples
        assert verdict.evidence["fivexx_ratio"] > th.fivexx_threshold


@pytest.mark.parametrize(
    ("ticks", "th", "phrases", "evidence"),
    [
        pytest.param(
            (OK, FAIL, FAIL, FAIL, FAIL),
            Thresholds(4, 0.5, 100),
            # The last probe's detail tells an operator what the service answered.
            ["health failed 4 consecutive probes", "(threshold 4)", "tick 4 health=bad"],
            {"health_streak": 4, "fail_threshold": 4},
            id="health",
        ),
        pytest.param(
            ((True, 2, 1), (True, 2, 1), (True, 2, 0)),
            TH,
            ["5xx ratio 0.333 (2/6)", "above threshold 0.2", "min_samples 6"],
            {"fivexx": 2, "fivexx_total": 6, "fivexx_threshold": 0.2},
            id="5xx",
        ),
    ],
)
def test_reason_names_measured_value_and_threshold(
    ticks: tuple[tuple[bool, int, int], ...],
    th: Thresholds,
    phrases: list[str],
    evidence: dict[str, Any],
) -> None:
    verdict = classify(replay(rows(*ticks)), th)
    assert verdict is not None
    for phrase in phrases:
        assert phrase in verdict.reason
    for key, value in evidence.items():
        assert verdict.evidence[key] == value


def test_evidence_carries_the_last_probes() -> None:
    tally = replay(rows(*([OK] * 7 + [FAIL] * 3)))
    verdict = classify(tally, TH)
    assert verdict is not None
    last = verdict.evidence["last_probes"]
    assert [p["tick"] for p in last] == [5, 6, 7, 8, 9]
    assert verdict.evidence["checks_total"] == 10
    assert verdict.evidence["checks_failed"] == 3


def test_healthy_reason_names_measured_values_and_thresholds() -> None:
    tally = replay(rows(FAIL, OK, (True, 2, 1), OK))
    verdict = healthy(tally, TH)
    assert verdict.status is Status.HEALTHY
    assert "4 ticks" in verdict.reason
    assert "streak 1 (threshold 3)" in verdict.reason
    assert "0.125 (1/8)" in verdict.reason
    assert "threshold 0.2" in verdict.reason
    assert verdict.evidence["checks_failed"] == 2


# -- malformed rows never fabricate DEGRADED -------------------------------------------------

# The most sensitive thresholds: a single accepted failing row would trip both rules.
HAIR_TRIGGER = Thresholds(fail_threshold=1, fivexx_threshold=0.0, min_samples=1)


def failing_row(tick: int = 0) -> dict[str, Any]:
    """A row that trips HAIR_TRIGGER on its own: health failed and every 5xx path failed."""
    return raw_row(tick, health_ok=False, total=2, fivexx=2)


def corrupt(**changes: Any) -> dict[str, Any]:
    """A failing row with some keys replaced (or removed, for the value `...`)."""
    row = failing_row(5)
    for key, value in changes.items():
        if value is ...:
            row.pop(key)
        else:
            row[key] = value
    return row


# The keys a row cannot do without (`latency_ms` and `detail` have harmless defaults).
REQUIRED_KEYS = ("tick", "scheduled_ts", "ts", "health_ok", "health_code", "total", "fivexx")

GARBAGE: list[tuple[str, Any]] = [
    ("None", None),
    ("int", 1),
    ("string", "FAIL"),
    ("list", [False, 2, 2]),
    ("empty dict", {}),
    *[(f"missing {k}", corrupt(**{k: ...})) for k in REQUIRED_KEYS],
    ("health_ok string", corrupt(health_ok="false")),
    ("health_ok 0", corrupt(health_ok=0)),
    ("health_ok None", corrupt(health_ok=None)),
    ("tick string", corrupt(tick="5")),
    ("tick float", corrupt(tick=5.0)),
    ("tick bool", corrupt(tick=True)),
    ("tick negative", corrupt(tick=-1)),
    ("total bool", corrupt(total=True, fivexx=True)),
    ("total string", corrupt(total="2")),
    ("total float", corrupt(total=2.0)),
    ("total negative", corrupt(total=-2, fivexx=-2)),
    ("fivexx bool", corrupt(fivexx=True)),
    ("fivexx above total", corrupt(total=2, fivexx=3)),
    ("fivexx negative", corrupt(fivexx=-1)),
    ("fivexx float", corrupt(fivexx=1.5)),
    ("health_code bool", corrupt(health_code=True)),
    ("health_code string", corrupt(health_code="503")),
    ("scheduled_ts NaN", corrupt(scheduled_ts=math.nan)),
    ("scheduled_ts inf", corrupt(scheduled_ts=math.inf)),
    ("scheduled_ts string", corrupt(scheduled_ts="now")),
    ("ts NaN", corrupt(ts=math.nan)),
    ("ts None", corrupt(ts=None)),
    ("latency NaN", corrupt(latency_ms=math.nan)),
]


def test_the_uncorrupted_failing_row_does_trip() -> None:
    """Control for the garbage table: without the corruption the row alone is DEGRADED."""
    verdict = classify(replay([failing_row(5)]), HAIR_TRIGGER)
    assert verdict is not None and verdict.status is Status.DEGRADED


@pytest.mark.parametrize("garbage", [pytest.param(g, id=name) for name, g in GARBAGE])
def test_malformed_rows_never_fabricate_degraded(garbage: Any) -> None:
    """A malformed row counts for nothing: ignored, not a failure."""
    healthy_rows = [raw_row(k) for k in range(3)]
    for series in ([garbage], [garbage, garbage, garbage], [*healthy_rows, garbage, garbage]):
        tally = replay(series)
        assert classify(tally, HAIR_TRIGGER) is None
        assert tally.ignored == series.count(garbage)
        assert tally.checks_failed == 0


# -- reactions ------------------------------------------------------------------------------

DECIDE_CASES = [
    (Status.DEGRADED, True, True, Decision.ALERT_ONLY),  # self-hosting: never roll back
    (Status.DEGRADED, True, False, Decision.ALERT_ONLY),
    (Status.DEGRADED, False, True, Decision.ROLLBACK),
    (Status.DEGRADED, False, False, Decision.ALERT_ONLY),
    *[
        (status, self_hosting, auto_rollback, Decision.NONE)
        for status in Status
        if status is not Status.DEGRADED
        for self_hosting, auto_rollback in itertools.product([False, True], repeat=2)
    ],
]


@pytest.mark.parametrize(("status", "self_hosting", "auto_rollback", "expected"), DECIDE_CASES)
def test_decide_action(
    status: Status, self_hosting: bool, auto_rollback: bool, expected: Decision
) -> None:
    assert decide_action(status, self_hosting=self_hosting, auto_rollback=auto_rollback) is expected


def test_decide_action_table_covers_every_status() -> None:
    assert {case[0] for case in DECIDE_CASES} == set(Status)


@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [
        (0, Action.ROLLBACK_OK),
        (1, Action.ROLLBACK_FAILED),  # the hook found no previous image
        (2, Action.ROLLBACK_FAILED),  # the rollback failed too
        (-9, Action.ROLLBACK_FAILED),  # killed (timeout)
        (None, Action.ROLLBACK_FAILED),  # failed to start, or timed out
        (255, Action.ROLLBACK_FAILED),
    ],
)
def test_rollback_action(exit_code: int | None, expected: Action) -> None:
    assert rollback_action(exit_code) is expected


def test_still_degraded_reason_names_the_last_probe_once() -> None:
    """After a rollback, a health streak's reason already ends with "last: ..."; the
    recovery verdict must not repeat it."""
    from postdeploy.series import ProbeRow, Tally, fold
    from postdeploy.verdict import Status, Thresholds, recovery

    tally = Tally()
    for tick in range(3):
        row = ProbeRow.from_dict(
            {
                "tick": tick,
                "scheduled_ts": 1.0,
                "ts": 1.0,
                "health_ok": False,
                "health_code": 503,
                "total": 0,
                "fivexx": 0,
                "latency_ms": 1.0,
                "detail": "health HTTP 503",
            }
        )
        assert row is not None
        tally = fold(tally, row)
    verdict = recovery(tally, Thresholds(3, 0.2, 6), 3)
    assert verdict.status is Status.DEGRADED
    assert verdict.reason.count("last:") == 1
    assert verdict.reason.startswith("still degraded after the rollback: health failed 3")
