"""The statistics behind the baseline comparison: small pure functions, the standard library
alone (the daemon does not depend on scipy; the tests check these against it).

- `mann_whitney_greater(x, y)`: is `x` (the window) stochastically greater than `y` (the
  baseline)? The one-sided Mann-Whitney U test, as `scipy.stats.mannwhitneyu(x, y,
  alternative="greater", method=...)` computes it: the exact null distribution for small
  samples without ties, else the normal approximation with tie correction and continuity
  correction.
- `two_proportions_greater(x1, n1, x2, n2)`: is the first proportion above the second? The
  one-sided two-proportion z test with the pooled proportion.
- `fisher_greater(x1, n1, x2, n2)`: the same question answered exactly (Fisher's exact test,
  one-sided): the z test calls one 5xx in 16 requests significant against a 0.1 % baseline,
  which it is not (the chance of at least one in 16 at 0.1 % is 1.6 %).
- `falling(values)`: are `values` (in time order) falling? Kendall's tau between time and
  value, one-sided, by the normal approximation with the tie correction, as
  `scipy.stats.kendalltau(range(n), values, alternative="less", method="asymptotic")`
  computes it (the Mann-Kendall trend test).
- `median(values)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Method = Literal["auto", "exact", "asymptotic"]

# `auto` uses the exact distribution when either sample has at most this many values and
# there are no ties (scipy's rule).
EXACT_MAX = 8


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z (accurate far into the upper tail, unlike 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def median(values: Sequence[float]) -> float:
    """The median of `values` (the mean of the middle two for an even count); ValueError when
    there are none."""
    if not values:
        raise ValueError("the median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass(frozen=True)
class RankTest:
    """The result of `mann_whitney_greater`: U of the first sample, and the p-value."""

    u: float
    p_value: float
    method: Literal["exact", "asymptotic"]


def _ranks(x: Sequence[float], y: Sequence[float]) -> tuple[float, list[int]]:
    """The rank sum of `x` in the pooled sample (ties get their average rank), and the size
    of every group of tied values."""
    pooled = sorted([(v, True) for v in x] + [(v, False) for v in y], key=lambda p: p[0])
    rank_sum = 0.0
    ties: list[int] = []
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        # Ranks i+1 .. j+1 (1-based) share their average.
        average = (i + j + 2) / 2.0
        rank_sum += average * sum(1 for k in range(i, j + 1) if pooled[k][1])
        ties.append(j - i + 1)
        i = j + 1
    return rank_sum, ties


def u_counts(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) orderings of two samples without ties give each U from
    0 to n1*n2: the coefficients of the Gaussian binomial [n1+n2 choose n1] in q, built as
    prod_{i=1..n1} (1 - q^(n2+i)) / (1 - q^i)."""
    size = n1 * n2 + 1
    counts = [0] * size
    counts[0] = 1
    for i in range(1, n1 + 1):
        step = n2 + i  # multiply by (1 - q^step): the highest terms first
        for k in range(size - 1, step - 1, -1):
            counts[k] -= counts[k - step]
        for k in range(i, size):  # divide by (1 - q^i): a running sum with stride i
            counts[k] += counts[k - i]
    return counts


def _exact_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) under the null hypothesis, with the exact distribution."""
    counts = u_counts(min(n1, n2), max(n1, n2))  # symmetric in n1, n2: the cheaper way round
    return sum(counts[u:]) / math.comb(n1 + n2, n1)  # U is always within 0 .. n1*n2


def mann_whitney_greater(
    x: Sequence[float], y: Sequence[float], method: Method = "auto"
) -> RankTest:
    """The one-sided Mann-Whitney U test that `x` is greater than `y` (scipy's
    `mannwhitneyu(x, y, alternative="greater", method=method)`, continuity correction on).

    `auto` is exact when either sample has at most 8 values and no value is tied, else
    asymptotic. `exact` with ties is refused (the exact distribution assumes none). When
    every value is equal there is no evidence at all: p = 1.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    rank_sum, ties = _ranks(x, y)
    u = rank_sum - n1 * (n1 + 1) / 2.0
    tied = any(t > 1 for t in ties)
    if method == "auto":
        method = "asymptotic" if (n1 > EXACT_MAX and n2 > EXACT_MAX) or tied else "exact"
    if method == "exact":
        if tied:
            raise ValueError("the exact distribution assumes no ties")
        return RankTest(u, _exact_sf(round(u), n1, n2), "exact")
    n = n1 + n2
    tie_term = sum(t**3 - t for t in ties)
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value tied: U is exactly its mean
        return RankTest(u, 1.0, "asymptotic")
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return RankTest(u, normal_sf(z), "asymptotic")


def _check_counts(x1: int, n1: int, x2: int, n2: int) -> None:
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both samples need at least one trial")
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError("successes must be between 0 and the number of trials")


def two_proportions_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """The p-value of the one-sided pooled two-proportion z test that x1/n1 is above x2/n2.

    With no spread in the pooled sample (no successes at all, or nothing but successes) the
    two cannot be told apart: p = 1.
    """
    _check_counts(x1, n1, x2, n2)
    pooled = (x1 + x2) / (n1 + n2)
    spread = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if spread <= 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(spread)
    return normal_sf(z)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x1: int, n1: int, x2: int, n2: int) -> float:
    """The p-value of Fisher's exact test, one-sided: the chance, with the margins fixed, of
    at least `x1` successes in the first sample (`scipy.stats.fisher_exact([[x1, n1 - x1],
    [x2, n2 - x2]], alternative="greater")`)."""
    _check_counts(x1, n1, x2, n2)
    successes, n = x1 + x2, n1 + n2
    whole = _log_comb(n, successes)
    top = min(n1, successes)
    # Summed exactly (fsum), from the far end of the tail, where the terms are smallest.
    return math.fsum(
        math.exp(_log_comb(n1, k) + _log_comb(n2, successes - k) - whole)
        for k in range(top, x1 - 1, -1)
    )


def falling(values: Sequence[float]) -> float:
    """The p-value of "`values`, in time order, fall": the one-sided Mann-Kendall trend test
    (Kendall's tau of time against value; normal approximation, ties corrected). 1.0 when
    nothing can be said (fewer than three values, or all equal)."""
    n = len(values)
    if n < 3:
        return 1.0
    s = sum(
        (values[j] > values[i]) - (values[j] < values[i]) for i in range(n) for j in range(i + 1, n)
    )
    ties: dict[float, int] = {}
    for v in values:
        ties[v] = ties.get(v, 0) + 1
    m = n * (n - 1)
    variance = (m * (2 * n + 5) - sum(t * (t - 1) * (2 * t + 5) for t in ties.values())) / 18
    if variance <= 0:
        return 1.0
    return normal_sf(-s / math.sqrt(variance))
