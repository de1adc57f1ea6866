"""A finished window's `Outcome` (what `done` and `report.md` are written from), for the tests
that need one: a DEGRADED window of shop/ORCH-021 that was rolled back, any field replaced."""

from __future__ import annotations

from typing import Any

from postdeploy.layout import ItemKey
from postdeploy.report import Outcome
from postdeploy.verdict import Action, Status

FINISHED = 1_795_766_400.0  # 2026-11-27T08:00:00+00:00


def outcome(**changes: Any) -> Outcome:
    """The sample outcome, with `changes` (any of Outcome's fields) in place of its own."""
    fields: dict[str, Any] = {
        "key": ItemKey("shop", "ORCH-021"),
        "status": Status.DEGRADED,
        "action_taken": Action.ROLLBACK_OK,
        "reason": "health failed 3 consecutive probes (threshold 3)",
        "checks_total": 12,
        "checks_failed": 3,
        "window_s": 900.0,
        "finished_at": FINISHED,
        "armed_at": FINISHED - 960,
        "metadata": {"branch": "main", "commit": "abc123"},
    }
    fields.update(changes)
    return Outcome(**fields)
