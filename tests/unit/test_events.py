"""Alert events (`events.py`): stable ids and the contract's JSON shape."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest

from postdeploy.events import KINDS, Event, Severity
from postdeploy.layout import ItemKey

BASE = Event(
    kind="window.degraded",
    key=ItemKey("shop", "w1"),
    reason="health failed 3 consecutive probes (threshold 3)",
    at=1_795_766_400.0,
    status="DEGRADED",
    action_taken="ROLLBACK_OK",
    evidence={"health_streak": 3, "fail_threshold": 3},
    metadata={"branch": "main"},
)


def test_id_is_stable_for_the_same_subject() -> None:
    """What the event is about decides its id; when and how it was worded does not."""
    again = replace(
        BASE,
        reason="another wording",
        at=BASE.at + 3600,
        status="X",
        action_taken="Y",
        evidence={},
        metadata={},
    )
    assert again.id == BASE.id
    assert Event(BASE.kind, ItemKey("shop", "w1"), "", 0.0).id == BASE.id


@pytest.mark.parametrize(
    "other",
    [
        replace(BASE, key=ItemKey("shop2", "w1")),
        replace(BASE, key=ItemKey("shop", "w2")),
        replace(BASE, kind="window.healthy"),
        replace(BASE, seq="1"),
        # The parts are joined with "/", which names cannot contain: no two subjects collide.
        replace(BASE, key=ItemKey("shop", "w"), seq="1"),
    ],
    ids=["repo", "work_item", "kind", "seq", "shifted"],
)
def test_id_differs_for_another_subject(other: Event) -> None:
    assert other.id != BASE.id


def test_ids_of_repeated_kinds_differ_by_seq() -> None:
    ids = {replace(BASE, kind="probe.unavailable", seq=str(n)).id for n in range(50)}
    assert len(ids) == 50


def test_to_dict_has_the_contract_keys() -> None:
    """Exactly the contract's keys, each with its value (`at` as ISO 8601 in UTC)."""
    data = BASE.to_dict()
    at = dt.datetime.fromisoformat(data["at"])
    assert at.utcoffset() == dt.timedelta(0) and at.timestamp() == BASE.at
    assert data == {
        "id": BASE.id,
        "kind": "window.degraded",
        "severity": "critical",
        "repo": "shop",
        "work_item": "w1",
        "status": "DEGRADED",
        "action_taken": "ROLLBACK_OK",
        "reason": BASE.reason,
        "evidence": {"health_streak": 3, "fail_threshold": 3},
        "metadata": {"branch": "main"},
        "at": data["at"],
    }
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("kind", "severity"),
    [
        ("window.degraded", "critical"),
        ("window.healthy", "info"),
        ("rollback.ok", "warning"),
        ("rollback.failed", "critical"),
        ("rollback.unknown", "critical"),
        ("window.missed", "warning"),
        ("window.error", "critical"),
    ],
)
def test_contract_kinds_exist_with_a_severity(kind: str, severity: str) -> None:
    assert kind in KINDS
    assert replace(BASE, kind=kind).to_dict()["severity"] == severity


@pytest.mark.parametrize("name", ["info", "WARNING", "Critical"])
def test_severity_parse(name: str) -> None:
    assert str(Severity.parse(name)) == name.lower()
    assert Severity.INFO < Severity.WARNING < Severity.CRITICAL


def test_unknown_severity_name() -> None:
    with pytest.raises(KeyError):
        Severity.parse("loud")
