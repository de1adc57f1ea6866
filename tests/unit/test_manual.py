"""A person's rollback: the request's parsing and the decision for a finished window (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.layout import ItemKey
from postdeploy.manual import (
    MAX_REASON,
    Proceed,
    Refuse,
    Request,
    judge_finished,
    key_of_poke,
    parse_request,
    poke_name,
)

DEGRADED_ALERT: dict[str, Any] = {"status": "DEGRADED", "action_taken": "ALERT_ONLY"}


@pytest.mark.parametrize(
    ("done", "flags", "expected"),
    [
        (DEGRADED_ALERT, {}, None),
        ({"status": "DEGRADED", "action_taken": "SHADOW"}, {}, None),
        ({"status": "HEALTHY", "action_taken": "NONE"}, {}, "ended HEALTHY"),
        ({"status": "INCONCLUSIVE", "action_taken": "NONE"}, {}, "ended INCONCLUSIVE"),
        ({"status": "SUPERSEDED", "action_taken": "NONE"}, {}, "ended SUPERSEDED"),
        ({"status": "DEGRADED", "action_taken": "ROLLBACK_OK"}, {}, "already rolled back"),
        ({"status": "DEGRADED", "action_taken": "ROLLBACK_FAILED"}, {}, "already rolled back"),
        ({"status": "DEGRADED", "action_taken": "ROLLBACK_UNKNOWN"}, {}, "already rolled back"),
        (DEGRADED_ALERT, {"intent": True}, "already rolled back"),
        ({**DEGRADED_ALERT, "manual_rollback": {}}, {}, "already ran"),
        (DEGRADED_ALERT, {"refused": True}, "already answered"),
        (DEGRADED_ALERT, {"command": False}, "no rollback_command"),
        (None, {}, "not been taken up"),
        (None, {"armed": False}, "no window was armed"),
    ],
)
def test_judge_finished(
    done: dict[str, Any] | None, flags: dict[str, bool], expected: str | None
) -> None:
    args = {"armed": True, "intent": False, "refused": False, "command": True, **flags}
    decision = judge_finished(done, **args)
    if expected is None:
        assert decision == Proceed()
    else:
        assert isinstance(decision, Refuse)
        assert expected in decision.reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b'{"reason": "broken", "requested_by": "alice", "at": 5}',
            Request("broken", "alice", 5.0),
        ),
        (b'{"reason": "x"}', Request("x", "unknown", None)),
        (b'{"reason": 3, "requested_by": ["a"], "at": true}', Request("", "unknown", None)),
        (
            b"checkout broken\n  see dashboards\n",
            Request("checkout broken see dashboards", "unknown"),
        ),
        (b"", Request("", "unknown")),
        (b"[1, 2]", Request("[1, 2]", "unknown")),
        (b"\xff\xfe oops", Request("\ufffd\ufffd oops", "unknown")),
        (b'{"reason": "a\\nb\\tc"}', Request("a b c", "unknown")),
    ],
)
def test_parse_request(data: bytes, expected: Request) -> None:
    assert parse_request(data) == expected


def test_a_long_reason_is_cut() -> None:
    assert len(parse_request(b"x" * 10_000).reason) == MAX_REASON


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shop~release-1", ItemKey("shop", "release-1")),
        ("a.b~c_d-e", ItemKey("a.b", "c_d-e")),
        ("shop", None),
        ("~release", None),
        ("shop~", None),
        ("shop~a~b", None),
        ("../x~y", None),
        ("shop~.hidden", None),
    ],
)
def test_key_of_poke(name: str, expected: ItemKey | None) -> None:
    assert key_of_poke(name) == expected
    if expected is not None:
        assert poke_name(expected) == name
