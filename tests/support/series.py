"""What the daemon writes that many tests build by hand: a `series.jsonl` line, and the
contract's words for a window's end (`done.status`, `done.action_taken`, CONTRACT.md)."""

from __future__ import annotations

from typing import Any

# In the contract's order (the enums in `postdeploy.verdict` list them the same way).
STATUSES = [
    "HEALTHY",
    "DEGRADED",
    "SUPERSEDED",
    "CANCELLED",
    "DISABLED",
    "MISSED",
    "ERROR",
    "INCONCLUSIVE",
]
ACTIONS = ["NONE", "ALERT_ONLY", "ROLLBACK_OK", "ROLLBACK_FAILED", "ROLLBACK_UNKNOWN", "SHADOW"]

START = 1_795_763_584.0  # tick 0's scheduled time (a fixed moment in 2026)


def series_line(
    tick: int,
    health_ok: bool = True,
    *,
    total: int = 2,
    fivexx: int = 0,
    latency_ms: float = 3.1,
    detail: str | None = None,
    start: float = START,
    **extra: Any,
) -> dict[str, Any]:
    """One `series.jsonl` (or `verify.jsonl`) line as the daemon writes it: tick `tick` one
    second after the last, probed 4 ms after its time; `detail` defaults to
    "probe <tick> ok|bad"; `extra` fields (`inconclusive`, `checks`) are added."""
    return {
        "tick": tick,
        "scheduled_ts": start + tick,
        "ts": start + tick + 0.004,
        "health_ok": health_ok,
        "health_code": 200 if health_ok else 503,
        "total": total,
        "fivexx": fivexx,
        "latency_ms": latency_ms,
        "detail": f"probe {tick} {'ok' if health_ok else 'bad'}" if detail is None else detail,
        **extra,
    }
