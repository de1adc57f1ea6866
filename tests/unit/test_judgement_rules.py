"""Judgement beyond consecutive failures: k of the last n (`fail_lookback`), and
INCONCLUSIVE when too few ticks could be judged (`min_judged_fraction`). Pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.config import ConfigError, parse_config
from postdeploy.series import ProbeRow, Tally, failed_in_last, fold
from postdeploy.verdict import Status, Thresholds, classify, healthy


def row(tick: int, ok: bool = True, *, inconclusive: bool = False, **checks: bool) -> ProbeRow:
    return ProbeRow(
        tick=tick,
        scheduled_ts=1000.0 + tick,
        ts=1000.0 + tick,
        health_ok=ok,
        health_code=200 if ok else 503,
        total=0,
        fivexx=0,
        latency_ms=1.0,
        detail="ok" if ok else "health HTTP 503",
        checks={n: {"ok": v, "detail": f"{n} {'ok' if v else 'bad'}"} for n, v in checks.items()},
        inconclusive=inconclusive,
    )


def fold_pattern(pattern: str, **kwargs: Any) -> Tally:
    """'x' a failed health probe, '.' a passing one, '?' an inconclusive (failed) tick."""
    tally = Tally()
    for tick, c in enumerate(pattern):
        tally = fold(tally, row(tick, c == ".", inconclusive=c == "?", **kwargs))
    return tally


@pytest.mark.parametrize(
    ("bits", "judged", "n", "expected"),
    [
        (0b0, 0, 5, 0),
        (0b1011, 4, 2, 2),  # the last two failed
        (0b1011, 4, 3, 2),
        (0b1011, 4, 10, 3),  # fewer judged than n: all of them count
        (0b1011, 2, 10, 2),  # bits beyond `judged` are not results
        ((1 << 64) - 1, 64, 64, 64),
    ],
)
def test_failed_in_last(bits: int, judged: int, n: int, expected: int) -> None:
    assert failed_in_last(bits, judged, n) == expected


@pytest.mark.parametrize(
    ("pattern", "k", "n", "degraded"),
    [
        # One bad instance of four behind a load balancer: never 3 in a row.
        ("x...x...x...x...", 3, 3, False),  # the consecutive rule (lookback = threshold)
        ("x...x...x...x...", 3, 0, False),  # lookback unset: the same
        ("x...x...x...x...", 3, 12, True),  # 3 of the last 12
        ("x...x...x...x...", 3, 8, False),  # at most 2 in any 8
        ("x..x..x", 3, 7, True),
        ("x..x...x", 3, 7, False),  # the first failure fell out of the last 7
        ("xx?x", 3, 3, True),  # an inconclusive tick is not judged: it neither fails nor passes
        ("xx.x", 3, 3, False),
        ("xx.x", 3, 4, True),
        ("xxx", 3, 3, True),
        ("xxx.", 3, 3, True),  # lookback = threshold is the consecutive rule: a run counts ever
    ],
)
def test_k_of_n_health(pattern: str, k: int, n: int, degraded: bool) -> None:
    th = Thresholds(k, 0.2, 6, fail_lookback=n)
    verdict = classify(fold_pattern(pattern), th)
    assert (verdict is not None and verdict.status is Status.DEGRADED) is degraded
    if degraded and n > k:
        assert f"(threshold {k} of {n})" in verdict.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("results", "need", "n", "degraded"),
    [
        ([False, True, False, True, False], 3, 0, False),  # consecutive: never 3 in a row
        ([False, True, False, True, False], 3, 5, True),
        ([False, True, True, True, False], 2, 4, False),
        ([False, True, True, False], 2, 4, True),
        ([False, False, True], 2, 2, True),  # lookback = threshold: a run in a row counts ever
    ],
)
def test_k_of_n_feature_check(results: list[bool], need: int, n: int, degraded: bool) -> None:
    tally = Tally()
    for tick, ok in enumerate(results):
        tally = fold(tally, row(tick, True, catalog=ok))
    th = Thresholds(3, 0.2, 6, {"catalog": need}, check_lookbacks={"catalog": n} if n else {})
    verdict = classify(tally, th)
    assert (verdict is not None) is degraded
    if verdict is not None and n > need:
        assert f"of the last {min(n, len(results))} ticks" in verdict.reason


@pytest.mark.parametrize(
    ("pattern", "fraction", "status"),
    [
        ("....", 0.5, Status.HEALTHY),
        ("??..", 0.5, Status.HEALTHY),  # exactly half judged: enough
        ("???.", 0.5, Status.INCONCLUSIVE),  # blind: the control probe failed with the service
        ("????", 0.5, Status.INCONCLUSIVE),
        ("????", 0.0, Status.HEALTHY),  # 0 turns the rule off
        ("?...", 1.0, Status.INCONCLUSIVE),
        ("", 0.5, Status.INCONCLUSIVE),  # nothing probed at all
    ],
)
def test_inconclusive_when_too_few_ticks_were_judged(
    pattern: str, fraction: float, status: Status
) -> None:
    verdict = healthy(fold_pattern(pattern), Thresholds(3, 0.2, 6, min_judged_fraction=fraction))
    assert verdict.status is status
    if status is Status.INCONCLUSIVE:
        assert "no verdict on this deploy" in verdict.reason


BASE = """
state_dir = "/tmp/x"
[repos.shop]
base_url = "http://127.0.0.1:8080"
"""


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("fail_threshold = 3\nfail_lookback = 2\n", "repos.shop.fail_lookback: 2 is below"),
        ("fail_lookback = 0\n", "repos.shop.fail_lookback"),
        ("fail_lookback = 1001\n", "repos.shop.fail_lookback"),
        ("min_judged_fraction = 1.5\n", "repos.shop.min_judged_fraction"),
        (
            '[[repos.shop.checks]]\nname = "c"\npath = "/c"\nexpect = ["status == 200"]\n'
            "fail_threshold = 4\nfail_lookback = 3\n",
            "repos.shop.checks.0.fail_lookback: 3 is below",
        ),
    ],
)
def test_config_rules(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra, "c.toml")
    assert any(problem in line for line in caught.value.lines), caught.value.lines


def test_defaults_keep_the_seed_rules() -> None:
    settings = parse_config(BASE, "c.toml").window_settings("shop")
    assert (settings.fail_lookback, settings.min_judged_fraction) == (None, 0.5)
    good = parse_config(BASE + "fail_threshold = 3\nfail_lookback = 10\n", "c.toml")
    assert good.window_settings("shop").fail_lookback == 10


def test_thresholds_default_to_the_seed_rules() -> None:
    th = Thresholds(3, 0.2, 6)
    assert (th.fail_lookback, th.check_lookbacks, th.min_judged_fraction) == (0, {}, 0.0)
    assert th.lookback_for_check("any") == 0
