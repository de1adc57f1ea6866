"""The baseline comparison (baseline.py) and how the verdict uses it: pure, table-driven."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from postdeploy import baseline as bl
from postdeploy.baseline import (
    BaselineRow,
    BaselineRules,
    BaselineTally,
    Comparison,
    Reference,
    compare_fivexx,
    compare_latency,
    judge_window,
    kept,
    parse_rows,
    reference,
)
from postdeploy.config import ConfigError, WindowSettings, parse_config
from postdeploy.series import ProbeRow, Tally, fold, replay
from postdeploy.store import parse_json_lines
from postdeploy.verdict import Decision, Status, Thresholds, classify, decide_action, healthy

ARMED = 10_000.0
RULES = BaselineRules(
    fail_threshold=3, min_samples=6, latency_increase=0.5, fivexx_increase=0.02, gap_s=60
)
TH = Thresholds(3, 0.2, 6)


def brow(i: int, latency: float = 30.0, ok: bool = True, **kw: Any) -> BaselineRow:
    """Baseline row `i` seconds... 10 s apart, the last (i=0) at armed_at - 70 (before the gap)."""
    return BaselineRow(ts=ARMED - 70 - 10 * i, health_ok=ok, latency_ms=latency, **kw)


def steady(n: int = 60, base: float = 30.0, total: int = 0, fivexx: int = 0) -> list[BaselineRow]:
    """n passing rows with latencies spread around `base` (no ties)."""
    return [brow(i, base + (i % 7) - 3 + i / 1000, total=total, fivexx=fivexx) for i in range(n)]


def wrow(
    tick: int, latency: float = 30.0, ok: bool = True, total: int = 0, fivexx: int = 0, **kw: Any
) -> ProbeRow:
    return ProbeRow(
        tick=tick,
        scheduled_ts=ARMED + 30 * tick,
        ts=ARMED + 30 * tick,
        health_ok=ok,
        health_code=200 if ok else 503,
        total=total,
        fivexx=fivexx,
        latency_ms=latency,
        detail="ok" if ok else "health HTTP 503",
        **kw,
    )


def slow_rows(n: int, factor: float, start: int = 0) -> list[ProbeRow]:
    return [wrow(start + k, factor * (30 + (k % 5) - 2 + k / 1000)) for k in range(n)]


# -- rows and the file ---------------------------------------------------------------------


def test_row_round_trips_through_its_json_line() -> None:
    row = BaselineRow(12.5, False, 3.25, total=2, fivexx=1, health_code=503, detail="x")
    assert BaselineRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    flagged = replace(row, inconclusive=True)
    assert flagged.to_dict()["inconclusive"] is True
    assert "inconclusive" not in row.to_dict()
    assert BaselineRow.from_dict(flagged.to_dict()) == flagged


def test_row_json_rounds_times_to_microseconds_and_latency_to_microseconds() -> None:
    row = BaselineRow(12.12345678, True, 3.14159265)
    assert (row.to_dict()["ts"], row.to_dict()["latency_ms"]) == (12.123457, 3.142)


def test_rules_and_reference_defaults() -> None:
    assert BaselineRules() == BaselineRules(3, 6, 0.99, None, None, 60.0)
    assert Reference(0.0, 0, (), 0, 0).preexisting == ""


def test_reference_figures_are_rounded() -> None:
    ref = Reference(7.12345678, 1, (3.14159265,), 0, 0)
    assert (ref.to_dict()["cut"], ref.to_dict()["median_ms"]) == (7.123457, 3.142)


def test_row_of_a_probe_keeps_what_the_comparison_reads() -> None:
    probe = wrow(4, 41.0, ok=False, total=3, fivexx=2, inconclusive=True)
    assert BaselineRow.of_probe(probe) == BaselineRow(
        probe.ts, False, 41.0, 3, 2, 503, "health HTTP 503", True
    )


GOOD = {"ts": 1.0, "health_ok": True, "latency_ms": 2.0}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {},
        {**GOOD, "ts": "1"},
        {**GOOD, "ts": math.inf},
        {**GOOD, "ts": True},
        {**GOOD, "latency_ms": None},
        {**GOOD, "latency_ms": -1.0},
        {**GOOD, "health_ok": 1},
        {**GOOD, "total": 1.0},
        {**GOOD, "fivexx": True},
        {**GOOD, "health_code": "200"},
        {**GOOD, "total": 1, "fivexx": 2},
        {**GOOD, "fivexx": -1, "total": 0},
        {**GOOD, "health_code": 1000},
        {**GOOD, "health_code": -1},
    ],
)
def test_malformed_rows_are_refused(raw: Any) -> None:
    assert BaselineRow.from_dict(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GOOD, BaselineRow(1.0, True, 2.0)),
        ({**GOOD, "latency_ms": 0}, BaselineRow(1.0, True, 0.0)),
        (
            {**GOOD, "total": 2, "fivexx": 2, "health_code": 999, "detail": 5},
            BaselineRow(1.0, True, 2.0, 2, 2, 999, "5"),
        ),
        ({**GOOD, "inconclusive": "yes"}, BaselineRow(1.0, True, 2.0)),
    ],
)
def test_valid_rows(raw: dict[str, Any], expected: BaselineRow) -> None:
    assert BaselineRow.from_dict(raw) == expected


def test_the_file_with_a_torn_last_line_and_a_bad_line() -> None:
    lines = [json.dumps(brow(i).to_dict()).encode() for i in range(3)]
    data = b"\n".join([lines[0], b"not json", b'{"ts": 1}', lines[1], lines[2]]) + b"\n"
    parsed = parse_json_lines(data + b'{"ts": 5, "hea')
    rows, skipped = parse_rows(parsed.rows)
    assert rows == [brow(0), brow(1), brow(2)]
    assert skipped == 1  # the object missing keys; "not json" is the parser's bad line
    assert parsed.torn_bytes == len(b'{"ts": 5, "hea')


@pytest.mark.parametrize(
    ("keep_s", "expected"), [(0.0, [0]), (10.0, [0, 1]), (9.99, [0]), (1000.0, [0, 1, 2])]
)
def test_kept_rows_are_the_last_keep_s(keep_s: float, expected: list[int]) -> None:
    rows = [brow(i) for i in range(3)]
    assert kept(rows, rows[0].ts, keep_s) == [rows[i] for i in expected]


# -- the reference: the cut, and "already failing before the deploy" ------------------------


def at(ts: float, ok: bool = True, **kw: Any) -> BaselineRow:
    return BaselineRow(ts=ts, health_ok=ok, latency_ms=kw.pop("latency", 30.0), **kw)


def test_the_cut_leaves_out_the_gap_before_armed_at() -> None:
    rows = [at(ARMED - 60.001, latency=1.0), at(ARMED - 60.0, latency=2.0), at(ARMED, latency=3)]
    ref = reference(rows, ARMED, RULES)
    assert ref.cut == ARMED - 60
    assert ref.latencies == (1.0,)
    assert ref.rows == 1


def test_reference_counts_judged_rows_only() -> None:
    rows = [
        at(1, latency=5.0, total=2, fivexx=1),
        at(2, ok=False, latency=9.0, total=2, fivexx=2),
        at(3, latency=7.0, total=4, fivexx=3, inconclusive=True),
    ]
    ref = reference(rows, ARMED, RULES)
    assert (ref.rows, ref.latencies, ref.total, ref.fivexx) == (2, (5.0,), 4, 3)
    assert ref.to_dict() == {
        "cut": ARMED - 60,
        "rows": 2,
        "latency_samples": 1,
        "median_ms": 5.0,
        "p10_ms": 5.0,
        "p90_ms": 5.0,
        "fivexx": 3,
        "fivexx_total": 4,
        "preexisting": False,
    }
    assert reference([], ARMED, RULES).to_dict()["median_ms"] is None
    assert reference([], ARMED, RULES).to_dict()["p90_ms"] is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 0.1, 5.0),
        ([5.0], 0.9, 5.0),
        ([float(v) for v in range(1, 11)], 0.1, 1.0),  # nearest rank: ceil(0.1 * 10) = 1st
        ([float(v) for v in range(1, 11)], 0.9, 9.0),
        ([float(v) for v in range(10, 0, -1)], 0.9, 9.0),  # order does not matter
        ([1.0, 2.0, 3.0], 0.5, 2.0),
        ([float(v) for v in range(1, 11)], 0.95, 10.0),  # the top rank
        ([float(v) for v in range(1, 11)], 1.0, 10.0),
        ([float(v) for v in range(1, 11)], 0.0, 1.0),
    ],
)
def test_quantile(values: list[float], q: float, expected: float) -> None:
    assert bl.quantile(values, q) == expected


@pytest.mark.parametrize(
    ("pattern", "preexisting"),
    [
        ("...xxx", True),  # the last 3 rows before the cut failed
        ("..x.xx", False),
        ("xxx...", False),
        ("xx", False),  # fewer rows than fail_threshold: nothing to say
        ("xxx", True),
        ("xx?x", True),  # an inconclusive row is not judged
        ("xxx|..", True),  # passing rows inside the gap (after the cut) do not count
        ("...|xxx", False),  # nor do failures there: the deploy's own restart
        ("", False),
    ],
)
def test_already_failing_before_the_deploy(pattern: str, preexisting: bool) -> None:
    before, _, gap = pattern.partition("|")
    rows = [
        at(ARMED - 100 - 10 * (len(before) - i), ok=c != "x", inconclusive=c == "?")
        for i, c in enumerate(before)
    ]
    rows += [at(ARMED - 30 + i, ok=c != "x") for i, c in enumerate(gap)]
    ref = reference(list(reversed(rows)), ARMED, RULES)  # any file order
    assert bool(ref.preexisting) is preexisting
    if preexisting:
        assert "already failing before the deploy: its last 3 baseline probes failed" in (
            ref.preexisting
        )


def test_preexisting_names_the_last_failure() -> None:
    rows = [at(float(i), ok=False, health_code=502 + i) for i in range(3)]
    assert ref_text(rows).endswith("(last: HTTP 504)")
    rows[2] = replace(rows[2], detail="health HTTP 504: bad gateway")
    assert ref_text(rows).endswith("(last: health HTTP 504: bad gateway)")


def ref_text(rows: list[BaselineRow]) -> str:
    return reference(rows, ARMED, RULES).preexisting


# -- one comparison ------------------------------------------------------------------------

BASE = [30.0 + (i % 7) - 3 + i / 1000 for i in range(60)]


@pytest.mark.parametrize(
    ("window", "increase", "regressed"),
    [
        ([60.0 + i / 100 for i in range(20)], 0.5, True),  # +100 %, clear
        ([60.0 + i / 100 for i in range(20)], 1.0, True),  # exactly the increase counts
        ([60.0 + i / 100 for i in range(20)], 1.1, False),  # significant, not enough
        ([33.0 + i / 100 for i in range(20)], 0.05, True),  # +10 %, significant, enough
        ([31.0, 20.0, 40.0, 25.0, 29.0, 35.0], 0.01, False),  # no shift: not significant
        ([25.0 + i / 100 for i in range(20)], 0.01, False),  # faster
    ],
)
def test_compare_latency(window: list[float], increase: float, regressed: bool) -> None:
    rules = replace(RULES, latency_increase=increase)
    got = compare_latency(window, BASE, rules, streak=2)
    assert got.regressed is regressed
    assert got.streak == (3 if regressed else 0)
    assert got.metric == "latency"
    assert (got.window_samples, got.baseline_samples) == (len(window), 60)
    assert got.window == pytest.approx(sorted(window)[len(window) // 2 - 1 : -1][0], abs=30)


@pytest.mark.parametrize(
    ("latest", "regressed"),
    [(45.0, True), (44.999, False), (30.0, False)],  # the latest answer must be up 50 % too
)
def test_compare_latency_wants_the_latest_answer_up(latest: float, regressed: bool) -> None:
    window = [60.0 + i / 100 for i in range(20)] + [latest]
    base = [float(v) for v in range(15, 46)]  # median 30
    got = compare_latency(window, base, RULES)
    assert got.p_value < 0.001
    assert got.regressed is regressed


def test_an_increase_of_exactly_latency_increase_counts() -> None:
    window = [40.0 + i for i in range(11)]  # median 45 = +50 % of 30, and so is the latest
    window[-1], window[5] = 45.0, 50.0
    got = compare_latency(window, [float(v) for v in range(15, 46)], RULES)
    assert (got.window, got.baseline) == (45.0, 30.0)
    assert got.regressed


def test_compare_fivexx_is_exact_on_a_handful_of_requests() -> None:
    # One 5xx in 16 requests against 1 in 1416: the chance of at least one is about 1.6 %.
    got = compare_fivexx(1, 16, 1, 1416, RULES)
    assert 0.01 < got.p_value < 0.03
    assert not got.regressed


def test_compare_latency_figures() -> None:
    got = compare_latency([60.0, 62.0, 64.0], [30.0, 31.0, 32.0], RULES)
    assert (got.window, got.baseline) == (62.0, 31.0)
    assert got.shift == pytest.approx(1.0)
    assert got.p_value == pytest.approx(0.05)  # exact: 1 of C(6,3) = 20 orderings
    assert not got.regressed  # 0.05 is not significant at 0.99
    assert replace(RULES, confidence=0.9).alpha == pytest.approx(0.1)
    loose = compare_latency([60.0, 62.0, 64.0], [30.0, 31.0, 32.0], replace(RULES, confidence=0.9))
    assert loose.regressed and loose.streak == 1


@pytest.mark.parametrize(
    ("window", "base", "shift"),
    [
        ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], math.inf),
        ([0.0, 0.5, 1.0], [0.0, 0.0, 0.0], math.inf),  # any rise, even under a millisecond
        ([0.0, 0.0], [0.0, 0.0], 0.0),
        ([1.0, 1.0], [0.5, 0.5], 1.0),  # a baseline under a millisecond is still a baseline
    ],
)
def test_compare_latency_with_a_zero_baseline(
    window: list[float], base: list[float], shift: float
) -> None:
    assert compare_latency(window, base, RULES).shift == shift


def test_p_value_at_exactly_alpha_is_not_significant() -> None:
    # The exact p-value of one value above three is 1/4; alpha 0.25 is exact in binary.
    rules = replace(RULES, confidence=0.75)
    at_alpha = compare_latency([60.0], [30.0, 31.0, 32.0], rules)
    assert at_alpha.p_value == 0.25
    assert not at_alpha.regressed
    assert compare_latency([60.0], [30.0, 31.0, 32.0], replace(rules, confidence=0.74)).regressed


@pytest.mark.parametrize(
    ("fivexx", "total", "increase", "regressed"),
    [
        (30, 300, 0.02, True),  # 10 % vs 1 %
        (30, 300, 0.09, True),  # exactly the increase counts
        (30, 300, 0.091, False),
        (4, 300, 0.001, False),  # 1.3 % vs 1 %: not significant
        (0, 300, 0.001, False),
    ],
)
def test_compare_fivexx(fivexx: int, total: int, increase: float, regressed: bool) -> None:
    rules = replace(RULES, fivexx_increase=increase)
    got = compare_fivexx(fivexx, total, 12, 1200, rules, streak=1)
    assert compare_fivexx(fivexx, total, 12, 1200, rules).streak == int(regressed)
    assert got.regressed is regressed
    assert got.streak == (2 if regressed else 0)
    assert (got.metric, got.window_samples, got.baseline_samples) == ("5xx", total, 1200)
    assert got.window == fivexx / total
    assert got.baseline == 0.01
    assert got.shift == pytest.approx(fivexx / total - 0.01)


def test_a_comparison_that_is_off_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_increase"):
        compare_latency([1.0], [1.0], replace(RULES, latency_increase=None))
    with pytest.raises(ValueError, match="fivexx_increase"):
        compare_fivexx(0, 1, 0, 1, replace(RULES, fivexx_increase=None))


@pytest.mark.parametrize(
    ("comparison", "sentence"),
    [
        (
            Comparison("latency", 20, 60, 71.0, 30.0, 1.3667, 0.0004, True, 3),
            "health latency 71 ms vs 30 ms before the deploy (+137 %, p=0.0004, 20 vs 60 probes)",
        ),
        (
            Comparison("latency", 6, 8, 4.25, 9.5, -0.5526, 0.93, False, 0),
            "health latency 4.2 ms vs 9.5 ms before the deploy (-55 %, p=0.93, 6 vs 8 probes)",
        ),
        (
            Comparison("latency", 6, 8, 10.0, 9.99, 0.001, 0.00001, False, 0),
            "health latency 10 ms vs 10.0 ms before the deploy (+0 %, p<0.0001, 6 vs 8 probes)",
        ),
        (
            Comparison("latency", 6, 8, 10.0, 9.99, 0.001, 0.0001, False, 0),
            "health latency 10 ms vs 10.0 ms before the deploy (+0 %, p=0.0001, 6 vs 8 probes)",
        ),
        (
            Comparison("5xx", 120, 480, 0.03, 0.001, 0.029, 0.00012, True, 3),
            "5xx ratio 3.0 % vs 0.1 % before the deploy (+2.9 points, p=0.00012, "
            "120 vs 480 requests)",
        ),
    ],
)
def test_sentences(comparison: Comparison, sentence: str) -> None:
    assert comparison.sentence() == sentence


def test_comparison_figures() -> None:
    c = Comparison("latency", 20, 60, 71.00001234, 30.00000077, 1.36671234, 0.0004, True, 3)
    assert c.to_dict() == {
        "window_samples": 20,
        "baseline_samples": 60,
        "window": 71.000012,
        "baseline": 30.000001,
        "shift": 1.366712,
        "p_value": 0.0004,
        "regressed": True,
        "streak": 3,
    }


# -- the window, tick by tick ----------------------------------------------------------------


def run(
    rows: list[ProbeRow], base: list[BaselineRow] | None = None, **rules: Any
) -> list[BaselineTally]:
    """The tally after each row."""
    tally = bl.start(steady() if base is None else base, ARMED, replace(RULES, **rules))
    seen = []
    for row in rows:
        tally = tally.fold(row)
        seen.append(tally)
    return seen


def test_a_doubled_latency_trips_after_fail_threshold_evaluations() -> None:
    seen = run(slow_rows(10, 2.0))
    # Evaluated from the 6th row (min_samples); tripped at the 3rd regression in a row.
    assert [t.latency is not None for t in seen] == [False] * 5 + [True] * 5
    assert [t.latency.streak if t.latency else 0 for t in seen] == [0] * 5 + [1, 2, 3, 4, 5]
    assert [t.tripped is not None for t in seen] == [False] * 7 + [True] * 3
    assert seen[7].tripped == seen[7].latency
    assert seen[9].tripped == seen[7].latency  # the first to trip stays the evidence


def test_unchanged_latency_never_trips() -> None:
    seen = run(slow_rows(30, 1.0))
    assert all(t.tripped is None for t in seen)
    assert seen[-1].latency is not None and seen[-1].latency.streak == 0


@pytest.mark.parametrize(
    ("rows", "base", "evaluated"),
    [
        (slow_rows(6, 2.0), steady(6), True),
        (slow_rows(5, 2.0), steady(6), False),  # the window side is short
        (slow_rows(6, 2.0), steady(5), False),  # the baseline side is short
    ],
)
def test_min_samples_on_each_side(
    rows: list[ProbeRow], base: list[BaselineRow], evaluated: bool
) -> None:
    assert (run(rows, base)[-1].latency is not None) is evaluated


def test_failed_or_inconclusive_rows_add_no_latency_and_keep_the_streak() -> None:
    rows = slow_rows(7, 2.0)
    rows.append(wrow(7, 500.0, ok=False))  # a failed health answer: no latency sample
    rows.append(wrow(8, 500.0, inconclusive=True))  # not judged at all
    rows.append(wrow(9, 61.0))
    seen = run(rows)
    assert [len(t.latencies) for t in seen] == [1, 2, 3, 4, 5, 6, 7, 7, 7, 8]
    assert seen[8] is seen[7]  # an inconclusive row changes nothing
    assert seen[7].latency == seen[6].latency  # not evaluated again without a new sample
    assert seen[9].tripped is not None and seen[9].tripped.streak == 3


def test_a_passing_tick_breaks_the_streak() -> None:
    rows = slow_rows(7, 2.0) + [wrow(7 + k, 20.0 + k / 100) for k in range(12)]
    seen = run(rows, fail_threshold=10)
    streaks = [t.latency.streak if t.latency else 0 for t in seen]
    assert streaks[5:7] == [1, 2]
    assert 0 in streaks[7:]
    assert all(t.tripped is None for t in seen)


def test_latency_off_is_never_evaluated() -> None:
    seen = run(slow_rows(10, 3.0), latency_increase=None)
    assert all(t.latency is None and t.tripped is None for t in seen)


def five(n: int, fivexx_every: int, start: int = 0) -> list[ProbeRow]:
    """Rows with 10 requests each; `fivexx_every`-th row has 5 of them failing (0: never)."""
    return [
        wrow(
            start + k,
            30.0 + k / 100,
            total=10,
            fivexx=5 if fivexx_every and k % fivexx_every == 0 else 0,
        )
        for k in range(n)
    ]


def test_a_5xx_rise_trips_after_fail_threshold_evaluations() -> None:
    base = steady(60, total=10, fivexx=0)
    base[5] = replace(base[5], fivexx=3)  # 3 in 600 before: 0.5 %
    seen = run(five(12, 1), base, latency_increase=None)
    assert seen[0].fivexx_comparison is not None  # 10 requests >= min_samples already
    assert [t.tripped is not None for t in seen[:3]] == [False, False, True]
    assert seen[2].tripped is not None and seen[2].tripped.metric == "5xx"
    assert (seen[-1].total, seen[-1].fivexx) == (120, 60)


@pytest.mark.parametrize(
    ("rows", "base_total", "evaluated"),
    [
        ([wrow(0, total=6, fivexx=3)], 10, True),
        ([wrow(0, total=5, fivexx=3)], 10, False),  # 5 requests in the window
        ([wrow(0, total=6, fivexx=3)], 5, False),  # 5 in the baseline
        ([wrow(0, total=6, fivexx=3)], 6, True),
        ([wrow(0, total=6, fivexx=3), wrow(1, total=0)], 10, True),
    ],
)
def test_5xx_needs_min_samples_requests(
    rows: list[ProbeRow], base_total: int, evaluated: bool
) -> None:
    base = [brow(0, total=base_total)]
    seen = run(rows, base, latency_increase=None)
    assert (seen[-1].fivexx_comparison is not None) is evaluated


def test_a_row_without_requests_does_not_evaluate_5xx_again() -> None:
    base = steady(60, total=10)
    seen = run([wrow(0, total=10, fivexx=9), wrow(1, total=0)], base, latency_increase=None)
    assert seen[1].fivexx_comparison is seen[0].fivexx_comparison


def test_5xx_off_is_never_evaluated() -> None:
    seen = run(five(5, 1), steady(60, total=10), fivexx_increase=None)
    assert all(t.fivexx_comparison is None for t in seen)


def test_latency_is_checked_before_5xx_when_both_trip_together() -> None:
    base = steady(60, total=10)
    rows = [wrow(k, 90.0 + k / 100, total=10 * (k >= 2), fivexx=5 * (k >= 2)) for k in range(8)]
    seen = run(rows, base, min_samples=3)
    assert [t.tripped is not None for t in seen[:5]] == [False] * 4 + [True]
    assert seen[4].fivexx_comparison is not None and seen[4].fivexx_comparison.streak == 3
    assert seen[4].tripped is seen[4].latency


def test_summary_and_figures() -> None:
    base = steady(60, total=10)
    tally = judge_window(base, [wrow(k, 30.5 + k / 100, total=10) for k in range(6)], ARMED, RULES)
    assert tally.summary().startswith("health latency 3")
    assert "; 5xx ratio 0.0 % vs 0.0 % before the deploy" in tally.summary()
    figures = tally.to_dict()
    assert set(figures) == {"reference", "latency", "fivexx", "summary"}
    assert figures["summary"] == tally.summary()
    assert figures["latency"]["window_samples"] == 6
    assert bl.start(base, ARMED, RULES).summary() == ""
    assert bl.start(base, ARMED, RULES).to_dict() == {
        "reference": reference(base, ARMED, RULES).to_dict()
    }
    tripped = judge_window(steady(), slow_rows(8, 3.0), ARMED, RULES).to_dict()
    assert tripped["tripped"] == "latency"


def test_whole_window_replay_equals_the_incremental_form() -> None:
    rows = slow_rows(10, 2.0)
    assert judge_window(steady(), rows, ARMED, RULES) == run(rows)[-1]


def test_rules_of_the_effective_settings() -> None:
    settings = WindowSettings(
        fail_threshold=4,
        min_samples=9,
        baseline_confidence=0.95,
        latency_increase=0.3,
        fivexx_increase=0.05,
        baseline_gap_s=12,
    )
    assert BaselineRules.of(settings) == BaselineRules(4, 9, 0.95, 0.3, 0.05, 12)


# -- in the tally and the verdict --------------------------------------------------------------


def window(rows: list[ProbeRow], base: list[BaselineRow] | None = None, **rules: Any) -> Tally:
    start = Tally(
        baseline=bl.start(steady() if base is None else base, ARMED, replace(RULES, **rules))
    )
    return replay([row.to_dict() for row in rows], start)


def test_the_series_fold_carries_the_baseline() -> None:
    tally = window(slow_rows(8, 2.0))
    assert tally.baseline is not None and tally.baseline.tripped is not None
    assert replay([r.to_dict() for r in slow_rows(8, 2.0)]).baseline is None
    again = fold(tally, slow_rows(1, 2.0)[0])  # tick 0 again: ignored, baseline untouched
    assert again.baseline is tally.baseline and again.ignored == 1


def test_a_baseline_regression_is_degraded_with_its_sentence() -> None:
    verdict = classify(window(slow_rows(8, 2.0)), TH)
    assert verdict is not None and verdict.status is Status.DEGRADED
    assert verdict.reason == (
        "health latency 59 ms vs 30 ms before the deploy (+97 %, p<0.0001, 8 vs 60 probes), "
        "3 ticks in a row"
    )
    assert verdict.evidence["baseline"]["tripped"] == "latency"
    assert not verdict.preexisting


def test_no_regression_no_verdict_and_healthy_says_so() -> None:
    tally = window(slow_rows(10, 1.0))
    assert classify(tally, TH) is None
    verdict = healthy(tally, TH)
    assert verdict.status is Status.HEALTHY
    assert (
        "; against the baseline: health latency 30 ms vs 30 ms before the deploy" in verdict.reason
    )
    assert "latency" in verdict.evidence["baseline"]
    plain = healthy(replay([r.to_dict() for r in slow_rows(10, 1.0)]), TH)
    assert "baseline" not in plain.reason and "baseline" not in plain.evidence
    early = healthy(window(slow_rows(2, 1.0)), TH)  # nothing compared yet
    assert "baseline" not in early.reason and "baseline" in early.evidence


def test_the_window_own_rules_come_first() -> None:
    rows = slow_rows(7, 2.0) + [wrow(7 + k, ok=False) for k in range(3)]
    verdict = classify(window(rows), TH)
    assert verdict is not None and verdict.reason.startswith("health failed 3 consecutive")


@pytest.mark.parametrize("auto_rollback", [True, False])
def test_already_failing_before_the_deploy_alerts_only(auto_rollback: bool) -> None:
    base = steady(60)
    base[:3] = [replace(r, health_ok=False, detail="health HTTP 503") for r in base[:3]]
    failing = [wrow(k, ok=False) for k in range(3)]
    verdict = classify(window(failing, base), TH)
    assert verdict is not None and verdict.status is Status.DEGRADED and verdict.preexisting
    assert verdict.reason == (
        "health failed 3 consecutive probes (threshold 3); last: health HTTP 503; the service "
        "was already failing before the deploy: its last 3 baseline probes failed health "
        "(last: health HTTP 503): not the deploy's doing"
    )
    decision = decide_action(
        verdict.status, self_hosting=False, auto_rollback=auto_rollback, preexisting=True
    )
    assert decision is Decision.ALERT_ONLY
    assert classify(window(failing[:2], base), TH) is None  # no verdict: nothing to attribute


def test_a_healthy_baseline_keeps_the_rollback() -> None:
    verdict = classify(window([wrow(k, ok=False) for k in range(3)]), TH)
    assert verdict is not None and not verdict.preexisting
    assert "already failing" not in verdict.reason
    assert decide_action(verdict.status, self_hosting=False, auto_rollback=True) is (
        Decision.ROLLBACK
    )


@pytest.mark.parametrize(
    ("status", "self_hosting", "auto_rollback", "preexisting", "expected"),
    [
        (Status.DEGRADED, False, True, False, Decision.ROLLBACK),
        (Status.DEGRADED, False, True, True, Decision.ALERT_ONLY),
        (Status.DEGRADED, False, False, True, Decision.ALERT_ONLY),
        (Status.HEALTHY, False, True, True, Decision.NONE),
        (Status.DEGRADED, True, True, False, Decision.ALERT_ONLY),
    ],
)
def test_decide_action_with_preexisting(
    status: Status, self_hosting: bool, auto_rollback: bool, preexisting: bool, expected: Decision
) -> None:
    got = decide_action(
        status, self_hosting=self_hosting, auto_rollback=auto_rollback, preexisting=preexisting
    )
    assert got is expected


# -- the config keys ---------------------------------------------------------------------------

S = 'state_dir = "/s"\n'
REPO = '[repos.a]\nbase_url = "http://127.0.0.1:1"\n'


def test_baseline_keys_defaults_and_overrides() -> None:
    plain = parse_config(S + REPO).window_settings("a")
    assert (plain.baseline_interval_s, plain.baseline_keep_s, plain.baseline_gap_s) == (0, 3600, 60)
    assert (plain.latency_increase, plain.fivexx_increase, plain.baseline_confidence) == (
        None,
        None,
        0.99,
    )
    text = (
        S
        + "[defaults]\nbaseline_interval_s = 15\nlatency_increase = 0.5\n"
        + REPO
        + "baseline_keep_s = 1800\nbaseline_gap_s = 30\nfivexx_increase = 0.01\n"
        + "baseline_confidence = 0.95\n"
    )
    got = parse_config(text).window_settings("a")
    assert (got.baseline_interval_s, got.baseline_keep_s, got.baseline_gap_s) == (15, 1800, 30)
    assert (got.latency_increase, got.fivexx_increase, got.baseline_confidence) == (0.5, 0.01, 0.95)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[defaults]\nbaseline_interval_s = -1\n",
            "defaults.baseline_interval_s: Input should be greater than or equal to 0",
        ),
        (
            "[defaults]\nbaseline_keep_s = 0\n",
            "defaults.baseline_keep_s: Input should be greater than 0",
        ),
        ("[defaults]\nbaseline_gap_s = -1\n", "defaults.baseline_gap_s"),
        ("[defaults]\nlatency_increase = 0\n", "defaults.latency_increase"),
        ("[defaults]\nfivexx_increase = 0\n", "defaults.fivexx_increase"),
        ("[defaults]\nfivexx_increase = 1.5\n", "defaults.fivexx_increase"),
        (
            "[defaults]\nbaseline_confidence = 1\n",
            "defaults.baseline_confidence: Input should be less than 1",
        ),
        ("[defaults]\nbaseline_confidence = 0.4\n", "defaults.baseline_confidence"),
        ("[defaults]\nlatency_increase = '50%'\n", "defaults.latency_increase"),
        (
            REPO + "latency_increase = 0.5\n",
            "repos.a.latency_increase: compares with the baseline, but none is kept: "
            "set baseline_interval_s above 0",
        ),
        (REPO + "fivexx_increase = 0.01\n", "repos.a.fivexx_increase: compares with the baseline"),
        (
            REPO + "baseline_interval_s = 10\nbaseline_keep_s = 60\n",
            "repos.a.baseline_keep_s: 60 must be above baseline_gap_s (60): no baseline row",
        ),
        (
            "[defaults]\nbaseline_keep_s = 5\nbaseline_gap_s = 1\n"
            + REPO
            + "baseline_interval_s = 10\n",
            "defaults.baseline_keep_s: 5 is below baseline_interval_s (10): not even one row",
        ),
    ],
)
def test_bad_baseline_keys_are_clear_errors(text: str, fragment: str) -> None:
    full = (
        S + (text if text.startswith("[repos") else text + REPO)
        if "[repos" not in text
        else S + text
    )
    with pytest.raises(ConfigError) as info:
        parse_config(full, "c.toml")
    assert any(fragment in line for line in info.value.lines), info.value.lines


def test_a_comparison_in_defaults_may_serve_other_repos() -> None:
    text = (
        S
        + "[defaults]\nlatency_increase = 0.5\n"
        + REPO
        + "[repos.b]\nbase_url = 'http://x'\nbaseline_interval_s = 30\n"
    )
    config = parse_config(text)
    assert config.window_settings("b").baseline_interval_s == 30
    assert config.window_settings("a").latency_increase == 0.5  # no baseline: never compared


@pytest.mark.parametrize(
    ("figures", "said"),
    [
        ({}, "not compared (too few samples on one side) (0 probes before the deploy)"),
        (
            {"reference": {"rows": 60, "median_ms": 30.5}, "summary": "health latency 71 ms vs"},
            "health latency 71 ms vs (60 probes before the deploy, median 30.5 ms)",
        ),
        (
            {"reference": {"rows": 3, "median_ms": None, "preexisting": True}},
            "not compared (too few samples on one side) (3 probes before the deploy); "
            "the service was already failing before the deploy",
        ),
        (
            {"reference": "not a table"},
            "not compared (too few samples on one side) (0 probes before the deploy)",
        ),
    ],
)
def test_describe(figures: dict[str, object], said: str) -> None:
    assert bl.describe(figures) == said


def test_reference_figures_give_the_band_rounded_to_the_microsecond() -> None:
    """p10 and p90 of the reference's passing latencies, as the timeline's band draws them."""
    rows = [at(k, latency=10.0 + k + 0.12345) for k in range(1, 11)]
    figures = reference(rows, ARMED, RULES).to_dict()
    assert (figures["p10_ms"], figures["median_ms"], figures["p90_ms"]) == (11.123, 15.623, 19.123)
