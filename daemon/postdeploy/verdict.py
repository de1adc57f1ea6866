"""The rules: `classify` a window's tally, `decide_action` on the verdict (pure: no I/O).

These are the seed module's rules, with one fix (the 5xx ratio is only judged once
`min_samples` 5xx-path requests were made, so a single early 5xx cannot trip it) and two
additions: k of the last n (`fail_lookback`), and the comparison with the baseline before the
deploy (`baseline.py`, carried in `Tally.baseline`), which also tells a DEGRADED window whose
service was already failing before the deploy (`Verdict.preexisting`: alert only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from postdeploy.series import Tally, failed_in_last


class Status(StrEnum):
    """How a window ended (`done.status`)."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    SUPERSEDED = "SUPERSEDED"
    CANCELLED = "CANCELLED"
    DISABLED = "DISABLED"
    MISSED = "MISSED"
    ERROR = "ERROR"
    INCONCLUSIVE = "INCONCLUSIVE"  # too few ticks could be judged: no verdict on this deploy


class Decision(StrEnum):
    """What to do about a verdict."""

    NONE = "NONE"
    ALERT_ONLY = "ALERT_ONLY"
    ROLLBACK = "ROLLBACK"


class Action(StrEnum):
    """What was done (`done.action_taken`)."""

    NONE = "NONE"
    ALERT_ONLY = "ALERT_ONLY"
    ROLLBACK_OK = "ROLLBACK_OK"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    ROLLBACK_UNKNOWN = "ROLLBACK_UNKNOWN"
    SHADOW = "SHADOW"


@dataclass(frozen=True)
class Thresholds:
    fail_threshold: int
    fivexx_threshold: float
    min_samples: int
    checks: dict[str, int] = field(default_factory=dict)  # a feature check's own fail_threshold
    fail_lookback: int = 0  # k of the last n: n (0, or not above fail_threshold: consecutive)
    check_lookbacks: dict[str, int] = field(default_factory=dict)  # a check's own n
    min_judged_fraction: float = 0.0  # below it, a window ends INCONCLUSIVE, never HEALTHY

    def for_check(self, name: str) -> int:
        return self.checks.get(name, self.fail_threshold)

    def lookback_for_check(self, name: str) -> int:
        return self.check_lookbacks.get(name, 0)


@dataclass(frozen=True)
class Verdict:
    """A window's status with a human-readable reason and the measured values behind it."""

    status: Status
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # DEGRADED, but the service was already failing before the deploy: not the deploy's doing.
    preexisting: bool = False


def _evidence(tally: Tally, th: Thresholds) -> dict[str, Any]:
    return {
        "health_streak": tally.max_streak,
        "fail_threshold": th.fail_threshold,
        "fivexx": tally.sum_fivexx,
        "fivexx_total": tally.sum_total,
        "fivexx_ratio": round(tally.fivexx_ratio, 4),
        "fivexx_threshold": th.fivexx_threshold,
        "min_samples": th.min_samples,
        "checks_total": tally.checks_total,
        "checks_failed": tally.checks_failed,
        "last_probes": [row.to_dict() for row in tally.recent],
        **({"inconclusive_ticks": tally.inconclusive} if tally.inconclusive else {}),
        **({"baseline": tally.baseline.to_dict()} if tally.baseline is not None else {}),
        **(
            {
                "checks": {
                    name: {
                        "streak": c.max_streak,
                        "fail_threshold": th.for_check(name),
                        "last": c.detail,
                    }
                    for name, c in tally.checks.items()
                }
            }
            if tally.checks
            else {}
        ),
    }


def classify(tally: Tally, th: Thresholds) -> Verdict | None:
    """DEGRADED as soon as a rule holds, else None (no verdict yet).

    - `fail_threshold` consecutive failed health probes (or `fail_threshold` of the last
      `fail_lookback` judged ones);
    - the window's 5xx ratio strictly above `fivexx_threshold`, once at least `min_samples`
      5xx-path requests were made;
    - a feature check failing its own `fail_threshold` ticks in a row (or k of its last n);
    - a regression against the baseline (latency or 5xx, see `baseline.py`).

    When the baseline shows the service was already failing before the deploy, a DEGRADED
    verdict is `preexisting` and its reason says so.
    """
    verdict = _rules(tally, th)
    base = tally.baseline
    if verdict is None and base is not None and base.tripped is not None:
        rounds = base.tripped.streak
        reason = f"{base.tripped.sentence()}, {rounds} ticks in a row"
        verdict = Verdict(Status.DEGRADED, reason, _evidence(tally, th))
    if verdict is not None and base is not None and base.preexisting:
        reason = f"{verdict.reason}; {base.reference.preexisting}: not the deploy's doing"
        return Verdict(verdict.status, reason, verdict.evidence, preexisting=True)
    return verdict


def _rules(tally: Tally, th: Thresholds) -> Verdict | None:
    """The rules on the window's own rows (see `classify`)."""
    last = tally.recent[-1].detail if tally.recent else ""
    if th.fail_lookback > th.fail_threshold:  # k of the last n judged probes
        n = th.fail_lookback
        failed = failed_in_last(tally.health_bits, tally.judged, n)
        if failed >= th.fail_threshold:
            reason = (
                f"health failed {failed} of the last {min(n, tally.judged)} judged probes "
                f"(threshold {th.fail_threshold} of {n}); last: {last}"
            )
            return Verdict(Status.DEGRADED, reason, _evidence(tally, th))
    elif tally.max_streak >= th.fail_threshold:
        reason = (
            f"health failed {tally.max_streak} consecutive probes "
            f"(threshold {th.fail_threshold}); last: {last}"
        )
        return Verdict(Status.DEGRADED, reason, _evidence(tally, th))
    if tally.sum_total >= th.min_samples and tally.fivexx_ratio > th.fivexx_threshold:
        reason = (
            f"5xx ratio {tally.fivexx_ratio:.3f} ({tally.sum_fivexx}/{tally.sum_total}) "
            f"above threshold {th.fivexx_threshold:g} (min_samples {th.min_samples})"
        )
        return Verdict(Status.DEGRADED, reason, _evidence(tally, th))
    for name, check in sorted(tally.checks.items()):
        need, n = th.for_check(name), th.lookback_for_check(name)
        if n > need:
            failed = failed_in_last(check.bits, check.judged, n)
            if failed >= need:
                reason = (
                    f'check "{name}": {check.detail} ({failed} of the last '
                    f"{min(n, check.judged)} ticks)"
                )
                return Verdict(Status.DEGRADED, reason, _evidence(tally, th))
        elif check.max_streak >= need:
            ticks = "1 tick" if check.max_streak == 1 else f"{check.max_streak} ticks in a row"
            reason = f'check "{name}": {check.detail} ({ticks})'
            return Verdict(Status.DEGRADED, reason, _evidence(tally, th))
    return None


def healthy(tally: Tally, th: Thresholds) -> Verdict:
    """The verdict of a window whose last tick passed without tripping a rule: HEALTHY, or
    INCONCLUSIVE when fewer than `min_judged_fraction` of its probed ticks were judged (the
    control probe failed with the service in the others: the daemon could not see)."""
    probed = tally.checks_total
    if probed == 0 or tally.judged / probed < th.min_judged_fraction:
        reason = (
            f"only {tally.judged} of {probed} probed ticks could be judged (in the others the "
            f"control probe failed with the service: our own network?), below "
            f"min_judged_fraction {th.min_judged_fraction:g}: no verdict on this deploy"
        )
        return Verdict(Status.INCONCLUSIVE, reason, _evidence(tally, th))
    ratio = f"{tally.fivexx_ratio:.3f} ({tally.sum_fivexx}/{tally.sum_total})"
    reason = (
        f"{tally.checks_total} ticks passed the rules: longest health-failure streak "
        f"{tally.max_streak} (threshold {th.fail_threshold}), 5xx ratio {ratio} "
        f"(threshold {th.fivexx_threshold:g}, min_samples {th.min_samples})"
    )
    if tally.inconclusive:
        judged = tally.checks_total - tally.inconclusive
        reason += (
            f"; {tally.inconclusive} of {tally.checks_total} ticks were inconclusive (the control "
            f"probe failed too), so only {judged} were judged"
        )
    against = tally.baseline.summary() if tally.baseline is not None else ""
    if against:
        reason += f"; against the baseline: {against}"
    return Verdict(Status.HEALTHY, reason, _evidence(tally, th))


def decide_action(
    status: Status, *, self_hosting: bool, auto_rollback: bool, preexisting: bool = False
) -> Decision:
    """The seed's reaction rule, and what the baseline adds.

    HEALTHY (and any status that is not DEGRADED): NONE. DEGRADED on a self-hosting repo:
    ALERT_ONLY, always, because rolling back the service that runs the deploy machinery could
    take the machinery down with it. DEGRADED when the service was already failing before the
    deploy (`preexisting`): ALERT_ONLY, since rolling back leads to a version that was failing
    too. DEGRADED with auto_rollback: ROLLBACK. Else ALERT_ONLY.
    """
    if status is not Status.DEGRADED:
        return Decision.NONE
    if self_hosting or preexisting:
        return Decision.ALERT_ONLY
    return Decision.ROLLBACK if auto_rollback else Decision.ALERT_ONLY


def rollback_action(exit_code: int | None) -> Action:
    """The rollback hook's exit-code contract: 0 is ROLLBACK_OK, anything else (a non-zero
    exit, a failure to start, a timeout: None) is ROLLBACK_FAILED."""
    return Action.ROLLBACK_OK if exit_code == 0 else Action.ROLLBACK_FAILED


def recovery(tally: Tally, th: Thresholds, wanted: int) -> Verdict:
    """Judge the probes made after a successful rollback.

    Recovered (HEALTHY) when no rule trips over them and the last one passed; otherwise
    DEGRADED: the rollback "succeeded" into a service that is still broken.
    """
    tripped = classify(tally, th)
    last_failed = bool(tally.recent) and tally.recent[-1].failed
    if tripped is None and not last_failed and tally.checks_total >= min(wanted, 1):
        reason = f"recovered: {tally.checks_total} probes after the rollback, last one passed"
        return Verdict(Status.HEALTHY, reason, _evidence(tally, th))
    last = tally.recent[-1].detail if tally.recent else "no probe"
    why = tripped.reason if tripped else f"the last of {tally.checks_total} probes failed"
    if "; last: " not in why:  # a health verdict's reason names the last probe already
        why += f"; last: {last}"
    return Verdict(
        Status.DEGRADED, f"still degraded after the rollback: {why}", _evidence(tally, th)
    )
