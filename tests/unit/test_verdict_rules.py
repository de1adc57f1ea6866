"""Rules of `verdict.py` that no other fast test pinned (found by `make mutate`).

The names written into `done` (the contract's statuses and actions), the evidence's keys and
rounding, the inconclusive sentence of a HEALTHY reason, and `recovery`: the judgement of the
verification probes made after a successful rollback.
"""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.series import replay
from postdeploy.verdict import Action, Decision, Status, Thresholds, healthy, recovery
from support.series import ACTIONS, STATUSES
from support.series import series_line as raw_row

TH = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=6)


def test_contract_names() -> None:
    # `done.status` and `done.action_taken` hold these exact strings (CONTRACT.md).
    assert [s.value for s in Status] == STATUSES
    assert [d.value for d in Decision] == ["NONE", "ALERT_ONLY", "ROLLBACK"]
    assert [a.value for a in Action] == ACTIONS


def test_evidence_keys_and_ratio_rounding() -> None:
    # 1 of 3 requests: the ratio is written with 4 decimals.
    tally = replay([raw_row(0, total=3, fivexx=1)])
    evidence = healthy(tally, TH).evidence
    assert evidence["fivexx_ratio"] == 0.3333
    assert {k: v for k, v in evidence.items() if k != "last_probes"} == {
        "health_streak": 0,
        "fail_threshold": 3,
        "fivexx": 1,
        "fivexx_total": 3,
        "fivexx_ratio": 0.3333,
        "fivexx_threshold": 0.2,
        "min_samples": 6,
        "checks_total": 1,
        "checks_failed": 1,
    }


def test_evidence_counts_inconclusive_ticks_only_when_there_are_some() -> None:
    rows = [raw_row(0), raw_row(1, False, inconclusive=True), raw_row(2)]
    assert healthy(replay(rows), TH).evidence["inconclusive_ticks"] == 1
    assert "inconclusive_ticks" not in healthy(replay([raw_row(0)]), TH).evidence


@pytest.mark.parametrize(
    ("inconclusive", "sentence"),
    [
        (0, None),
        (2, "; 2 of 5 ticks were inconclusive (the control probe failed too), so only 3 were"),
    ],
)
def test_healthy_reason_says_how_many_ticks_were_judged(
    inconclusive: int, sentence: str | None
) -> None:
    rows = [raw_row(k, k >= inconclusive, inconclusive=k < inconclusive) for k in range(5)]
    reason = healthy(replay(rows), TH).reason
    assert reason.startswith("5 ticks passed the rules")
    if sentence is None:
        assert "inconclusive" not in reason
    else:
        assert reason.endswith(sentence + " judged")


# -- recovery -------------------------------------------------------------------------------

# (id, rows of verify.jsonl, verify ticks wanted, expected status, expected reason)
RECOVERY: list[tuple[str, list[dict[str, Any]], int, Status, str]] = [
    (
        "every probe passed",
        [raw_row(0), raw_row(1), raw_row(2)],
        3,
        Status.HEALTHY,
        "recovered: 3 probes after the rollback, last one passed",
    ),
    (
        "one probe is enough when one was wanted",
        [raw_row(0)],
        1,
        Status.HEALTHY,
        "recovered: 1 probes after the rollback, last one passed",
    ),
    (
        "one passing probe is enough to judge, whatever was wanted",
        [raw_row(0)],
        3,
        Status.HEALTHY,
        "recovered: 1 probes after the rollback, last one passed",
    ),
    (
        "none wanted, none made",
        [],
        0,
        Status.HEALTHY,
        "recovered: 0 probes after the rollback, last one passed",
    ),
    (
        "none made although some were wanted",
        [],
        2,
        Status.DEGRADED,
        "still degraded after the rollback: the last of 0 probes failed; last: no probe",
    ),
    (
        "the last probe failed, below the threshold",
        [raw_row(0, False), raw_row(1), raw_row(2, False)],
        3,
        Status.DEGRADED,
        "still degraded after the rollback: the last of 3 probes failed; last: probe 2 bad",
    ),
    (
        "a health streak: its reason names the last probe already, once",
        [raw_row(0, False), raw_row(1, False), raw_row(2, False)],
        3,
        Status.DEGRADED,
        "still degraded after the rollback: health failed 3 consecutive probes (threshold 3); "
        "last: probe 2 bad",
    ),
    (
        "the 5xx rule: the last probe is named after its reason",
        [raw_row(0, fivexx=2), raw_row(1, fivexx=2), raw_row(2, fivexx=0)],
        3,
        Status.DEGRADED,
        "still degraded after the rollback: 5xx ratio 0.667 (4/6) above threshold 0.2 "
        "(min_samples 6); last: probe 2 ok",
    ),
]


@pytest.mark.parametrize(
    ("rows", "wanted", "status", "reason"),
    [case[1:] for case in RECOVERY],
    ids=[case[0] for case in RECOVERY],
)
def test_recovery(rows: list[dict[str, Any]], wanted: int, status: Status, reason: str) -> None:
    verdict = recovery(replay(rows), TH, wanted)
    assert (verdict.status, verdict.reason) == (status, reason)
    assert verdict.evidence["checks_total"] == len(rows)
