"""Rules of `series.py` that no other fast test pinned (found by `make mutate`).

A failing feature check fails the tick; a check that never failed has no streak (so a
per-check threshold of 1 is not tripped by a passing check); the empty tally; the rounding of
a row's numbers; the range of a health code; a malformed `codes` is dropped, not the row.
"""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.series import CheckTally, ProbeRow, Tally, fold
from postdeploy.verdict import Thresholds, classify


def row(tick: int = 0, **fields: Any) -> ProbeRow:
    base: dict[str, Any] = {
        "tick": tick,
        "scheduled_ts": 1_795_763_584.0 + tick,
        "ts": 1_795_763_584.004 + tick,
        "health_ok": True,
        "health_code": 200,
        "total": 2,
        "fivexx": 0,
        "latency_ms": 3.1,
        "detail": "",
    }
    return ProbeRow(**{**base, **fields})


OK_CHECK = {"ok": True, "value": 1, "detail": "ok"}
BAD_CHECK = {"ok": False, "value": 0, "detail": "stock 0"}
UNJUDGED = {"ok": None, "value": None, "detail": "no data"}


@pytest.mark.parametrize(
    ("fields", "failed"),
    [
        ({}, False),
        ({"checks": {"catalog": OK_CHECK}}, False),
        ({"checks": {"catalog": UNJUDGED}}, False),  # could not be judged: never a failure
        ({"checks": {"catalog": OK_CHECK, "cart": BAD_CHECK}}, True),
        ({"checks": {"cart": BAD_CHECK}}, True),
        ({"health_ok": False, "health_code": 503}, True),
        ({"fivexx": 1}, True),
        ({"checks": {"cart": BAD_CHECK}, "inconclusive": True}, True),
    ],
)
def test_service_failed(fields: dict[str, Any], failed: bool) -> None:
    probe = row(**fields)
    assert probe.service_failed is failed
    assert probe.failed is (failed and not probe.inconclusive)


def test_the_empty_tally_and_check_tally() -> None:
    # No tick yet is tick -1, so the first tick is 0; a check seen nowhere has no streak.
    assert Tally().last_tick == -1
    assert CheckTally() == CheckTally(streak=0, max_streak=0, detail="")


def test_a_passing_check_never_trips_a_threshold_of_one() -> None:
    th = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=6, checks={"catalog": 1})
    tally = fold(Tally(), row(0, checks={"catalog": {"ok": True}}))
    assert tally.checks["catalog"] == CheckTally(0, 0, "", bits=0b0, judged=1)  # detail: ""
    assert classify(tally, th) is None
    tally = fold(tally, row(1, checks={"catalog": {"ok": False}}))
    assert tally.checks["catalog"] == CheckTally(1, 1, "", bits=0b01, judged=2)
    verdict = classify(tally, th)
    assert verdict is not None and verdict.reason.startswith('check "catalog"')


def test_to_dict_rounds_times_and_latency() -> None:
    data = row(scheduled_ts=1.23456789, ts=2.00000049, latency_ms=3.14159).to_dict()
    assert (data["scheduled_ts"], data["ts"], data["latency_ms"]) == (1.234568, 2.0, 3.142)


@pytest.mark.parametrize(("code", "valid"), [(0, True), (999, True), (1000, False), (-1, False)])
def test_health_code_range(code: int, valid: bool) -> None:
    raw = row().to_dict() | {"health_code": code}
    assert (ProbeRow.from_dict(raw) is not None) is valid


@pytest.mark.parametrize("codes", ["/status=503", ["/status", 503], 503, None])
def test_malformed_codes_are_dropped_not_the_row(codes: Any) -> None:
    parsed = ProbeRow.from_dict(row().to_dict() | {"codes": codes})
    assert parsed is not None
    assert parsed.codes == {}
