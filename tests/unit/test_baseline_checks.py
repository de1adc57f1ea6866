"""What the baseline comparison added after latency and 5xx (baseline.py), pure and
table-driven: a feature check's number against the baseline's, `baseline_min_samples`, and a
level still recovering (a warm-up) not counted as a regression."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from postdeploy import baseline as bl
from postdeploy.baseline import (
    BaselineRow,
    BaselineRules,
    CheckRule,
    check_numbers,
    compare_level,
    reference,
)
from postdeploy.config import ConfigError, parse_config
from postdeploy.series import ProbeRow, Tally, fold
from postdeploy.verdict import Status, Thresholds, classify

ARMED = 10_000.0
ERRORS = CheckRule("errors", "value", min_shift=0.005)
RULES = BaselineRules(fail_threshold=3, min_samples=6, gap_s=60, checks=(ERRORS,))
ALPHA = 0.01
BASE = [30.0 + (i % 7) - 3 + i / 1000 for i in range(60)]  # no ties


def brow(i: int, value: float | None = 0.001, **kw: Any) -> BaselineRow:
    checks = {} if value is None else {"errors": {"value": value}}
    return BaselineRow(ts=ARMED - 70 - 10 * i, health_ok=True, latency_ms=30.0, checks=checks)


def base_rows(n: int = 60) -> list[BaselineRow]:
    """Error ratios around 0.1 %, no two alike."""
    return [brow(i, 0.001 + (i % 5) * 0.0002 + i * 1e-7) for i in range(n)]


def wrow(tick: int, value: Any = 0.001, ok: bool | None = True, **kw: Any) -> ProbeRow:
    result: dict[str, Any] = {"ok": ok, "detail": "value"}
    if value is not None:
        result["value"] = value
    return ProbeRow(
        tick=tick,
        scheduled_ts=ARMED + 10 * tick,
        ts=ARMED + 10 * tick,
        health_ok=True,
        health_code=200,
        total=0,
        fivexx=0,
        latency_ms=30.0,
        detail="ok",
        checks={"errors": result},
        **kw,
    )


def run(rows: list[ProbeRow], **rules: Any) -> list[bl.BaselineTally]:
    tally = bl.start(base_rows(), ARMED, replace(RULES, **rules))
    seen = []
    for row in rows:
        tally = tally.fold(row)
        seen.append(tally)
    return seen


# -- the rows keep each check's numbers ---------------------------------------------------


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        (
            {"errors": {"ok": True, "value": 0.01, "latency_ms": 4.0}},
            {"errors": {"value": 0.01, "latency_ms": 4.0}},
        ),
        (
            {"errors": {"ok": False, "value": 0.2}},
            {"errors": {"value": 0.2}},
        ),  # failing: a number all the same
        ({"errors": {"ok": None, "value": 0.2}}, {}),  # could not be judged
        ({"errors": {"ok": True, "value": "0.2"}}, {}),  # not a number
        ({"errors": {"ok": True, "value": float("inf")}}, {}),
        ({"errors": {"ok": True, "value": True}}, {}),  # a bool is not a number
        ({"errors": "junk", "other": {"latency_ms": 3}}, {"other": {"latency_ms": 3.0}}),
        ({"../x": {"value": 1}, "": {"value": 1}, "a" * 65: {"value": 1}}, {}),  # no check's name
        ({"q": {"ok": True, "value": 2, "number": 7}}, {"q": {"value": 2.0, "number": 7.0}}),
        ({"q": {"number": 7}}, {"q": {"number": 7.0}}),  # a baseline row's entry: no "ok"
        ("junk", {}),
        (None, {}),
    ],
)
def test_check_numbers(checks: Any, expected: dict[str, Any]) -> None:
    assert check_numbers(checks) == expected


def test_a_row_with_check_numbers_round_trips() -> None:
    row = brow(0, 0.004)
    assert row.to_dict()["checks"] == {"errors": {"value": 0.004}}
    assert BaselineRow.from_dict(row.to_dict()) == row
    assert "checks" not in brow(0, None).to_dict()  # nothing to keep: the line stays short


def test_a_row_of_a_probe_keeps_only_the_numbers() -> None:
    probe = wrow(0, 0.02)
    assert BaselineRow.of_probe(probe).checks == {"errors": {"value": 0.02}}


def test_bad_check_numbers_do_not_spoil_the_row() -> None:
    raw = {**brow(0).to_dict(), "checks": {"errors": {"value": "x"}, "ok": []}}
    row = BaselineRow.from_dict(raw)
    assert row is not None and row.checks == {}


def test_the_reference_keeps_each_compared_checks_numbers() -> None:
    rows = [brow(0, 0.002), brow(1, None), brow(2, 0.003)]
    rows.append(replace(brow(3, 0.9), inconclusive=True))  # not judged: left out
    ref = reference(rows, ARMED, RULES)
    assert sorted(ref.values["errors"]) == [0.002, 0.003]
    assert ref.to_dict()["checks"] == {"errors": 2}


# -- which checks are compared, and how -----------------------------------------------------


def config(check: str, repo: str = "baseline_interval_s = 10") -> str:
    return f"""
state_dir = "/tmp/x"
[repos.shop]
base_url = "http://shop.test"
{repo}
[[repos.shop.checks]]
name = "c"
{check}
"""


PROM = 'type = "prometheus"\nurl = "http://p"\nquery = "q"\n'


@pytest.mark.parametrize(
    ("check", "rule"),
    [
        ('path = "/x"', None),
        ('path = "/x"\nbaseline_increase = 0.5', CheckRule("c", "latency_ms", 0.5)),
        (
            PROM + "max = 1\nbaseline_min_shift = 0.01",
            CheckRule("c", "value", None, 0.01),
        ),
        (
            PROM + "min = 1\nbaseline_increase = 0.2",
            CheckRule("c", "value", 0.2, None, lower_is_worse=True),
        ),
        (
            'path = "/x"\nbaseline_number = "$.queue.depth"\nbaseline_min_shift = 5',
            CheckRule("c", "number", None, 5.0, path="$.queue.depth"),
        ),
        ('path = "/x"\nbaseline_number = "$.queue.depth"', None),  # no increase: not compared
    ],
)
def test_check_rules_from_the_config(check: str, rule: CheckRule | None) -> None:
    cfg = parse_config(config(check))
    rules = BaselineRules.of(cfg.window_settings("shop"), cfg.repos["shop"].checks)
    assert rules.checks == (() if rule is None else (rule,))


@pytest.mark.parametrize(
    ("repo", "floor"),
    [("baseline_interval_s = 10", 6), ("baseline_interval_s = 10\nbaseline_min_samples = 3", 3)],
)
def test_baseline_min_samples_defaults_to_min_samples(repo: str, floor: int) -> None:
    cfg = parse_config(config('path = "/x"', repo))
    assert BaselineRules.of(cfg.window_settings("shop")).min_samples == floor


@pytest.mark.parametrize(
    ("check", "repo", "problem"),
    [
        (
            'path = "/x"\nbaseline_increase = 0.5',
            "",
            "repos.shop.checks.0.baseline_increase: compares with the baseline, but none is kept",
        ),
        (
            'path = "/x"\nbaseline_min_shift = 1',
            "",
            "repos.shop.checks.0.baseline_min_shift: compares with the baseline",
        ),
        (
            'path = "/x"\nbaseline_increase = 0',
            "baseline_interval_s = 10",
            "checks[0].baseline_increase: Input should be greater than 0",
        ),
        (
            'path = "/x"\nbaseline_min_shift = -1',
            "baseline_interval_s = 10",
            "checks[0].baseline_min_shift: Input should be greater than 0",
        ),
        (
            'path = "/x"',
            "baseline_interval_s = 10\nbaseline_min_samples = 0",
            "baseline_min_samples",
        ),
    ],
)
def test_bad_check_comparisons_are_config_errors(check: str, repo: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(check, repo))
    assert problem in str(caught.value)


# -- compare_level: the comparison of a level, both ways --------------------------------------


@pytest.mark.parametrize(
    ("window", "kw", "regressed"),
    [
        ([60.0] * 8, {"increase": 0.5}, True),  # twice the baseline median
        ([40.0] * 8, {"increase": 0.5}, False),  # significant, but +33 % < +50 %
        ([40.0] * 8, {"min_shift": 5.0}, True),  # +10 ms >= 5 ms
        ([40.0] * 8, {"min_shift": 5.0, "increase": 0.5}, False),  # both must hold
        ([31.0] * 8, {"min_shift": 5.0}, False),
        (
            [15.0] * 8,
            {"increase": 0.3, "lower_is_worse": True},
            True,
        ),  # a fall, when lower is worse
        ([15.0] * 8, {"increase": 0.3}, False),  # a fall is not a rise
        ([60.0] * 8, {"increase": 0.3, "lower_is_worse": True}, False),
        ([60.0] * 7 + [31.0], {"increase": 0.5}, False),  # the latest number is back
        ([25.0] * 8, {"increase": 0.3, "lower_is_worse": True}, False),  # -17 % < -30 %
    ],
)
def test_compare_level(window: list[float], kw: dict[str, Any], regressed: bool) -> None:
    got = compare_level("check c", window, BASE, ALPHA, **kw)
    assert got.regressed is regressed
    assert got.streak == (1 if regressed else 0)


def test_a_relative_bar_on_small_numbers() -> None:
    base = [0.001 + i * 1e-6 for i in range(50)]
    assert compare_level("check c", [0.0025] * 8, base, ALPHA, increase=1.0).regressed
    assert not compare_level("check c", [0.0015] * 8, base, ALPHA, increase=1.0).regressed


@pytest.mark.parametrize(
    "window",
    [
        [0.0] * 5 + [1.0] * 4,  # more ones than before, but the median did not move
        [1.0] * 5 + [0.0],  # the median moved, the latest number did not
    ],
)
def test_from_a_zero_baseline_both_the_median_and_the_latest_must_move(
    window: list[float],
) -> None:
    got = compare_level("check c", window, [0.0] * 50, ALPHA, increase=0.5)
    assert got.p_value < ALPHA  # significant all the same
    assert not got.regressed


def test_compare_level_wants_an_increase_or_a_shift() -> None:
    with pytest.raises(ValueError, match="neither"):
        compare_level("check c", [1.0], [1.0], ALPHA)


def test_a_rise_from_a_zero_baseline_is_judged_by_the_shift() -> None:
    zeros = [0.0] * 50
    small = compare_level("check c", [0.001] * 8, zeros, ALPHA, min_shift=0.005)
    large = compare_level("check c", [0.01] * 8, zeros, ALPHA, min_shift=0.005)
    assert (small.regressed, large.regressed) == (False, True)
    assert large.shift == float("inf")
    assert "a rise from 0" in large.sentence()
    assert large.to_dict()["shift"] is None  # JSON has no infinity


@pytest.mark.parametrize(
    ("comparison", "sentence"),
    [
        (
            compare_level("check errors", [0.03] * 8, [0.001] * 50, ALPHA, min_shift=0.01),
            'check "errors" 0.03 vs 0.001 before the deploy (+2900 %, p<0.0001, 8 vs 50 probes)',
        ),
        (
            compare_level(
                "check queue", [120.0] * 8, BASE, ALPHA, increase=1.0, quantity="$.depth"
            ),
            'check "queue" $.depth 120 vs 30.02 before the deploy '
            "(+300 %, p<0.0001, 8 vs 60 probes)",
        ),
        (
            compare_level("check cart", [80.0] * 8, BASE, ALPHA, increase=0.5, unit="ms"),
            'check "cart" latency 80 ms vs 30 ms before the deploy '
            "(+166 %, p<0.0001, 8 vs 60 probes)",
        ),
    ],
)
def test_check_sentences(comparison: bl.Comparison, sentence: str) -> None:
    assert comparison.sentence() == sentence


# -- a level still recovering --------------------------------------------------------------


WARM_UP = [90.0, 75.0, 64.0, 56.0, 50.0, 46.0]  # 3x, falling back towards 30 ms
STUCK = [61.0, 59.0, 62.0, 58.0, 60.0, 63.0]  # 2x, and staying there


@pytest.mark.parametrize(
    ("window", "regressed", "recovering"),
    [
        (WARM_UP, False, True),
        (STUCK, True, False),
        ([31.0, 30.5, 30.2, 30.1, 30.0, 29.0], False, False),  # falling, but never worse
        (list(reversed(WARM_UP)), True, False),  # rising: a leak is never "recovering"
    ],
)
def test_a_level_still_recovering_is_not_a_regression(
    window: list[float], regressed: bool, recovering: bool
) -> None:
    got = compare_level("latency", window, BASE, ALPHA, increase=0.25)
    assert (got.regressed, got.recovering) == (regressed, recovering)
    assert got.to_dict().get("recovering", False) is recovering


def test_recovering_looks_at_the_last_ten_numbers() -> None:
    # Falling over its last ten numbers (p 0.03), not over all eleven (p 0.12).
    window = [68.0, 80.0, 76.0, 71.0, 78.0, 75.0, 69.0, 74.0, 79.0, 61.0, 63.0]
    got = compare_level("latency", window, BASE, ALPHA, increase=0.25)
    assert (got.regressed, got.recovering) == (False, True)


def test_recovering_is_judged_on_the_last_numbers_only() -> None:
    # Falling over the first ten, flat and 2x over the last ten: a regression once the
    # warm-up has left the span.
    window = [120.0 - 6 * k for k in range(10)] + [61.0, 59.0, 62.0, 58.0, 60.0, 63.0] * 2
    window = window[:10] + window[10:20]
    assert compare_level("latency", window, BASE, ALPHA, increase=0.25).regressed
    assert not compare_level("latency", window[:10], BASE, ALPHA, increase=0.25).regressed


def test_a_falling_check_that_is_lower_is_worse_is_not_recovering() -> None:
    # For a "min" check a fall is the regression itself, never a recovery.
    window = [20.0, 19.0, 18.0, 17.0, 16.0, 15.0]
    got = compare_level("check c", window, BASE, ALPHA, increase=0.3, lower_is_worse=True)
    assert (got.regressed, got.recovering) == (True, False)


# -- the window, tick by tick ---------------------------------------------------------------


def test_an_error_ratio_rise_trips_after_fail_threshold_evaluations() -> None:
    seen = run([wrow(k, 0.03 + k * 1e-5) for k in range(8)])
    assert [t.check_comparisons.get("errors") is not None for t in seen] == [False] * 5 + [True] * 3
    assert [t.tripped is not None for t in seen] == [False] * 7 + [True]
    tripped = seen[-1].tripped
    assert tripped is not None and tripped.metric == "check errors"
    figures = seen[-1].to_dict()
    assert figures["tripped"] == "check errors"
    assert figures["checks"]["errors"]["streak"] == 3
    assert 'check "errors"' in figures["summary"]


def test_an_http_checks_latency_against_the_baseline() -> None:
    cart = CheckRule("cart", "latency_ms", increase=0.5)
    base = [
        replace(brow(i), checks={"cart": {"latency_ms": 30.0 + i % 7 + i / 1000}})
        for i in range(60)
    ]
    tally = bl.start(base, ARMED, replace(RULES, checks=(cart,)))
    for k in range(8):
        row = wrow(k)
        tally = tally.fold(replace(row, checks={"cart": {"ok": True, "latency_ms": 90.0 + k}}))
    assert tally.tripped is not None and tally.tripped.metric == "check cart"
    assert tally.summary().startswith('check "cart" latency 94 ms vs 33 ms before the deploy')
    assert tally.to_dict()["checks"]["cart"]["unit"] == "ms"


def test_a_prometheus_value_has_no_unit() -> None:
    figures = run([wrow(k, 0.03 + k * 1e-5) for k in range(8)])[-1].to_dict()
    assert "unit" not in figures["checks"]["errors"]
    assert "quantity" not in figures["checks"]["errors"]


def test_a_json_numbers_path_is_in_its_figures() -> None:
    queue = CheckRule("queue", "number", increase=1.0, path="$.depth")
    base = [replace(brow(i), checks={"queue": {"number": 10.0 + i % 5}}) for i in range(60)]
    tally = bl.start(base, ARMED, replace(RULES, checks=(queue,)))
    for k in range(8):
        tally = tally.fold(replace(wrow(k), checks={"queue": {"ok": True, "number": 50.0 + k}}))
    assert tally.tripped is not None
    assert tally.to_dict()["checks"]["queue"]["quantity"] == "$.depth"
    assert tally.summary().startswith('check "queue" $.depth 53.5 vs 12 before the deploy')


@pytest.mark.parametrize(("base_rows_n", "evaluated"), [(6, True), (5, False)])
def test_the_baseline_side_needs_min_samples_numbers(base_rows_n: int, evaluated: bool) -> None:
    tally = bl.start(base_rows(base_rows_n), ARMED, RULES)
    for k in range(6):
        tally = tally.fold(wrow(k, 0.03))
    assert ("errors" in tally.check_comparisons) is evaluated


def test_baseline_min_samples_starts_the_comparison_sooner() -> None:
    seen = run([wrow(k, 0.03 + k * 1e-5) for k in range(5)], min_samples=3)
    assert [t.tripped is not None for t in seen] == [False] * 4 + [True]


@pytest.mark.parametrize(
    "row",
    [
        lambda k: wrow(k, None, ok=None),  # could not be judged (Prometheus down)
        lambda k: wrow(k, "high"),  # not a number
        lambda k: wrow(k, 0.5, inconclusive=True),  # our own network
        lambda k: replace(wrow(k), checks={}),  # the check was not probed
    ],
)
def test_rows_without_a_number_add_nothing(row: Any) -> None:
    rows = [wrow(k, 0.03) for k in range(5)] + [row(5)]
    assert run(rows)[-1].values["errors"] == (0.03,) * 5
    assert run(rows)[-1].check_comparisons == {}


def test_an_unchanged_error_ratio_never_trips() -> None:
    seen = run([wrow(k, 0.001 + (k % 5) * 0.0002 + k * 1e-7) for k in range(40)])
    assert all(t.tripped is None for t in seen)


def test_the_verdict_names_the_check() -> None:
    tally = Tally(baseline=bl.start(base_rows(), ARMED, RULES))
    verdict = None
    for k in range(8):
        tally = fold(tally, wrow(k, 0.03 + k * 1e-5))
        verdict = classify(tally, Thresholds(3, 0.2, 6)) or verdict
    assert verdict is not None and verdict.status is Status.DEGRADED
    assert verdict.reason.startswith('check "errors" 0.0300')
    assert verdict.reason.endswith("3 ticks in a row")


def test_health_latency_figures_carry_no_check_labels() -> None:
    rules = BaselineRules(latency_increase=0.5)
    figures = bl.compare_latency([60.0] * 8, BASE, rules).to_dict()
    assert "unit" not in figures and "quantity" not in figures
