"""The verdict-quality benchmark: simulated deploys replayed through the real judging code.

    python -m bench --only judgement --settle 0     # as part of the bench suite
    python -m bench.judgement                       # alone: prints the tables, writes the chart

Each deploy of the corpus is a scripted service: its behaviour during the hour before the
deploy (the baseline rows a repo with `baseline_interval_s` keeps) and during the window after
it, with its own seed. The rows are made the way the daemon makes them (a health probe, four
5xx-path requests, a feature check, a control probe per tick) and folded through the real pure
core: `series.fold`, `verdict.classify`/`healthy` and `baseline.BaselineTally`. Every judge
configuration sees the same rows.

`corpus()` yields each deploy with its baseline rows, window rows and expected outcome, so the
same deploys can be pushed through the real daemon (a scripted target answering each tick's
requests from the rows).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from postdeploy import baseline
from postdeploy.baseline import BaselineRow, BaselineRules, CheckRule
from postdeploy.series import ProbeRow, Tally, fold
from postdeploy.verdict import Status, Thresholds, classify, healthy

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "docs" / "judgement.svg"

# The simulated repo: probed every 10 s for a 10-minute window (60 ticks, the first one
# interval_s after the deploy), baseline probes every 10 s for the hour before (the last 60 s,
# the deploy's own restart, left out), four 5xx paths and one feature check per tick.
INTERVAL_S = 10.0
TICKS = 60
BASELINE_S = 3600.0
GAP_S = 60.0
FIVEXX_PATHS = 4
# The request-level error ratio (a Prometheus check, `TRAFFIC_CHECK`): the service's own
# 5xx / requests over one interval, drawn from its real traffic of TRAFFIC_RPS requests per
# second (log-uniform per deploy). Only the judges with `sees_traffic` are given it.
TRAFFIC_CHECK = "errors"
TRAFFIC_RPS = (20.0, 200.0)
TRAFFIC_MAX = 0.05  # the check's fixed bound: an error ratio above 5 % fails the check
TRAFFIC_MIN_SHIFT = 0.005  # its baseline comparison: half a percentage point worse
ARMED_AT = 1_800_000_000.0
CORPUS_SEED = 20_260_301  # every deploy's seed derives from it and its index
PER_CLASS = {"good": 24, "bad": 16, "other": 12}


# -- the service model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """How a service answers at `t` seconds after the deploy (negative: before it).

    Latency: lognormal around `median_ms` (spread `sigma`), times `factor(t)`, with a heavy
    tail (`tail_p` of the answers multiplied by 1 + a Pareto(1.5) draw). Failures: the health
    probe fails with `health_fail_p`, each 5xx-path request with `fivexx_p`, the feature check
    with `feature_fail_p`. `incidents` override a time span (see `Incident`)."""

    median_ms: float
    sigma: float
    tail_p: float
    health_fail_p: float = 0.0
    fivexx_p: float = 0.001
    feature_fail_p: float = 0.0
    bad_backends: int = 0  # of four behind a load balancer; each request picks one at random
    factor: Callable[[float], float] = field(default=lambda t: 1.0)
    incidents: tuple[Incident, ...] = ()


@dataclass(frozen=True)
class Incident:
    """From `start` to `end` seconds: `health` fails health, `slow` multiplies latency by
    `x`, `fivexx` fails every 5xx-path request, `blind` cuts our own network (service and
    control both unreachable)."""

    start: float
    end: float
    kind: str
    x: float = 1.0

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class Outcome:
    health_ok: bool
    code: int
    latency_ms: float
    fivexx: int
    feature_ok: bool
    control_ok: bool


def probe(model: Model, t: float, rng: random.Random) -> Outcome:
    """One tick's requests against `model` at `t`."""
    active = {i.kind: i for i in model.incidents if i.covers(t)}
    latency = rng.lognormvariate(math.log(model.median_ms), model.sigma) * model.factor(t)
    if rng.random() < model.tail_p:
        latency *= 1 + rng.paretovariate(1.5)
    if "slow" in active:
        latency *= active["slow"].x
    if "blind" in active:
        return Outcome(False, 0, 5000.0, FIVEXX_PATHS, True, False)
    backend_bad = rng.randrange(4) < model.bad_backends
    health_ok = rng.random() >= model.health_fail_p and not backend_bad and "health" not in active
    fivexx = 0
    for _ in range(FIVEXX_PATHS):
        bad = rng.randrange(4) < model.bad_backends and rng.random() < 0.5
        fivexx += bad or rng.random() < model.fivexx_p or "fivexx" in active
    if latency >= 5000.0:  # the probe timeout
        health_ok, latency = False, 5000.0
    code = 200 if health_ok else (0 if latency >= 5000.0 else 503)
    if not health_ok and code == 503:
        latency = min(latency, 2.0 + rng.random())  # a 503 answers fast
    feature_ok = rng.random() >= model.feature_fail_p
    return Outcome(health_ok, code, latency, fivexx, feature_ok, True)


def _binomial(n: int, p: float, rng: random.Random) -> int:
    """How many of `n` requests fail with probability `p` each (skipping by geometric gaps,
    so a draw costs one step per failure, not per request)."""
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    count, at, log_q = 0, -1, math.log1p(-p)
    while True:
        at += 1 + int(math.log(1.0 - rng.random()) / log_q)
        if at >= n:
            return count
        count += 1


def traffic(model: Model, t: float, rps: float, rng: random.Random) -> float | None:
    """The service's own 5xx ratio over the interval ending at `t` (what a Prometheus query
    such as `increase(5xx[10s]) / increase(requests[10s])` returns); None when our own
    network is down (the query cannot be made)."""
    if any(i.kind == "blind" and i.covers(t) for i in model.incidents):
        return None
    start = t - INTERVAL_S
    n = max(1, round(rps * INTERVAL_S * rng.uniform(0.9, 1.1)))
    # A request fails on the bad backend (one of four, half of its answers) or at random.
    p = model.fivexx_p + (1 - model.fivexx_p) * model.bad_backends / 4 * 0.5
    errors = _binomial(n, p, rng)
    for i in model.incidents:  # a 5xx incident fails every request while it lasts
        if i.kind == "fivexx":
            overlap = max(0.0, min(t, i.end) - max(start, i.start))
            errors = min(n, errors + round(n * overlap / INTERVAL_S))
    return errors / n


# -- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deploy:
    """One simulated deploy: the service before and after, and what a judge should say."""

    name: str  # "<kind> #<n>"
    kind: str
    group: str  # good | bad | preexisting | blind
    expected: str  # HEALTHY | DEGRADED | PREEXISTING (DEGRADED, alert only) | INCONCLUSIVE
    seed: int
    before: Model
    after: Model
    change_s: float = 0.0  # when the change starts (after the deploy)
    clear: bool = False  # a clear regression: 2x latency or more, 3 % 5xx or more

    @property
    def change_tick(self) -> int:
        """The first tick that sees the change."""
        return max(0, math.ceil(self.change_s / INTERVAL_S) - 1)


def _restart(rng: random.Random) -> tuple[Incident, ...]:
    """The deploy's own restart: health fails for 10-40 s just before armed_at (in the gap)."""
    return (Incident(-rng.uniform(10, 40), 0.0, "health"),)


def _base(rng: random.Random) -> Model:
    """A healthy service: its own latency level, jitter and tail, a few rare 5xx."""
    return Model(
        median_ms=math.exp(rng.uniform(math.log(5), math.log(300))),
        sigma=rng.uniform(0.08, 0.35),
        tail_p=rng.uniform(0.0, 0.03),
        health_fail_p=rng.choice([0.0, 0.0, 0.002]),
        fivexx_p=rng.choice([0.0, 0.0005, 0.001]),
    )


Maker = Callable[[random.Random, Model], tuple[Model, Model, float]]


def _same(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    return m, replace(m, tail_p=min(0.06, m.tail_p * 2 + 0.01), sigma=m.sigma * 1.2), 0.0


def _blip(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    at = rng.uniform(0, TICKS * INTERVAL_S)
    kind = rng.choice(["health", "fivexx"])
    return m, replace(m, incidents=(Incident(at, at + 1, kind),)), 0.0


def _flaps(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    flaps = []
    for _ in range(rng.randint(1, 2)):  # one or two flaps of one or two probes, apart
        at = rng.uniform(0, TICKS * INTERVAL_S)
        flaps.append(Incident(at, at + rng.choice([1, 1, 12]), "health"))
    return m, replace(m, incidents=tuple(flaps)), 0.0


def _gc_pause(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    at = rng.uniform(0, TICKS * INTERVAL_S)
    pause = Incident(at, at + rng.uniform(2, 6), "slow", x=rng.uniform(10, 60))
    return m, replace(m, incidents=(pause,)), 0.0


def _noisy_neighbour(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    """Bursts of +50-150 % latency for 20-60 s, before and after the deploy alike."""
    bursts = []
    t = -BASELINE_S
    while t < TICKS * INTERVAL_S:
        t += rng.expovariate(1 / 300)
        bursts.append(Incident(t, t + rng.uniform(20, 60), "slow", x=rng.uniform(1.5, 2.5)))
    noisy = replace(m, incidents=tuple(bursts))
    return noisy, noisy, 0.0


def _warm_up(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    """After the restart, latency starts 2-3x higher and decays with a 10-20 s time constant."""
    peak, tau = rng.uniform(1.0, 2.0), rng.uniform(10, 20)
    return m, replace(m, factor=lambda t: 1 + peak * math.exp(-t / tau)), 0.0


def _other_shape(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    """A different but not worse shape: a slightly lower median with a wider spread."""
    after = replace(m, median_ms=m.median_ms * rng.uniform(0.9, 1.0), sigma=m.sigma + 0.15)
    return m, after, 0.0


def _slower(x: float) -> Maker:
    def make(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
        return m, replace(m, median_ms=m.median_ms * x), 0.0

    return make


def _errors(p: float) -> Maker:
    def make(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
        before = replace(m, fivexx_p=0.001)
        return before, replace(before, fivexx_p=p), 0.0

    return make


def _one_of_four(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    return m, replace(m, bad_backends=1), 0.0


def _leak(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    """Latency climbing through the window: +5-10 % a minute from the deploy on."""
    rate = rng.uniform(0.05, 0.10) / 60
    return m, replace(m, factor=lambda t: 1 + rate * max(0.0, t)), 0.0


def _feature(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    return m, replace(m, feature_fail_p=1.0), 0.0


def _preexisting(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    failing = Incident(-rng.uniform(300, 1800), math.inf, "health")
    broken = replace(m, incidents=(failing,))
    return broken, broken, 0.0


def _blind(rng: random.Random, m: Model) -> tuple[Model, Model, float]:
    return m, replace(m, incidents=(Incident(0, math.inf, "blind"),)), 0.0


# kind -> (group, expected, maker, clear)
KINDS: dict[str, tuple[str, str, Maker, bool]] = {
    "jitter and heavy tails": ("good", "HEALTHY", _same, False),
    "a single 503 blip": ("good", "HEALTHY", _blip, False),
    "brief flaps": ("good", "HEALTHY", _flaps, False),
    "GC pause": ("good", "HEALTHY", _gc_pause, False),
    "noisy neighbour": ("good", "HEALTHY", _noisy_neighbour, False),
    "slow warm-up": ("good", "HEALTHY", _warm_up, False),
    "other latency shape": ("good", "HEALTHY", _other_shape, False),
    "latency +30 %": ("bad", "DEGRADED", _slower(1.3), False),
    "latency +100 %": ("bad", "DEGRADED", _slower(2.0), True),
    "latency +300 %": ("bad", "DEGRADED", _slower(4.0), True),
    "5xx 0.1 % -> 1 %": ("bad", "DEGRADED", _errors(0.01), False),
    "5xx 0.1 % -> 3 %": ("bad", "DEGRADED", _errors(0.03), True),
    "5xx 0.1 % -> 10 %": ("bad", "DEGRADED", _errors(0.10), True),
    "one of four backends failing": ("bad", "DEGRADED", _one_of_four, False),
    "slow leak": ("bad", "DEGRADED", _leak, False),
    "broken feature, green /health": ("bad", "DEGRADED", _feature, True),
    "failing before and after": ("preexisting", "PREEXISTING", _preexisting, False),
    "blind (control down)": ("blind", "INCONCLUSIVE", _blind, False),
}


def deploys() -> list[Deploy]:
    """The corpus, in a fixed order; deploy i's seed is CORPUS_SEED + i."""
    out: list[Deploy] = []
    for kind, (group, expected, make, clear) in KINDS.items():
        count = PER_CLASS["good" if group == "good" else "bad" if group == "bad" else "other"]
        for n in range(count):
            seed = CORPUS_SEED + len(out)
            rng = random.Random(seed)
            before, after, change = make(rng, _base(rng))
            after = replace(after, incidents=(*_restart(rng), *after.incidents))
            out.append(
                Deploy(
                    f"{kind} #{n + 1}", kind, group, expected, seed, before, after, change, clear
                )
            )
    return out


def rows_of(deploy: Deploy) -> tuple[list[BaselineRow], list[ProbeRow]]:
    """The baseline rows (the hour before the deploy) and the window rows of `deploy`."""
    rng = random.Random(deploy.seed * 7919)
    # The traffic has a stream of its own: the probes' rows are the same with or without it.
    mrng = random.Random(deploy.seed * 7919 + 1)
    rps = math.exp(mrng.uniform(*map(math.log, TRAFFIC_RPS)))
    base = []
    t = -BASELINE_S
    while t < 0:
        # The restart (in the gap) belongs to the new version's model; before it, the old one.
        model = deploy.after if t >= -GAP_S else deploy.before
        o = probe(model, t, rng)
        ratio = traffic(model, t, rps, mrng)
        base.append(
            BaselineRow(
                ts=ARMED_AT + t,
                health_ok=o.health_ok,
                latency_ms=round(o.latency_ms, 3),
                total=FIVEXX_PATHS,
                fivexx=o.fivexx,
                health_code=o.code,
                detail="ok" if o.health_ok else f"health HTTP {o.code}",
                inconclusive=not o.health_ok and not o.control_ok,
                checks={} if ratio is None else {TRAFFIC_CHECK: {"value": ratio}},
            )
        )
        t += INTERVAL_S
    window = []
    for tick in range(TICKS):
        t = INTERVAL_S * (tick + 1)
        o = probe(deploy.after, t, rng)
        ratio = traffic(deploy.after, t, rps, mrng)
        window.append(
            ProbeRow(
                tick=tick,
                scheduled_ts=ARMED_AT + t,
                ts=ARMED_AT + t,
                health_ok=o.health_ok,
                health_code=o.code,
                total=FIVEXX_PATHS,
                fivexx=o.fivexx,
                latency_ms=round(o.latency_ms, 3),
                detail="ok" if o.health_ok else f"health HTTP {o.code}",
                checks={
                    "checkout": {"ok": o.feature_ok, "detail": "checkout"},
                    TRAFFIC_CHECK: _traffic_result(ratio),
                },
                inconclusive=(not o.health_ok or o.fivexx > 0) and not o.control_ok,
            )
        )
    return base, window


def _traffic_result(ratio: float | None) -> dict[str, Any]:
    """The Prometheus check's result as the daemon records it."""
    if ratio is None:
        return {"ok": None, "detail": "prometheus: unreachable"}
    ok = ratio <= TRAFFIC_MAX
    bound = "" if ok else f", expected <= {TRAFFIC_MAX:g}"
    return {"ok": ok, "value": ratio, "detail": f"value {ratio:g}{bound}"}


def corpus() -> Iterator[tuple[Deploy, list[BaselineRow], list[ProbeRow], str]]:
    """Every deploy with its baseline rows, window rows and expected outcome."""
    for deploy in deploys():
        base, window = rows_of(deploy)
        yield deploy, base, window, deploy.expected


# -- the judges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judge:
    """A judge configuration: the thresholds, the baseline rules (None: no baseline), and
    whether it knows inconclusive ticks (the seed had no control probe)."""

    name: str
    th: Thresholds
    rules: BaselineRules | None = None
    knows_control: bool = True
    sees_traffic: bool = False  # the repo has the request-level error-ratio check


CHECK = "checkout"


def judges(
    lookback: int = 10,
    min_samples: int = 6,
    latency_increase: float = 0.25,
    fivexx_increase: float = 0.01,
    confidences: Sequence[float] = (0.99, 0.999),
    traffic_confidences: Sequence[float] = (0.99, 0.999),
    traffic_floor: int | None = 3,
) -> list[Judge]:
    """The seed's rules, today's, today's with k of n, and k of n with the baseline (one
    judge per confidence: 0.99 is the contract's default); then the baseline judge on a repo
    that also has the request-level error-ratio check, compared with the baseline too
    (`baseline_min_samples` = `traffic_floor`)."""
    seed = Thresholds(3, 0.2, 1, min_judged_fraction=0.0)
    today = Thresholds(3, 0.2, 6, min_judged_fraction=0.5)
    lookbacks = {CHECK: lookback, TRAFFIC_CHECK: lookback}
    k_of_n = replace(today, fail_lookback=lookback, check_lookbacks=lookbacks)
    rules = BaselineRules(
        fail_threshold=3,
        min_samples=min_samples,
        latency_increase=latency_increase,
        fivexx_increase=fivexx_increase,
        gap_s=GAP_S,
    )
    return [
        Judge("seed", seed, knows_control=False),
        Judge("today", today),
        Judge("+ k-of-n", k_of_n),
        *(
            Judge(
                f"+ baseline ({c:g})",
                replace(k_of_n, min_samples=min_samples),
                replace(rules, confidence=c),
            )
            for c in confidences
        ),
        *(
            Judge(
                f"+ traffic ({c:g})",
                replace(k_of_n, min_samples=min_samples),
                replace(
                    rules,
                    confidence=c,
                    min_samples=traffic_floor or min_samples,
                    checks=(CheckRule(TRAFFIC_CHECK, "value", min_shift=TRAFFIC_MIN_SHIFT),),
                ),
                sees_traffic=True,
            )
            for c in traffic_confidences
        ),
    ]


@dataclass(frozen=True)
class Outcome2:
    """What one judge made of one deploy."""

    status: Status
    preexisting: bool
    tick: int | None  # the tick of a DEGRADED verdict
    reason: str
    alarm_ticks: int  # ticks at which a baseline test regressed (its streak was at least 1)
    tripped_by_baseline: bool


def judge(j: Judge, base: Sequence[BaselineRow], window: Sequence[ProbeRow]) -> Outcome2:
    """Fold the window's rows one tick at a time, stopping at a verdict (as the daemon does)."""
    start = baseline.start(base, ARMED_AT, j.rules) if j.rules is not None else None
    tally = Tally(baseline=start)
    alarms = 0
    for row in window:
        if not j.knows_control:
            row = replace(row, inconclusive=False)
        if not j.sees_traffic:
            row = replace(row, checks={k: v for k, v in row.checks.items() if k != TRAFFIC_CHECK})
        tally = fold(tally, row)
        b = tally.baseline
        if b is not None and any(c.regressed for c in b.comparisons):
            alarms += 1
        verdict = classify(tally, j.th)
        if verdict is not None:
            by_baseline = (
                b is not None
                and b.tripped is not None
                and verdict.reason.startswith(b.tripped.sentence())
            )
            return Outcome2(
                verdict.status, verdict.preexisting, row.tick, verdict.reason, alarms, by_baseline
            )
    verdict = healthy(tally, j.th)
    return Outcome2(verdict.status, verdict.preexisting, None, verdict.reason, alarms, False)


# -- the figures ---------------------------------------------------------------------------------


def _correct(deploy: Deploy, o: Outcome2) -> bool:
    if deploy.expected == "PREEXISTING":
        return o.status is Status.DEGRADED and o.preexisting
    return o.status.value == deploy.expected


def evaluate(
    judge_list: Sequence[Judge],
    items: Sequence[tuple[Deploy, list[BaselineRow], list[ProbeRow], str]],
) -> dict[str, Any]:
    """Per judge: false rollbacks, misses, detection times, and the rest."""
    figures: dict[str, Any] = {}
    for j in judge_list:
        rows: dict[str, Any] = {
            "false_rollbacks": 0,
            "good": 0,
            "caught": 0,
            "bad": 0,
            "missed": [],
            "detect_ticks": [],
            "clear_detect_ticks": [],
            "by_kind": {},
            "preexisting_ok": 0,
            "preexisting": 0,
            "blind_ok": 0,
            "blind": 0,
            "blind_healthy": 0,
            "blind_rollback": 0,
            "good_alarm_windows": 0,
            "good_baseline_trips": 0,
            "false_rollback_names": [],
        }
        for deploy, base, window, _expected in items:
            o = judge(j, base, window)
            ok = _correct(deploy, o)
            kind = rows["by_kind"].setdefault(deploy.kind, {"n": 0, "ok": 0, "ticks": []})
            kind["n"] += 1
            kind["ok"] += ok
            if deploy.group == "good":
                rows["good"] += 1
                if o.status is Status.DEGRADED:
                    rows["false_rollbacks"] += 1
                    rows["false_rollback_names"].append(f"{deploy.name}: {o.reason}")
                rows["good_alarm_windows"] += o.alarm_ticks > 0
                rows["good_baseline_trips"] += o.tripped_by_baseline
            elif deploy.group == "bad":
                rows["bad"] += 1
                if o.status is Status.DEGRADED and o.tick is not None:
                    rows["caught"] += 1
                    delay = o.tick - deploy.change_tick
                    rows["detect_ticks"].append(delay)
                    kind["ticks"].append(delay)
                    if deploy.clear:
                        rows["clear_detect_ticks"].append(delay)
                else:
                    rows["missed"].append(deploy.name)
            elif deploy.group == "preexisting":
                rows["preexisting"] += 1
                rows["preexisting_ok"] += ok
            else:
                rows["blind"] += 1
                rows["blind_ok"] += ok
                rows["blind_healthy"] += o.status is Status.HEALTHY
                rows["blind_rollback"] += o.status is Status.DEGRADED
        figures[j.name] = rows
    return figures


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


def table(figures: dict[str, Any]) -> str:
    """The summary table (markdown)."""
    lines = [
        "| judge | false rollbacks (good) | bad caught | median detection, ticks (all / clear) "
        "| already failing: alert only | blind: INCONCLUSIVE "
        "| good windows with a baseline alarm: one tick / 3 in a row |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in figures.items():
        med, clear = _median(f["detect_ticks"]), _median(f["clear_detect_ticks"])
        lines.append(
            f"| {name} | {f['false_rollbacks']} of {f['good']} | {f['caught']} of {f['bad']} "
            f"({100 * f['caught'] / f['bad']:.1f} %) | {_fmt(med)} / {_fmt(clear)} "
            f"| {f['preexisting_ok']} of {f['preexisting']} | {f['blind_ok']} of {f['blind']} "
            f"| {_share(f['good_alarm_windows'], f['good'])} / "
            f"{_share(f['good_baseline_trips'], f['good'])} |"
        )
    return "\n".join(lines)


def kind_table(figures: dict[str, Any]) -> str:
    """Per kind of deploy: how many each judge got right (and the median detection)."""
    names = list(figures)
    lines = ["| deploy | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for kind in KINDS:
        cells = []
        for name in names:
            k = figures[name]["by_kind"][kind]
            med = _median(k["ticks"])
            cells.append(f"{k['ok']}/{k['n']}" + (f" ({_fmt(med)} t)" if med is not None else ""))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(n: int, of: int) -> str:
    return f"{n} ({100 * n / of:.1f} %)" if n else "0"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def svg(figures: dict[str, Any]) -> str:
    """A bar chart per judge: false rollbacks, bad deploys missed, wrong on the others
    (share of each group), with the median detection time written above."""
    names = list(figures)
    groups: list[tuple[str, str, Callable[[dict[str, Any]], float]]] = [
        ("false rollbacks (good)", "#d9534f", lambda f: f["false_rollbacks"] / f["good"]),
        ("bad deploys missed", "#f0ad4e", lambda f: (f["bad"] - f["caught"]) / f["bad"]),
        (
            "already failing, rolled back",
            "#5bc0de",
            lambda f: 1 - f["preexisting_ok"] / f["preexisting"],
        ),
        ("blind, not INCONCLUSIVE", "#777777", lambda f: 1 - f["blind_ok"] / f["blind"]),
    ]
    left, top, plot_h, height, slot = 60, 40, 240, 360, 140.0  # a judge's slot: room for its name
    width = max(760, round(left + 20 + slot * len(names)))
    bar = slot / (len(groups) + 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">Wrong verdicts per judge (share of each '
        "group; lower is better)</text>",
    ]
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{pct} %</text>')
    for i, name in enumerate(names):
        f = figures[name]
        x0 = left + i * slot + bar / 2
        for g, (_label, colour, value) in enumerate(groups):
            v = value(f)
            h = plot_h * v
            x = x0 + g * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar * 0.9:.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{colour}"/>'
            )
            if v > 0:
                parts.append(
                    f'<text x="{x + bar * 0.45:.1f}" y="{top + plot_h - h - 3:.1f}" '
                    f'text-anchor="middle" font-size="10">{100 * v:.0f}</text>'
                )
        med = _median(f["clear_detect_ticks"])
        label_x = left + i * slot + slot / 2
        parts.append(
            f'<text x="{label_x:.1f}" y="{top + plot_h + 18}" text-anchor="middle" '
            f'font-weight="bold">{_xml(name)}</text>'
        )
        parts.append(
            f'<text x="{label_x:.1f}" y="{top + plot_h + 34}" text-anchor="middle">'
            f"clear in {_fmt(med)} ticks</text>"
        )
    for g, (label, colour, _value) in enumerate(groups):
        x = left + g * 210
        parts.append(f'<rect x="{x}" y="{height - 30}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{height - 20}">{_xml(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def measure(**tuning: Any) -> tuple[dict[str, Any], float]:
    """Run every judge over the whole corpus; the figures and the seconds it took."""
    started = time.monotonic()
    items = list(corpus())
    figures = evaluate(judges(**tuning), items)
    return figures, time.monotonic() - started


GOAL_CAUGHT = 0.95
GOAL_CLEAR_TICKS = 4


def goals(f: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals for one judge."""
    clear = _median(f["clear_detect_ticks"])
    return {
        "no false rollback": f["false_rollbacks"] == 0,
        "95 % of bad deploys caught": f["caught"] >= GOAL_CAUGHT * f["bad"],
        "clear regressions within 4 ticks": clear is not None and clear <= GOAL_CLEAR_TICKS,
    }


def run(ctx: Any) -> Any:
    """The `judgement` scenario of `python -m bench`."""
    from bench.scenarios import Result

    figures, took = measure()
    CHART.write_text(svg(figures))
    best = figures[list(figures)[-1]]
    met = goals(best)
    clear = _median(best["clear_detect_ticks"])
    headline = (
        f"{list(figures)[-1]}: {best['false_rollbacks']}/{best['good']} false rollbacks, "
        f"{best['caught']}/{best['bad']} bad caught, clear regressions in {_fmt(clear)} ticks"
    )
    slim = {
        name: {k: v for k, v in f.items() if k not in ("false_rollback_names",)}
        for name, f in figures.items()
    }
    return Result(
        "judgement",
        headline,
        "0 false rollbacks, >= 95 % caught, clear in <= 4 ticks",
        all(met.values()),
        {"goals": met, "judges": slim, "seconds": round(took, 1), "table": table(figures)},
    )


def main(argv: Sequence[str] = ()) -> int:
    figures, took = measure()
    print(table(figures))
    print()
    print(kind_table(figures))
    for name, f in figures.items():
        for line in f["false_rollback_names"][:5]:
            print(f"  {name}: false rollback: {line}")
        if f["missed"]:
            print(f"  {name}: missed {len(f['missed'])}: {', '.join(f['missed'][:6])}")
    for name, f in figures.items():
        print(f"  {name}: {goals(f)}")
    CHART.write_text(svg(figures))
    print(f"\n{len(list(deploys()))} deploys, {took:.1f} s; wrote {CHART}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
