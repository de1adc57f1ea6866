"""Probe rows and the running tally they fold into (pure: no I/O).

A window's state is never stored on its own: it is always the fold of its `series.jsonl`
rows, so a restarted daemon rebuilds exactly the state it had by replaying the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postdeploy.baseline import BaselineTally

RECENT_ROWS = 5  # how many of the last rows a tally keeps as evidence


@dataclass(frozen=True)
class ProbeRow:
    """The result of one tick, as one line of `series.jsonl`."""

    tick: int
    scheduled_ts: float
    ts: float
    health_ok: bool
    health_code: int
    total: int
    fivexx: int
    latency_ms: float
    detail: str
    catch_up: bool = False
    codes: dict[str, int] = field(default_factory=dict)  # 5xx path -> status code (0: none)
    # Feature checks by name: {"ok", "value", "latency_ms", "detail"}; ok is true, false, or
    # null for "could not be judged" (no data, a missing secret), which is never a failure.
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The control probe failed in the same tick as the service: our own network, not the
    # service's fault, so the tick counts for nothing.
    inconclusive: bool = False

    @property
    def service_failed(self) -> bool:
        """Health, a 5xx path or a feature check failed in this tick."""
        checks_failed = any(c.get("ok") is False for c in self.checks.values())
        return not self.health_ok or self.fivexx > 0 or checks_failed

    @property
    def failed(self) -> bool:
        """Whether this tick counts in `checks_failed` (an inconclusive tick never does)."""
        return self.service_failed and not self.inconclusive

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "tick": self.tick,
            "scheduled_ts": round(self.scheduled_ts, 6),
            "ts": round(self.ts, 6),
            "health_ok": self.health_ok,
            "health_code": self.health_code,
            "total": self.total,
            "fivexx": self.fivexx,
            "latency_ms": round(self.latency_ms, 3),
            "detail": self.detail,
        }
        if self.codes:
            row["codes"] = self.codes
        if self.checks:
            row["checks"] = self.checks
        if self.catch_up:
            row["catch_up"] = True
        if self.inconclusive:
            row["inconclusive"] = True
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ProbeRow | None:
        """Validate a parsed line; None when it is malformed (it then counts for nothing)."""
        try:
            tick, total, fivexx, code = row["tick"], row["total"], row["fivexx"], row["health_code"]
            health_ok = row["health_ok"]
            numbers = (row["scheduled_ts"], row["ts"], row.get("latency_ms", 0.0))
        except (KeyError, TypeError):
            return None
        ints = (tick, total, fivexx, code)
        if not all(type(v) is int for v in ints) or type(health_ok) is not bool:
            return None
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in numbers
        ):
            return None
        if tick < 0 or total < 0 or not 0 <= fivexx <= total or not 0 <= code <= 999:
            return None
        codes = row.get("codes", {})
        if not isinstance(codes, dict):
            codes = {}
        checks = row.get("checks", {})
        if not isinstance(checks, dict) or not all(
            isinstance(c, dict) and (c.get("ok") is None or type(c.get("ok")) is bool)
            for c in checks.values()
        ):
            return None
        return cls(
            tick=tick,
            scheduled_ts=float(numbers[0]),
            ts=float(numbers[1]),
            health_ok=health_ok,
            health_code=code,
            total=total,
            fivexx=fivexx,
            latency_ms=float(numbers[2]),
            detail=str(row.get("detail", "")),
            catch_up=row.get("catch_up") is True,
            codes={str(k): v for k, v in codes.items() if type(v) is int},
            checks={str(k): v for k, v in checks.items()},
            inconclusive=row.get("inconclusive") is True,
        )


# How many judged results a tally keeps (a k-of-n rule looks back at most this far).
LOOKBACK_KEPT = 1000


def failed_in_last(bits: int, judged: int, n: int) -> int:
    """How many of the last `n` judged results failed; `bits` holds one bit per result, the
    most recent lowest, 1 for a failure (fewer than `n` judged: all of them count)."""
    return (bits & ((1 << min(n, judged)) - 1)).bit_count()


def _push(bits: int, failed: bool) -> int:
    return ((bits << 1) | failed) & ((1 << LOOKBACK_KEPT) - 1)


@dataclass(frozen=True)
class CheckTally:
    """One feature check's run of consecutive failures, its recent results and the last
    thing it said."""

    streak: int = 0
    max_streak: int = 0
    detail: str = ""
    bits: int = 0  # its judged results, most recent lowest (see `failed_in_last`)
    judged: int = 0


@dataclass(frozen=True)
class Tally:
    """Everything the rules need from a window's rows, updated one row at a time."""

    last_tick: int = -1
    checks_total: int = 0
    checks_failed: int = 0
    streak: int = 0  # current run of consecutive failed health probes
    max_streak: int = 0
    sum_total: int = 0
    sum_fivexx: int = 0
    catch_up_done: bool = False
    recent: tuple[ProbeRow, ...] = ()
    ignored: int = 0  # rows skipped: malformed, or a tick number not after the last one
    checks: dict[str, CheckTally] = field(default_factory=dict)
    inconclusive: int = 0  # ticks that counted for nothing (the control probe failed too)
    health_bits: int = 0  # the judged health results, most recent lowest (`failed_in_last`)
    # The comparison with the baseline before the deploy (None: the repo keeps no baseline).
    baseline: BaselineTally | None = None

    @property
    def judged(self) -> int:
        """Probed ticks that were judged: not inconclusive."""
        return self.checks_total - self.inconclusive

    @property
    def fivexx_ratio(self) -> float:
        return self.sum_fivexx / self.sum_total if self.sum_total else 0.0


def fold(tally: Tally, row: ProbeRow) -> Tally:
    """The tally after one more row; a row that does not move the tick forward is ignored."""
    if row.tick <= tally.last_tick:
        return replace(tally, ignored=tally.ignored + 1)
    moved = replace(
        tally,
        last_tick=row.tick,
        checks_total=tally.checks_total + 1,
        catch_up_done=tally.catch_up_done or row.catch_up,
        recent=(*tally.recent, row)[-RECENT_ROWS:],
    )
    if row.inconclusive:
        # Neither for nor against the service: streaks and ratios stay as they were.
        return replace(moved, inconclusive=tally.inconclusive + 1)
    streak = 0 if row.health_ok else tally.streak + 1
    return replace(
        moved,
        checks_failed=tally.checks_failed + row.failed,
        streak=streak,
        max_streak=max(tally.max_streak, streak),
        health_bits=_push(tally.health_bits, not row.health_ok),
        sum_total=tally.sum_total + row.total,
        sum_fivexx=tally.sum_fivexx + row.fivexx,
        checks=_fold_checks(tally.checks, row.checks),
        baseline=tally.baseline.fold(row) if tally.baseline is not None else None,
    )


def _fold_checks(
    tallies: dict[str, CheckTally], results: dict[str, dict[str, Any]]
) -> dict[str, CheckTally]:
    folded = dict(tallies)
    for name, result in results.items():
        before = folded.get(name, CheckTally())
        ok = result.get("ok")
        if ok is False:
            streak = before.streak + 1
            folded[name] = CheckTally(
                streak,
                max(before.max_streak, streak),
                str(result.get("detail", "")),
                _push(before.bits, True),
                before.judged + 1,
            )
        elif ok is True:
            folded[name] = CheckTally(
                0,
                before.max_streak,
                str(result.get("detail", "")),
                _push(before.bits, False),
                before.judged + 1,
            )
    return folded


def replay(raw_rows: Iterable[Any], start: Tally | None = None) -> Tally:
    """Rebuild a window's tally from the rows of its series file, skipping malformed ones;
    `start`: the empty tally to fold them into (one holding the window's baseline)."""
    tally = Tally() if start is None else start
    for raw in raw_rows:
        row = ProbeRow.from_dict(raw) if isinstance(raw, dict) else None
        tally = replace(tally, ignored=tally.ignored + 1) if row is None else fold(tally, row)
    return tally


def ticks_missed(tally: Tally, max_ticks: int) -> int:
    """How many of the window's due ticks were never probed: the daemon was down (a restart
    does not invent them; a catch-up probe stands in for every tick after the last one) or
    stalled (a tick whose successor was due is skipped). Ticks after a verdict were never due.
    """
    probed = tally.checks_total - (1 if tally.catch_up_done else 0)
    due = max_ticks if tally.catch_up_done else min(tally.last_tick + 1, max_ticks)
    return max(0, due - probed)
