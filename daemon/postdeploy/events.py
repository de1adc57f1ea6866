"""Alert events: what the daemon tells people, as one JSON object each (pure: no I/O).

An event's `id` is derived from what it is about (`repo/work_item/kind`, plus a `seq` for kinds
that can repeat within a window), never from the time or a counter, so the same event keeps its
id across restarts and the outbox can drop a re-emitted duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from postdeploy.layout import ItemKey
from postdeploy.report import iso


class Severity(IntEnum):
    INFO = 10
    WARNING = 20
    CRITICAL = 30

    @classmethod
    def parse(cls, name: str) -> Severity:
        return cls[name.upper()]

    def __str__(self) -> str:
        return self.name.lower()


# Every kind the daemon emits, with its severity.
KINDS: dict[str, Severity] = {
    "window.armed": Severity.INFO,
    "window.healthy": Severity.INFO,
    "window.inconclusive": Severity.WARNING,  # too few ticks judged: no verdict on the deploy
    "window.degraded": Severity.CRITICAL,
    "window.shadow": Severity.WARNING,  # DEGRADED in shadow mode: what would have been done
    "window.cancelled": Severity.INFO,
    "window.superseded": Severity.INFO,
    "window.disabled": Severity.INFO,
    "window.missed": Severity.WARNING,
    "window.error": Severity.CRITICAL,
    "window.daemon_was_down": Severity.WARNING,
    "probe.unavailable": Severity.WARNING,
    "rollback.manual": Severity.WARNING,  # a person asked for the rollback (who, and why)
    "rollback.refused": Severity.WARNING,  # a person's request the daemon will not carry out
    "rollback.ok": Severity.WARNING,
    "rollback.failed": Severity.CRITICAL,
    "rollback.unknown": Severity.CRITICAL,
    "rollback.verified": Severity.INFO,
    "rollback.still_degraded": Severity.CRITICAL,
}


@dataclass(frozen=True)
class Event:
    kind: str
    key: ItemKey
    reason: str
    at: float
    status: str = ""
    action_taken: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    seq: str = ""  # distinguishes repeatable kinds within one window

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind]

    @property
    def id(self) -> str:
        base = f"{self.key.repo}/{self.key.work_item}/{self.kind}/{self.seq}"
        return hashlib.sha256(base.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": str(self.severity),
            "repo": self.key.repo,
            "work_item": self.key.work_item,
            "status": self.status,
            "action_taken": self.action_taken,
            "reason": self.reason,
            "evidence": self.evidence,
            "metadata": self.metadata,
            "at": iso(self.at),
        }
