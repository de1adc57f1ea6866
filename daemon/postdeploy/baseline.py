"""Judging a window against what normal looked like before the deploy (pure: no I/O).

While no window of a repo is open, the daemon probes it every `baseline_interval_s` and keeps
the rows (`BaselineRow`, one line of `.baseline.jsonl` each). When a window opens, the rows
older than `armed_at - baseline_gap_s` are its `Reference` (the deploy's own restart, in the
gap, is not "normal"). Each judged row of the window then folds into a `BaselineTally`, which
compares the window so far with the reference:

- latency: the window's passing health answers are significantly slower than the
  baseline's (one-sided Mann-Whitney U at `baseline_confidence`), their median moved up by at
  least `latency_increase` times the baseline median, and so did the latest answer (a
  warm-up or a burst that is over does not count);
- 5xx: the window's 5xx ratio is significantly above the baseline's (one-sided Fisher exact
  test: the pooled z test is too eager on a handful of requests) and higher by at least
  `fivexx_increase` (absolute);
- a feature check's number (a Prometheus check's value, an HTTP check's latency or the JSON
  number at its `baseline_number` path) with `baseline_increase` and/or `baseline_min_shift`:
  the latency rule's comparison on that number, in the direction that is worse for it;

each evaluated once both sides have `baseline_min_samples` (default `min_samples`; latency:
passing health answers; 5xx: requests to the 5xx paths; a check: its numbers), and a
regression only when it holds at `fail_threshold`
evaluations in a row (one noisy tick is not a verdict; see docs/JUDGEMENT.md for the measured
false-alarm rate). A latency or a check's number still falling back towards the baseline (a
warm-up after the restart) is not a regression yet. The reference also tells whether the
service was already failing before the deploy: its last `fail_threshold` judged rows before
the cut all failed health.

The tally rides in `series.Tally.baseline`, so `series.fold` keeps it up to date and a
restarted daemon rebuilds it by replaying the window's rows over the same reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from postdeploy.checks import CHECK_NAME_RE
from postdeploy.stats import falling, fisher_greater, mann_whitney_greater, median

if TYPE_CHECKING:
    from postdeploy.series import ProbeRow

EPSILON = 1e-12  # an increase of exactly the configured size counts, despite float rounding
# A level whose last TREND_SPAN numbers are getting better with a trend test's p below
# RECOVERING_P is still recovering (a warm-up after the restart): not a regression yet.
TREND_SPAN = 10
RECOVERING_P = 0.05


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class BaselineRow:
    """One baseline probe: the same requests as a window's tick, as one line of
    `.baseline.jsonl`."""

    ts: float
    health_ok: bool
    latency_ms: float
    total: int = 0  # requests to the 5xx paths
    fivexx: int = 0  # of which answered 5xx (or not at all)
    health_code: int = 0
    detail: str = ""
    # The control probe failed with the service: our own network; the row is not judged.
    inconclusive: bool = False
    # The numbers of each feature check that could be judged: {"value", "latency_ms", "number"}.
    checks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def of_probe(cls, row: ProbeRow) -> BaselineRow:
        """The baseline row of a probe made like a window's tick (every field of a baseline
        row is a probe row's field of the same name; of its checks, only the numbers)."""
        kept = {f.name: getattr(row, f.name) for f in fields(cls) if f.name != "checks"}
        return cls(**kept, checks=check_numbers(row.checks))

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "ts": round(self.ts, 6),
            "health_ok": self.health_ok,
            "health_code": self.health_code,
            "latency_ms": round(self.latency_ms, 3),
            "total": self.total,
            "fivexx": self.fivexx,
            "detail": self.detail,
        }
        if self.inconclusive:
            row["inconclusive"] = True
        if self.checks:
            row["checks"] = {name: dict(numbers) for name, numbers in self.checks.items()}
        return row

    @classmethod
    def from_dict(cls, row: Any) -> BaselineRow | None:
        """Validate a parsed line; None when it is malformed (it then counts for nothing)."""
        if not isinstance(row, dict):
            return None
        ts: Any = row.get("ts")
        latency: Any = row.get("latency_ms")
        total, fivexx, code = row.get("total", 0), row.get("fivexx", 0), row.get("health_code", 0)
        if not (_number(ts) and _number(latency)) or type(row.get("health_ok")) is not bool:
            return None
        if not all(type(v) is int for v in (total, fivexx, code)):
            return None
        if latency < 0 or not 0 <= fivexx <= total or not 0 <= code <= 999:
            return None
        return cls(
            ts=float(ts),
            health_ok=row["health_ok"],
            latency_ms=float(latency),
            total=total,
            fivexx=fivexx,
            health_code=code,
            detail=str(row.get("detail", "")),
            inconclusive=row.get("inconclusive") is True,
            checks=check_numbers(row.get("checks")),
        )


NUMBER_FIELDS = ("value", "latency_ms", "number")


_CHECK_NAME = re.compile(CHECK_NAME_RE)


def _numbers(result: Any) -> dict[str, float]:
    """The finite numbers of one check result that could be judged. A baseline row's entries
    hold numbers only (no "ok"); a probe's say "ok": null when the check could not be judged."""
    if not isinstance(result, Mapping) or ("ok" in result and result["ok"] is None):
        return {}
    return {k: float(result[k]) for k in NUMBER_FIELDS if _number(result.get(k))}


def check_numbers(checks: Any) -> dict[str, dict[str, float]]:
    """The finite numbers (`value`, `latency_ms`, `number`) of each check result that could be
    judged (`ok` not null); anything else (a name no check can have, a string, an infinity)
    is left out, never an error."""
    if not isinstance(checks, Mapping):
        return {}
    kept = {
        name: _numbers(result)
        for name, result in checks.items()
        if isinstance(name, str) and _CHECK_NAME.fullmatch(name)
    }
    return {name: numbers for name, numbers in kept.items() if numbers}


def parse_rows(raw_rows: Iterable[Any]) -> tuple[list[BaselineRow], int]:
    """The valid rows of `.baseline.jsonl` (parsed lines, e.g. `store.parse_json_lines(data)
    .rows`, which already drops a torn last line) in file order, and how many were skipped."""
    rows, skipped = [], 0
    for raw in raw_rows:
        row = BaselineRow.from_dict(raw)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    return rows, skipped


def kept(rows: Sequence[BaselineRow], now: float, keep_s: float) -> list[BaselineRow]:
    """The rows to keep at `now`: those of the last `keep_s` seconds (the file's bound)."""
    return [row for row in rows if row.ts >= now - keep_s]


@dataclass(frozen=True)
class CheckRule:
    """How one feature check's number is compared with the baseline's."""

    name: str
    # Which of the check's numbers: a Prometheus check's value, an HTTP check's latency, or
    # the number at an HTTP check's `baseline_number` JSON path (`path`).
    number: Literal["value", "latency_ms", "number"]
    increase: float | None = None  # relative to the baseline median (0.5: +50 %)
    min_shift: float | None = None  # absolute, in the number's unit
    lower_is_worse: bool = False  # a check bounded by `min` alone: a fall is the regression
    path: str = ""

    @classmethod
    def of(cls, check: Any) -> CheckRule | None:
        """From a `config.HttpCheck` or `PrometheusCheck`; None when it is not compared."""
        increase, min_shift = check.baseline_increase, check.baseline_min_shift
        if increase is None and min_shift is None:
            return None
        if check.type == "prometheus":
            return cls(check.name, "value", increase, min_shift, lower_is_worse=check.max is None)
        if check.baseline_number == "latency_ms":
            return cls(check.name, "latency_ms", increase, min_shift)
        return cls(check.name, "number", increase, min_shift, path=check.baseline_number)


@dataclass(frozen=True)
class BaselineRules:
    """The baseline keys of a repo's effective settings."""

    fail_threshold: int = 3
    min_samples: int = 6  # `baseline_min_samples`, which defaults to `min_samples`
    confidence: float = 0.99
    latency_increase: float | None = None  # 0.5: +50 % of the baseline median; None: off
    fivexx_increase: float | None = None  # 0.01: one percentage point; None: off
    gap_s: float = 60.0
    checks: tuple[CheckRule, ...] = ()

    @property
    def alpha(self) -> float:
        """The largest p-value that counts as significant."""
        return 1.0 - self.confidence

    @classmethod
    def of(cls, settings: Any, checks: Iterable[Any] = ()) -> BaselineRules:
        """From a `config.WindowSettings` (any object with the same attributes) and the
        repo's feature checks (`config.HttpCheck`, `PrometheusCheck`)."""
        floor = settings.baseline_min_samples
        return cls(
            fail_threshold=settings.fail_threshold,
            min_samples=settings.min_samples if floor is None else floor,
            confidence=settings.baseline_confidence,
            latency_increase=settings.latency_increase,
            fivexx_increase=settings.fivexx_increase,
            gap_s=settings.baseline_gap_s,
            checks=tuple(rule for rule in map(CheckRule.of, checks) if rule is not None),
        )


@dataclass(frozen=True)
class Reference:
    """The baseline side of a window's comparison, cut once when the window opens."""

    cut: float  # only rows before this time (armed_at - baseline_gap_s) count
    rows: int  # judged rows before the cut
    latencies: tuple[float, ...]  # health latency of each passing judged row
    total: int  # requests to the 5xx paths
    fivexx: int
    # Why the service was already failing before the deploy ("" when it was not).
    preexisting: str = ""
    # Each compared check's numbers (the rule's `number`), in row order.
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cut": round(self.cut, 6),
            "rows": self.rows,
            "latency_samples": len(self.latencies),
            "median_ms": round(median(self.latencies), 3) if self.latencies else None,
            # The middle 80 % of its latencies: the band the timeline draws.
            "p10_ms": round(quantile(self.latencies, 0.1), 3) if self.latencies else None,
            "p90_ms": round(quantile(self.latencies, 0.9), 3) if self.latencies else None,
            "fivexx": self.fivexx,
            "fivexx_total": self.total,
            "preexisting": bool(self.preexisting),
            **(
                {"checks": {name: len(values) for name, values in self.values.items()}}
                if self.values
                else {}
            ),
        }


def reference(rows: Iterable[BaselineRow], armed_at: float, rules: BaselineRules) -> Reference:
    """The reference of a window armed at `armed_at`: the judged rows older than the cut."""
    cut = armed_at - rules.gap_s
    judged = sorted((r for r in rows if r.ts < cut and not r.inconclusive), key=lambda r: r.ts)
    last = judged[-rules.fail_threshold :]
    preexisting = ""
    if len(last) >= rules.fail_threshold and not any(r.health_ok for r in last):
        preexisting = (
            f"the service was already failing before the deploy: its last {len(last)} baseline "
            f"probes failed health (last: {last[-1].detail or f'HTTP {last[-1].health_code}'})"
        )
    return Reference(
        cut=cut,
        rows=len(judged),
        latencies=tuple(r.latency_ms for r in judged if r.health_ok),
        total=sum(r.total for r in judged),
        fivexx=sum(r.fivexx for r in judged),
        preexisting=preexisting,
        values={
            rule.name: tuple(
                r.checks[rule.name][rule.number]
                for r in judged
                if rule.number in r.checks.get(rule.name, {})
            )
            for rule in rules.checks
        },
    )


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank, 0 <= q <= 1; at least one value)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _p(p_value: float) -> str:
    return "p<0.0001" if p_value < 1e-4 else f"p={p_value:.2g}"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _percent(shift: float) -> str:
    return "a rise from 0" if math.isinf(shift) else f"{shift * 100:+.0f} %"


@dataclass(frozen=True)
class Comparison:
    """One evaluation of one metric: the window so far against the reference."""

    metric: str  # "latency", "5xx", or "check NAME"
    window_samples: int  # latency: passing health answers; 5xx: requests; a check: numbers
    baseline_samples: int
    window: float  # latency: median ms; 5xx: ratio; a check: the median number
    baseline: float
    shift: float  # latency and checks: relative to the baseline median; 5xx: absolute
    p_value: float
    regressed: bool  # significant and shifted by at least the configured increase
    streak: int  # evaluations in a row that regressed, this one included
    unit: str = ""  # a check's number: "ms" for an HTTP check's latency, else ""
    recovering: bool = False  # worse, but getting better: not counted as a regression
    quantity: str = ""  # a check's number: its JSON path, when it is one

    def sentence(self) -> str:
        """What a person reads in five seconds."""
        n = f"{self.window_samples} vs {self.baseline_samples}"
        if self.metric == "latency":
            return (
                f"health latency {_ms(self.window)} vs {_ms(self.baseline)} before the deploy "
                f"({_percent(self.shift)}, {_p(self.p_value)}, {n} probes)"
            )
        if self.metric == "5xx":
            return (
                f"5xx ratio {self.window * 100:.1f} % vs {self.baseline * 100:.1f} % before the "
                f"deploy ({self.shift * 100:+.1f} points, {_p(self.p_value)}, {n} requests)"
            )
        name = self.metric.removeprefix("check ")
        if self.unit == "ms":
            what = f"latency {_ms(self.window)} vs {_ms(self.baseline)}"
        else:
            what = f"{self.window:.4g} vs {self.baseline:.4g}"
        if self.quantity:
            what = f"{self.quantity} {what}"
        return (
            f'check "{name}" {what} before the deploy '
            f"({_percent(self.shift)}, {_p(self.p_value)}, {n} probes)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_samples": self.window_samples,
            "baseline_samples": self.baseline_samples,
            "window": round(self.window, 6),
            "baseline": round(self.baseline, 6),
            "shift": round(self.shift, 6) if math.isfinite(self.shift) else None,
            "p_value": self.p_value,
            "regressed": self.regressed,
            "streak": self.streak,
            **({"recovering": True} if self.recovering else {}),
            **({"unit": self.unit} if self.unit else {}),
            **({"quantity": self.quantity} if self.quantity else {}),
        }


def compare_level(
    metric: str,
    window: Sequence[float],
    baseline: Sequence[float],
    alpha: float,
    increase: float | None = None,
    min_shift: float | None = None,
    lower_is_worse: bool = False,
    streak: int = 0,
    unit: str = "",
    quantity: str = "",
) -> Comparison:
    """A level (a latency, a check's number) of the window (tick order) against the
    baseline's; `streak`: the evaluations in a row that regressed before this one.

    Regressed: significantly worse by a one-sided Mann-Whitney U test at `alpha`, both the
    median and the latest number moved the worse way by at least `increase` times the
    baseline median and by at least `min_shift` (each when set; at least one must be), and
    not still recovering: the last `TREND_SPAN` numbers are not getting better (a one-sided
    Mann-Kendall trend test, p >= `RECOVERING_P`), as a warm-up after the restart does."""
    if increase is None and min_shift is None:
        raise ValueError(f"{metric}: neither an increase nor a minimum shift is set")
    ours, theirs = median(window), median(baseline)
    sign = -1.0 if lower_is_worse else 1.0
    worse, better = (baseline, window) if lower_is_worse else (window, baseline)
    p_value = mann_whitney_greater(worse, better).p_value
    moved, latest = sign * (ours - theirs), sign * (window[-1] - theirs)
    # Relative to the baseline median; a median of 0 makes any worsening infinite.
    size = abs(theirs)
    shift = moved / size if size > 0 else (math.inf if moved > 0 else 0.0)
    least = max(
        increase * size if increase is not None else 0.0,
        min_shift if min_shift is not None else 0.0,
    )
    enough = moved > 0 and latest > 0 and min(moved, latest) + EPSILON >= least
    worse_enough = p_value < alpha and enough
    recent = [sign * v for v in window[-TREND_SPAN:]]
    recovering = worse_enough and falling(recent) < RECOVERING_P
    regressed = worse_enough and not recovering
    return Comparison(
        metric,
        len(window),
        len(baseline),
        ours,
        theirs,
        shift,
        p_value,
        regressed,
        streak + 1 if regressed else 0,
        unit,
        recovering,
        quantity,
    )


def compare_latency(
    window: Sequence[float], baseline: Sequence[float], rules: BaselineRules, streak: int = 0
) -> Comparison:
    """The window's health latencies (in tick order) against the baseline's (see
    `compare_level`; the increase is `latency_increase`)."""
    if rules.latency_increase is None:
        raise ValueError("latency_increase is not set")
    return compare_level(
        "latency", window, baseline, rules.alpha, rules.latency_increase, streak=streak
    )


def compare_check(
    rule: CheckRule,
    window: Sequence[float],
    baseline: Sequence[float],
    rules: BaselineRules,
    streak: int,
) -> Comparison:
    """A feature check's numbers against the baseline's (see `compare_level`)."""
    return compare_level(
        f"check {rule.name}",
        window,
        baseline,
        rules.alpha,
        rule.increase,
        rule.min_shift,
        rule.lower_is_worse,
        streak,
        "ms" if rule.number == "latency_ms" else "",
        rule.path,
    )


def compare_fivexx(
    fivexx: int,
    total: int,
    base_fivexx: int,
    base_total: int,
    rules: BaselineRules,
    streak: int = 0,
) -> Comparison:
    """The window's 5xx ratio against the baseline's (see `compare_level` for `streak`)."""
    if rules.fivexx_increase is None:
        raise ValueError("fivexx_increase is not set")
    ours, theirs = fivexx / total, base_fivexx / base_total
    p_value = fisher_greater(fivexx, total, base_fivexx, base_total)
    regressed = p_value < rules.alpha and ours - theirs + EPSILON >= rules.fivexx_increase
    return Comparison(
        "5xx",
        total,
        base_total,
        ours,
        theirs,
        ours - theirs,
        p_value,
        regressed,
        streak + 1 if regressed else 0,
    )


def _check_number(row: ProbeRow, rule: CheckRule) -> float | None:
    """The rule's number in the row's result of its check (None: none that can be judged)."""
    return _numbers(row.checks.get(rule.name)).get(rule.number)


@dataclass(frozen=True)
class BaselineTally:
    """The window side of the comparison, updated one judged row at a time (`fold`)."""

    rules: BaselineRules
    reference: Reference
    latencies: tuple[float, ...] = ()  # health latency of each passing judged row
    total: int = 0
    fivexx: int = 0
    latency: Comparison | None = None  # the last evaluation of each metric
    fivexx_comparison: Comparison | None = None
    tripped: Comparison | None = None  # the first to regress `fail_threshold` times in a row
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # each check's numbers
    check_comparisons: Mapping[str, Comparison] = field(default_factory=dict)

    @property
    def preexisting(self) -> bool:
        return bool(self.reference.preexisting)

    @property
    def comparisons(self) -> list[Comparison]:
        """The last evaluation of every metric evaluated so far."""
        found = [self.latency, self.fivexx_comparison, *self.check_comparisons.values()]
        return [c for c in found if c is not None]

    def fold(self, row: ProbeRow) -> BaselineTally:
        """The tally after one more row of the window (an inconclusive row counts for
        nothing). A metric is evaluated when the row adds to it and both sides have
        `min_samples` (`baseline_min_samples`)."""
        if row.inconclusive:
            return self
        rules, ref = self.rules, self.reference
        latencies = (*self.latencies, row.latency_ms) if row.health_ok else self.latencies
        total, fivexx = self.total + row.total, self.fivexx + row.fivexx
        latency, errors = self.latency, self.fivexx_comparison
        need = rules.min_samples
        if (
            rules.latency_increase is not None
            and row.health_ok
            and len(latencies) >= need
            and len(ref.latencies) >= need
        ):
            streak = latency.streak if latency else 0
            latency = compare_latency(latencies, ref.latencies, rules, streak)
        if rules.fivexx_increase is not None and row.total and total >= need and ref.total >= need:
            streak = errors.streak if errors else 0
            errors = compare_fivexx(fivexx, total, ref.fivexx, ref.total, rules, streak)
        values, checks = dict(self.values), dict(self.check_comparisons)
        for rule in rules.checks:
            number = _check_number(row, rule)
            if number is None:
                continue
            ours = values[rule.name] = (*values.get(rule.name, ()), number)
            theirs = ref.values.get(rule.name, ())
            if len(ours) >= need and len(theirs) >= need:
                before = checks.get(rule.name)
                streak = before.streak if before else 0
                checks[rule.name] = compare_check(rule, ours, theirs, rules, streak)
        tripped = self.tripped
        for comparison in (latency, errors, *checks.values()):
            if tripped is None and comparison and comparison.streak >= rules.fail_threshold:
                tripped = comparison
        return replace(
            self,
            latencies=latencies,
            total=total,
            fivexx=fivexx,
            latency=latency,
            fivexx_comparison=errors,
            tripped=tripped,
            values=values,
            check_comparisons=checks,
        )

    def summary(self) -> str:
        """The latest comparisons in words ("" before the first evaluation)."""
        return "; ".join(c.sentence() for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        """`done.baseline`: the figures on each side."""
        figures: dict[str, Any] = {"reference": self.reference.to_dict()}
        if self.summary():
            figures["summary"] = self.summary()
        if self.latency is not None:
            figures["latency"] = self.latency.to_dict()
        if self.fivexx_comparison is not None:
            figures["fivexx"] = self.fivexx_comparison.to_dict()
        if self.check_comparisons:
            figures["checks"] = {n: c.to_dict() for n, c in self.check_comparisons.items()}
        if self.tripped is not None:
            figures["tripped"] = self.tripped.metric
        return figures


def start(rows: Iterable[BaselineRow], armed_at: float, rules: BaselineRules) -> BaselineTally:
    """The tally a window armed at `armed_at` starts from (put it in `series.Tally(baseline=
    ...)` before folding the window's rows)."""
    return BaselineTally(rules, reference(rows, armed_at, rules))


def judge_window(
    rows: Iterable[BaselineRow],
    window: Iterable[ProbeRow],
    armed_at: float,
    rules: BaselineRules,
) -> BaselineTally:
    """The whole-window replay: the tally after every row of `window` (tick order)."""
    tally = start(rows, armed_at, rules)
    for row in window:
        tally = tally.fold(row)
    return tally


def describe(figures: Mapping[str, Any]) -> str:
    """`done.baseline` (`BaselineTally.to_dict`) in one line a person reads in five seconds."""
    ref = figures.get("reference")
    if not isinstance(ref, Mapping):
        ref = {}
    rows = ref.get("rows", 0)
    before = f"{rows} probes before the deploy"
    if ref.get("median_ms") is not None:
        before += f", median {ref.get('median_ms')} ms"
    said = figures.get("summary") or "not compared (too few samples on one side)"
    failing = (
        "; the service was already failing before the deploy" if ref.get("preexisting") else ""
    )
    return f"{said} ({before}){failing}"
