"""A person's rollback (`postdeploy rollback REPO ITEM`): the request, and whether to carry
it out (pure: no I/O; the daemon is the shell around it).

The seed's ALERT_ONLY meant "loud alert, manual approve"; this is the approve. The rules:

- an open window ends DEGRADED ("a person asked for the rollback") and rolls back, also on
  a self-hosting repo and in shadow mode: a person decided, not a threshold;
- a finished DEGRADED window whose action was ALERT_ONLY or SHADOW rolls back once, and its
  result is added to `done` as `manual_rollback`;
- at most once per work item, whoever asks: anything else is refused, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from postdeploy.layout import ItemKey, valid_name

MAX_REASON = 500  # characters of a request's reason that are kept
_ROLLED_BACK = ("ROLLBACK_OK", "ROLLBACK_FAILED", "ROLLBACK_UNKNOWN")


@dataclass(frozen=True)
class Request:
    """What `rollback.request` says."""

    reason: str
    requested_by: str
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "requested_by": self.requested_by, "at": self.at}


def parse_request(data: bytes) -> Request:
    """The request: the CLI's JSON object, or plain text (the reason) written by hand."""
    text = data.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if isinstance(value, dict):
        reason = value.get("reason")
        who = value.get("requested_by")
        at = value.get("at")
        return Request(
            _clean(reason if isinstance(reason, str) else ""),
            _clean(who if isinstance(who, str) else "") or "unknown",
            float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
        )
    return Request(_clean(text), "unknown")


def _clean(text: str) -> str:
    """One line of at most MAX_REASON characters (a reason lands in logs and chat)."""
    return " ".join(text.split())[:MAX_REASON]


def poke_name(key: ItemKey) -> str:
    return f"{key.repo}~{key.work_item}"


def key_of_poke(name: str) -> ItemKey | None:
    """The work item a poke names, None for anything else."""
    repo, sep, item = name.partition("~")
    if sep and valid_name(repo) and valid_name(item):
        return ItemKey(repo, item)
    return None


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class Proceed:
    """Roll back a finished window."""


def judge_finished(
    done: dict[str, Any] | None,
    *,
    armed: bool,
    intent: bool,
    refused: bool,
    command: bool,
) -> Refuse | Proceed:
    """Whether to roll back a work item that has no open window (see the module docstring)."""
    if refused:
        return Refuse("a request for this work item was already answered")
    if done is None:
        if not armed:
            return Refuse("no window was armed for this work item")
        return Refuse("the window has not been taken up yet; ask again once it runs")
    if "manual_rollback" in done:
        return Refuse("a person's rollback already ran for this work item")
    action = done.get("action_taken")
    if action in _ROLLED_BACK or intent:
        return Refuse(f"this work item was already rolled back ({action})")
    status = done.get("status")
    if status != "DEGRADED":
        return Refuse(f"the window ended {status}, not DEGRADED: there is nothing to roll back")
    if not command:
        return Refuse("the repo has no rollback_command")
    return Proceed()
