"""Feature checks in the rules: the reason each failing check gives, per-check thresholds,
checks that cannot be judged, and the control-probe rule (inconclusive ticks).

Pure: rows are built by hand (or from `evaluate_all` / `judge_sample` results, exactly as the
prober builds them) and folded with `series.fold`; the verdict comes from `verdict.classify`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from postdeploy.checks import Bound, Response, evaluate_all, judge_sample, parse_condition
from postdeploy.series import ProbeRow, Tally, fold, replay
from postdeploy.verdict import Status, Thresholds, Verdict, classify

TH = Thresholds(fail_threshold=3, fivexx_threshold=0.2, min_samples=4)


def row(
    tick: int,
    *,
    health_ok: bool = True,
    fivexx: int = 0,
    total: int = 2,
    checks: dict[str, dict[str, Any]] | None = None,
    inconclusive: bool = False,
) -> ProbeRow:
    """One tick's row, as the prober writes it."""
    return ProbeRow(
        tick=tick,
        scheduled_ts=1795763584.0 + tick,
        ts=1795763584.0 + tick + 0.004,
        health_ok=health_ok,
        health_code=200 if health_ok else 503,
        total=total,
        fivexx=fivexx,
        latency_ms=3.1,
        detail=f"tick {tick}",
        checks=checks or {},
        inconclusive=inconclusive,
    )


def check(ok: bool | None, detail: str = "", value: Any = None) -> dict[str, Any]:
    return {"ok": ok, "value": value, "latency_ms": 2.0, "detail": detail}


def fold_all(rows: list[ProbeRow], tally: Tally | None = None) -> Tally:
    tally = tally or Tally()
    for r in rows:
        tally = fold(tally, r)
    return tally


# -- the reason of each kind of failing check, through classify ----------------------------


def http_result(expect: list[str], response: Response) -> dict[str, Any]:
    """A check's row entry, made the way the prober makes it."""
    result = evaluate_all([parse_condition(t) for t in expect], response)
    return {"ok": result.ok, "value": result.value, "latency_ms": 1.0, "detail": result.detail}


def body(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


REASONS = [
    # expect, response, the reason after `check "NAME": `
    (
        ["status == 200", "$.items length > 0"],
        Response(200, 5.0, body({"items": []})),
        "$.items length 0, expected length > 0",
    ),
    (["status == 200"], Response(503, 5.0, b"{}"), "status 503, expected == 200"),
    (["latency_ms < 50"], Response(200, 100.04, b""), "latency_ms 100.0, expected < 50"),
    (
        ['$.status == "ok"'],
        Response(200, 5.0, body({"status": "down"})),
        '$.status "down", expected == "ok"',
    ),
    (["$.version exists"], Response(200, 5.0, b"{}"), "$.version missing, expected exists"),
    (
        ["$.legacy missing"],
        Response(200, 5.0, body({"legacy": 1})),
        "$.legacy exists, expected missing",
    ),
    (["$.stock >= 1"], Response(200, 5.0, b"{}"), "$.stock missing, expected >= 1"),
    (["$.n > 3"], Response(200, 5.0, body({"n": "5"})), '$.n "5", expected > 3'),
    (["$.flag == true"], Response(200, 5.0, body({"flag": 1})), "$.flag 1, expected == true"),
    (
        ["$.items length > 0"],
        Response(200, 5.0, b"<html>maintenance</html>"),
        "$.items: the body is not JSON, expected length > 0",
    ),
    (
        ['body contains "in stock"'],
        Response(200, 5.0, b"sold out"),
        'body does not match contains "in stock", expected contains "in stock"',
    ),
    (
        ['body matches "^v\\\\d+"'],
        Response(200, 5.0, b"version two"),
        'body does not match matches "^v\\\\d+", expected matches "^v\\\\d+"',
    ),
    (
        ['$.city == "Zürich"'],
        Response(200, 5.0, body({"city": "Genève"})),
        '$.city "Genève", expected == "Zürich"',
    ),
    (
        ["status == 200"],
        Response(0, 150.0, b"", "timed out after 0.15s"),
        "timed out after 0.15s",
    ),
    (
        ["status == 200"],
        Response(0, 1.0, b"", "connection failed: [Errno 111] Connection refused"),
        "connection failed: [Errno 111] Connection refused",
    ),
]


@pytest.mark.parametrize(("expect", "response", "why"), REASONS)
def test_failing_check_reason(expect: list[str], response: Response, why: str) -> None:
    entry = http_result(expect, response)
    assert entry["ok"] is False
    tally = fold_all([row(k, checks={"catalog": entry}) for k in range(3)])
    verdict = classify(tally, TH)
    assert verdict is not None
    assert verdict.status is Status.DEGRADED
    assert verdict.reason == f'check "catalog": {why} (3 ticks in a row)'
    assert verdict.evidence["checks"] == {
        "catalog": {"streak": 3, "fail_threshold": 3, "last": entry["detail"]}
    }


def test_prometheus_check_reason() -> None:
    """The prober prefixes a Prometheus result's detail with its query."""
    query = "sum(rate(errors_total[5s]))"
    over = judge_sample([0.75], Bound(max=0.1), False)
    entry = check(over.ok, f"{query}: {over.detail}", over.value)
    tally = fold_all([row(k, checks={"errors": entry}) for k in range(2)])
    verdict = classify(tally, Thresholds(3, 0.2, 4, {"errors": 2}))
    assert verdict is not None
    assert verdict.reason == (
        'check "errors": sum(rate(errors_total[5s])): value 0.75, expected <= 0.1 '
        "(2 ticks in a row)"
    )


def test_no_data_fails_only_when_configured() -> None:
    for no_data_fails, expected in ((False, None), (True, Status.DEGRADED)):
        result = judge_sample([], Bound(max=1), no_data_fails)
        entry = {**check(result.ok, f"up: {result.detail}"), "no_data": True}
        tally = fold_all([row(k, checks={"q": entry}) for k in range(3)])
        verdict = classify(tally, TH)
        assert (verdict.status if verdict else None) == expected
    assert verdict is not None
    assert verdict.reason == 'check "q": up: no data (3 ticks in a row)'


# -- per-check thresholds, streaks and resets -----------------------------------------------


def test_a_check_uses_its_own_threshold_else_the_repos() -> None:
    th = Thresholds(3, 0.2, 4, {"fast": 1})
    failing = {"fast": check(False, "a"), "slow": check(False, "b")}
    one = fold_all([row(0, checks=failing)])
    verdict = classify(one, th)
    assert verdict is not None and verdict.reason.startswith('check "fast"')
    # Without its own threshold, "slow" needs the repo's fail_threshold (3).
    slow_only = {"slow": check(False, "b")}
    assert classify(fold_all([row(0, checks=slow_only), row(1, checks=slow_only)]), th) is None
    tally = fold_all([row(k, checks=slow_only) for k in range(3)])
    verdict = classify(tally, th)
    assert verdict is not None and verdict.reason == 'check "slow": b (3 ticks in a row)'


def test_a_passing_tick_resets_the_streak_so_a_flapping_check_never_trips() -> None:
    th = Thresholds(3, 0.2, 4, {"flappy": 2})
    rows = [row(k, checks={"flappy": check(k % 2 == 1, f"tick {k}")}) for k in range(10)]
    tally = fold_all(rows)
    assert classify(tally, th) is None
    flappy = tally.checks["flappy"]
    assert (flappy.streak, flappy.max_streak, flappy.detail) == (0, 1, "tick 9")
    assert (flappy.judged, flappy.bits & 0b1111) == (10, 0b1010)  # ...fail, ok, fail, ok
    # Each failing tick still counts in checks_failed (with health ok all along).
    assert tally.checks_failed == 5
    assert tally.max_streak == 0


def test_checks_that_cannot_be_judged_count_for_nothing() -> None:
    """`ok: null` (Prometheus down, a missing secret) neither fails nor resets a streak."""
    th = Thresholds(3, 0.2, 4, {"c": 2})
    na = check(None, "prometheus: connection failed")
    tally = fold_all([row(0, checks={"c": na}), row(1, checks={"c": na}), row(2, checks={"c": na})])
    assert classify(tally, th) is None
    assert tally.checks_failed == 0
    assert not row(0, checks={"c": na}).service_failed
    # Between two failures, an unjudged tick does not break the run of failures.
    tally = fold_all(
        [
            row(0, checks={"c": check(False, "bad")}),
            row(1, checks={"c": na}),
            row(2, checks={"c": check(False, "bad")}),
        ]
    )
    verdict = classify(tally, th)
    assert verdict is not None and verdict.reason == 'check "c": bad (2 ticks in a row)'


def test_a_failing_check_alone_makes_the_tick_failed() -> None:
    r = row(0, checks={"ok": check(True), "bad": check(False, "x"), "na": check(None)})
    assert r.health_ok and r.fivexx == 0
    assert r.failed and r.service_failed


# -- the control-probe rule: inconclusive ticks count for nothing ---------------------------


def verdict_after(rows: list[ProbeRow], th: Thresholds = TH) -> Verdict | None:
    return classify(fold_all(rows), th)


def test_inconclusive_ticks_never_trip_anything() -> None:
    # Everything broken, every tick: health down, every 5xx path failing, the check failing.
    broken: dict[str, Any] = {"health_ok": False, "fivexx": 2, "checks": {"c": check(False, "x")}}
    rows = [row(k, **broken, inconclusive=True) for k in range(20)]
    tally = fold_all(rows)
    assert verdict_after(rows, Thresholds(1, 0.0, 1, {"c": 1})) is None
    assert tally.checks_total == 20  # probed
    assert tally.inconclusive == 20
    assert tally.checks_failed == 0  # but never counted as failed
    assert (tally.streak, tally.max_streak, tally.sum_total, tally.sum_fivexx) == (0, 0, 0, 0)
    assert tally.checks == {}
    assert tally.last_tick == 19  # the tick numbers still move on
    assert not rows[0].failed and rows[0].service_failed


def test_inconclusive_ticks_do_not_reset_a_health_streak() -> None:
    down: dict[str, Any] = {"health_ok": False}
    rows = [row(0, **down), row(1, **down), row(2, **down, inconclusive=True)]
    assert verdict_after(rows) is None
    rows.append(row(3, **down))
    verdict = verdict_after(rows)
    assert verdict is not None
    assert verdict.reason.startswith("health failed 3 consecutive probes (threshold 3)")


def test_inconclusive_ticks_do_not_extend_a_health_streak() -> None:
    down: dict[str, Any] = {"health_ok": False}
    rows = [row(0, **down), row(1, **down)]
    rows += [row(k, **down, inconclusive=True) for k in range(2, 10)]
    tally = fold_all(rows)
    assert (tally.streak, tally.max_streak) == (2, 2)
    assert verdict_after(rows) is None
    # ... and a good tick after them still resets it.
    tally = fold(tally, row(10))
    assert tally.streak == 0


def test_inconclusive_ticks_do_not_reset_or_extend_a_check_streak() -> None:
    th = Thresholds(5, 0.2, 4, {"c": 3})
    bad: dict[str, Any] = {"checks": {"c": check(False, "x")}}
    rows = [row(0, **bad), row(1, **bad), row(2, **bad, inconclusive=True)]
    tally = fold_all(rows)
    assert tally.checks["c"].streak == 2
    assert classify(tally, th) is None
    verdict = classify(fold(tally, row(3, **bad)), th)
    assert verdict is not None and verdict.reason == 'check "c": x (3 ticks in a row)'


def test_inconclusive_ticks_add_nothing_to_the_5xx_ratio() -> None:
    th = Thresholds(5, 0.2, 4)
    rows = [row(k) for k in range(2)]  # 0/4
    rows += [row(k, fivexx=2, inconclusive=True) for k in range(2, 8)]
    tally = fold_all(rows)
    assert (tally.sum_fivexx, tally.sum_total) == (0, 4)
    assert classify(tally, th) is None
    # Without the control probe's say, the same ticks trip the ratio.
    plain = fold_all([row(k) for k in range(2)] + [row(k, fivexx=2) for k in range(2, 8)])
    assert classify(plain, th) is not None


def test_inconclusive_survives_the_series_file() -> None:
    """A restarted daemon replays `series.jsonl`: the flag must round-trip."""
    r = row(4, health_ok=False, checks={"c": check(False, "x")}, inconclusive=True)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["inconclusive"] is True
    assert data["checks"] == {"c": check(False, "x")}
    assert ProbeRow.from_dict(data) == r
    tally = replay([row(0, health_ok=False).to_dict(), data, row(5, health_ok=False).to_dict()])
    assert (tally.inconclusive, tally.checks_failed, tally.max_streak) == (1, 2, 2)
    # A conclusive row does not carry the key at all.
    assert "inconclusive" not in row(0).to_dict()


@pytest.mark.parametrize(
    "checks",
    [
        {"c": {"ok": "yes", "detail": "x"}},
        {"c": "FAIL"},
        ["c"],
        {"c": {"ok": 0, "detail": "x"}},
    ],
)
def test_malformed_check_results_make_the_row_count_for_nothing(checks: Any) -> None:
    data = {**row(0).to_dict(), "checks": checks}
    assert ProbeRow.from_dict(data) is None
