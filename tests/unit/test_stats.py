"""stats.py against scipy (a test-only dependency): the daemon's own rank test, two-proportion
test and median must give scipy's p-values on random samples, with ties, on tiny samples."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp

from postdeploy.stats import (
    falling,
    fisher_greater,
    mann_whitney_greater,
    median,
    normal_sf,
    two_proportions_greater,
    u_counts,
)


def scipy_p(x: list[float], y: list[float], method: str) -> float:
    return float(sp.mannwhitneyu(x, y, alternative="greater", method=method).pvalue)


def assert_close(ours: float, theirs: float) -> None:
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-15), (ours, theirs)


# -- Mann-Whitney U ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_samples_match_scipy_every_method(seed: int) -> None:
    rng = random.Random(seed)
    n1, n2 = rng.randint(1, 30), rng.randint(1, 30)
    shift = rng.choice([0.0, 0.3, 1.0])
    x = [rng.lognormvariate(shift, 0.5) for _ in range(n1)]
    y = [rng.lognormvariate(0.0, 0.5) for _ in range(n2)]
    for method in ("asymptotic", "exact", "auto"):
        ours = mann_whitney_greater(x, y, method)
        assert_close(ours.p_value, scipy_p(x, y, method))
        assert ours.u == sp.mannwhitneyu(x, y, alternative="greater").statistic


@pytest.mark.parametrize("seed", range(40))
def test_ties_match_scipy(seed: int) -> None:
    rng = random.Random(1000 + seed)
    values = [rng.choice([10.0, 11.0, 12.0, 13.0, 30.0]) for _ in range(3)]
    x = [rng.choice(values) for _ in range(rng.randint(1, 25))]
    y = [rng.choice(values) for _ in range(rng.randint(1, 25))]
    for method in ("asymptotic", "auto"):
        ours = mann_whitney_greater(x, y, method)
        theirs = sp.mannwhitneyu(x, y, alternative="greater", method=method)
        if math.isnan(theirs.pvalue):  # scipy divides 0 by 0 only without continuity
            continue
        assert_close(ours.p_value, float(theirs.pvalue))
        assert ours.u == theirs.statistic


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
)
def test_any_small_integer_samples_match_scipy(x: list[int], y: list[int]) -> None:
    """Small integers: heavy ties, tiny samples, equal samples, all-equal values."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    theirs = scipy_p(xs, ys, "auto")
    assert_close(mann_whitney_greater(xs, ys).p_value, theirs)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0], [2.0]),
        ([2.0], [1.0]),
        ([5.0, 6.0], [1.0]),
        ([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]),
        ([10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]),  # complete separation
        ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]),
        ([float(i) for i in range(8)], [float(i) + 0.5 for i in range(40)]),  # exact, 8 vs 40
    ],
)
def test_tiny_samples_exact_match_scipy(x: list[float], y: list[float]) -> None:
    for method in ("exact", "auto", "asymptotic"):
        ours = mann_whitney_greater(x, y, method)
        assert_close(ours.p_value, scipy_p(x, y, method))
    assert mann_whitney_greater(x, y).method == "exact"


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_equal_samples_and_all_equal_values(n: int) -> None:
    same = [3.0 + 0.1 * i for i in range(n)]
    assert_close(mann_whitney_greater(same, list(same)).p_value, scipy_p(same, same, "auto"))
    flat = [7.0] * n
    ours = mann_whitney_greater(flat, [7.0] * (n + 1))
    assert ours.p_value == 1.0  # no evidence at all
    assert ours.method == "asymptotic"
    assert_close(ours.p_value, scipy_p(flat, [7.0] * (n + 1), "asymptotic"))


def test_auto_chooses_like_scipy() -> None:
    rng = random.Random(7)
    nine = [rng.random() for _ in range(9)]
    eight = [rng.random() for _ in range(8)]
    assert mann_whitney_greater(nine, [*nine[::-1], 2.0]).method == "asymptotic"  # ties
    assert mann_whitney_greater(nine, [v + 5 for v in nine]).method == "asymptotic"
    many = [rng.random() + 5 for _ in range(30)]
    assert mann_whitney_greater(eight, many).method == "exact"
    assert mann_whitney_greater(many, eight).method == "exact"


def test_refuses_what_has_no_answer() -> None:
    with pytest.raises(ValueError, match="at least one"):
        mann_whitney_greater([], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        mann_whitney_greater([1.0], [])
    with pytest.raises(ValueError, match="ties"):
        mann_whitney_greater([1.0, 2.0], [2.0, 3.0], "exact")


@pytest.mark.parametrize(("n1", "n2"), [(1, 1), (1, 4), (3, 2), (4, 4), (2, 7), (5, 3)])
def test_u_counts_are_the_distribution_of_u(n1: int, n2: int) -> None:
    """Counted by brute force: every way to choose which ranks belong to the first sample."""
    from itertools import combinations

    brute = [0] * (n1 * n2 + 1)
    for chosen in combinations(range(1, n1 + n2 + 1), n1):
        brute[sum(chosen) - n1 * (n1 + 1) // 2] += 1
    assert u_counts(n1, n2) == brute
    assert u_counts(n2, n1) == brute


# -- the two-proportion test -------------------------------------------------------------


def scipy_two_proportions(x1: int, n1: int, x2: int, n2: int) -> float:
    """The one-sided p-value from scipy's chi-square test of the 2x2 table (chi2 = z^2 without
    Yates' correction): half its p-value when the first proportion is higher, else 1 - half."""
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    chi2 = sp.chi2_contingency(table, correction=False)
    half = float(chi2.pvalue) / 2
    return half if x1 / n1 > x2 / n2 else 1 - half


@pytest.mark.parametrize("seed", range(60))
def test_two_proportions_match_scipy(seed: int) -> None:
    rng = random.Random(2000 + seed)
    n1, n2 = rng.randint(1, 500), rng.randint(1, 3000)
    x1 = rng.randint(0, max(1, n1 // rng.choice([1, 5, 50])))
    x2 = rng.randint(0, max(1, n2 // rng.choice([1, 10, 200])))
    x1, x2 = min(x1, n1), min(x2, n2)
    if x1 + x2 in (0, n1 + n2) or x1 * n2 == x2 * n1:
        pytest.skip("no spread or equal proportions: chi2_contingency has no answer to compare")
    assert_close(two_proportions_greater(x1, n1, x2, n2), scipy_two_proportions(x1, n1, x2, n2))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [(3, 100, 1, 1000), (12, 120, 1, 480), (1, 60, 0, 240), (0, 60, 5, 240), (30, 30, 1, 30)],
)
def test_two_proportions_known_tables_match_scipy(x1: int, n1: int, x2: int, n2: int) -> None:
    ours = two_proportions_greater(x1, n1, x2, n2)
    assert_close(ours, scipy_two_proportions(x1, n1, x2, n2))
    # And the same z through scipy's normal distribution, computed independently here.
    p1, p2, pooled = x1 / n1, x2 / n2, (x1 + x2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert_close(ours, float(sp.norm.sf(z)))


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(0, 10, 0, 50), (10, 10, 50, 50), (0, 1, 0, 1)])
def test_two_proportions_without_spread_have_no_evidence(
    x1: int, n1: int, x2: int, n2: int
) -> None:
    assert two_proportions_greater(x1, n1, x2, n2) == 1.0


@pytest.mark.parametrize("test", [two_proportions_greater, fisher_greater])
@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [(0, 0, 0, 5), (0, 5, 0, 0), (-1, 5, 0, 5), (6, 5, 0, 5), (0, 5, 6, 5)],
)
def test_impossible_counts_are_refused(
    test: Callable[[int, int, int, int], float], x1: int, n1: int, x2: int, n2: int
) -> None:
    with pytest.raises(ValueError):
        test(x1, n1, x2, n2)


def scipy_fisher(x1: int, n1: int, x2: int, n2: int) -> float:
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    return float(sp.fisher_exact(table, alternative="greater").pvalue)


@pytest.mark.parametrize("seed", range(60))
def test_fisher_matches_scipy(seed: int) -> None:
    rng = random.Random(4000 + seed)
    n1, n2 = rng.randint(1, 300), rng.randint(1, 2000)
    x1 = min(n1, rng.randint(0, max(1, n1 // rng.choice([1, 5, 50]))))
    x2 = min(n2, rng.randint(0, max(1, n2 // rng.choice([1, 10, 200]))))
    ours, theirs = fisher_greater(x1, n1, x2, n2), scipy_fisher(x1, n1, x2, n2)
    assert math.isclose(ours, theirs, rel_tol=1e-7, abs_tol=1e-14), (ours, theirs)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [
        (1, 16, 1, 1416),
        (0, 10, 0, 50),
        (10, 10, 50, 50),
        (0, 1, 0, 1),
        (3, 24, 0, 1400),
        (60, 240, 1, 1416),
        (1, 1, 0, 1),
        (0, 5, 5, 5),
        (5, 5, 0, 5),
    ],
)
def test_fisher_known_tables_match_scipy(x1: int, n1: int, x2: int, n2: int) -> None:
    ours, theirs = fisher_greater(x1, n1, x2, n2), scipy_fisher(x1, n1, x2, n2)
    assert math.isclose(ours, theirs, rel_tol=1e-7, abs_tol=1e-14), (ours, theirs)


# -- the median and the normal tail ------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_median_matches_numpy(seed: int) -> None:
    rng = random.Random(3000 + seed)
    values = [rng.expovariate(0.1) for _ in range(rng.randint(1, 40))]
    assert_close(median(values), float(np.median(values)))


@pytest.mark.parametrize(
    ("values", "expected"), [([3.0], 3.0), ([1.0, 3.0], 2.0), ([5.0, 1.0, 3.0], 3.0)]
)
def test_median_small(values: list[float], expected: float) -> None:
    assert median(values) == expected


def test_median_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        median([])


@pytest.mark.parametrize("z", [-40.0, -3.0, -0.5, 0.0, 0.5, 2.326, 5.0, 12.0, 37.0])
def test_normal_sf_matches_scipy(z: float) -> None:
    assert_close(normal_sf(z), float(sp.norm.sf(z)))


# -- the trend test (a window still recovering) -------------------------------------------


def scipy_falling(values: list[float]) -> float:
    result = sp.kendalltau(range(len(values)), values, alternative="less", method="asymptotic")
    return float(result.pvalue)


@pytest.mark.parametrize("seed", range(40))
def test_falling_matches_scipy_on_random_samples(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(3, 40)
    drift = rng.choice([-1.0, 0.0, 1.0])
    values = [rng.lognormvariate(0, 0.4) + drift * i / n for i in range(n)]
    assert_close(falling(values), scipy_falling(values))


@given(st.lists(st.integers(0, 4), min_size=3, max_size=25))
@settings(max_examples=200, deadline=None)
def test_falling_with_ties_matches_scipy(values: list[int]) -> None:
    if len(set(values)) == 1:
        assert falling([float(v) for v in values]) == 1.0  # no order at all: nothing to say
        return
    assert_close(falling([float(v) for v in values]), scipy_falling([float(v) for v in values]))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], "falls"),
        ([0.1, 0.2, 0.5, 1.0, 2.0, 3.0], "rises"),
        ([1.0, 2.0], "too few"),
        ([2.0, 2.0, 2.0, 2.0], "flat"),
    ],
)
def test_falling_says_what_it_sees(values: list[float], expected: str) -> None:
    p = falling(values)
    if expected == "falls":
        assert p < 0.01
    elif expected == "rises":
        assert p > 0.99
    else:
        assert p == 1.0
