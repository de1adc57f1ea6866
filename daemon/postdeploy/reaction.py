"""The reaction's one dangerous act, the rollback, made exactly once and recorded durably.

Both paths that roll back use it: a window that turned DEGRADED with `auto_rollback`
(`runner`), and a person's request (`manual`). The protocol, for a newcomer:

1. `rollback.json` exists: the rollback ran; its recorded result is the answer.
2. `rollback.intent` exists without a result: a rollback was started and the daemon died
   before its result was durable. It is never run again: ROLLBACK_UNKNOWN, loudly.
3. Otherwise `rollback.intent` is written and fsynced, and only then does the command start.
   A disk that refuses the intent (full, read-only, failing) delays the command; it is
   retried with backoff and never given up on while the daemon runs.
4. The command's result is logged at once (journald has it even if the disk never takes the
   file), then written to `rollback.json`, retried the same way.

Every wait for the disk ends with `Interrupted` when the daemon shuts down: nothing more is
written, and the restart takes the work item up again from what is on disk.

The recorded result is a `RollbackRecord`, and a person's rollback is recorded in `done` as a
`ManualRollback`: typed here, turned into JSON only where they are written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import structlog

from postdeploy import layout, metrics
from postdeploy.manual import Request
from postdeploy.rollback import RollbackResult, run_command
from postdeploy.store import ItemStore, ItemVanished
from postdeploy.verdict import Action
from postdeploy.verdict import rollback_action as action_for_exit

log = structlog.get_logger("postdeploy.reaction")

WRITE_RETRY_FIRST_S = 0.5  # the first wait after the disk refused a write
WRITE_RETRY_MAX_S = 30.0  # the longest wait between two tries of a write the disk refused


# The event sent when a rollback ends with each action.
ROLLBACK_EVENT = {
    Action.ROLLBACK_OK: "rollback.ok",
    Action.ROLLBACK_FAILED: "rollback.failed",
    Action.ROLLBACK_UNKNOWN: "rollback.unknown",
}


class Interrupted(Exception):
    """The daemon is shutting down while a write still waits for the disk."""


@dataclass(frozen=True)
class RollbackRecord:
    """What `rollback.json` says: the command's result, and whether a person asked for it.

    `exit_code` is None when the command did not start or was killed at its timeout."""

    exit_code: int | None
    detail: str
    duration_s: float  # rounded to the millisecond, as written
    manual: bool = False

    @classmethod
    def of(cls, result: RollbackResult, *, manual: bool) -> RollbackRecord:
        done = result.to_dict()
        return cls(result.exit_code, result.detail, done["duration_s"], manual)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RollbackRecord:
        """A record read back from `rollback.json` (wrong types become "unknown")."""
        code, duration = data.get("exit_code"), data.get("duration_s")
        return cls(
            code if isinstance(code, int) and not isinstance(code, bool) else None,
            str(data.get("detail", "")),
            float(duration) if isinstance(duration, int | float) else 0.0,
            data.get("manual") is True,
        )

    @property
    def action(self) -> Action:
        return action_for_exit(self.exit_code)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of `rollback.json` (and of `done`'s `rollback`)."""
        return {
            "exit_code": self.exit_code,
            "detail": self.detail,
            "duration_s": self.duration_s,
            **({"manual": True} if self.manual else {}),
        }


def detail_of(record: RollbackRecord | None) -> str:
    """What the rollback's event says of its result."""
    return record.detail if record else "result unknown"


@dataclass(frozen=True)
class ManualRollback:
    """A person's rollback as `done` records it (`manual_rollback`): who, why, the result."""

    request: Request
    action: Action
    record: RollbackRecord | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.request.to_dict(),
            "action": str(self.action),
            **(self.record.to_json() if self.record else {}),
        }


async def durably(what: str, write: Callable[[], Awaitable[None]], shutdown: anyio.Event) -> None:
    """Run `write` until the disk takes it: a full, read-only or failing disk is retried with
    backoff (WRITE_RETRY_FIRST_S doubling to WRITE_RETRY_MAX_S), each refusal logged.

    Raises Interrupted once `shutdown` is set, ItemVanished if the directory is gone."""
    delay = WRITE_RETRY_FIRST_S
    while True:
        try:
            with anyio.CancelScope(shield=True):
                await write()
            return
        except ItemVanished:
            raise
        except OSError as exc:
            log.error(
                "window.write_failed",
                writing=what,
                error=str(exc),
                errno=exc.errno,
                retry_in_s=delay,
                note="retried until the disk takes it; nothing is decided twice",
            )
        with anyio.move_on_after(delay):
            await shutdown.wait()
        if shutdown.is_set():
            raise Interrupted(f"writing {what}")
        delay = min(delay * 2, WRITE_RETRY_MAX_S)


async def rollback(
    store: ItemStore,
    argv: list[str],
    env: Mapping[str, str],
    timeout: float,
    shutdown: anyio.Event,
    *,
    manual: bool = False,
) -> tuple[Action, RollbackRecord | None]:
    """Run the rollback command at most once per work item, even across restarts (see the
    module docstring); returns the action and the recorded result."""
    previous = await store.read_json(layout.ROLLBACK_RESULT)
    if previous is not None:
        log.info("rollback.already_ran", result=previous)
        record = RollbackRecord.from_json(previous)
        return record.action, record
    if await store.exists(layout.ROLLBACK_INTENT):
        log.critical(
            "rollback.unknown",
            reason="a rollback was started before a restart and its result was never "
            "recorded; it is not run again: check the service by hand",
        )
        metrics.rollback_finished(store.key.repo, str(Action.ROLLBACK_UNKNOWN))
        return Action.ROLLBACK_UNKNOWN, None
    intent = {"argv": argv, "started_at": time.time(), "pid": os.getpid(), "manual": manual}
    await durably(
        layout.ROLLBACK_INTENT, partial(store.write_json, layout.ROLLBACK_INTENT, intent), shutdown
    )
    log.warning("rollback.started", argv=argv, manual=manual)
    result = await _run_logged(store, argv, dict(env), timeout)
    recorded = RollbackRecord.of(result, manual=manual)
    action = recorded.action
    # Logged before the result is written: journald has it even if the disk never takes
    # the file and the daemon is stopped (the restart then says ROLLBACK_UNKNOWN).
    level = log.warning if action is Action.ROLLBACK_OK else log.critical
    level("rollback.finished", action=str(action), **result.to_dict())
    metrics.rollback_finished(store.key.repo, str(action))
    await durably(
        layout.ROLLBACK_RESULT,
        partial(store.write_json, layout.ROLLBACK_RESULT, recorded.to_json()),
        shutdown,
    )
    return action, recorded


async def _run_logged(
    store: ItemStore, argv: list[str], env: dict[str, str], timeout: float
) -> RollbackResult:
    """The command, its output (capped) appended to `rollback.log`; a log that cannot be
    opened loses the output, never the rollback."""
    opener = store.opener(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        log_fd = await anyio.to_thread.run_sync(opener, layout.ROLLBACK_LOG, 0)
    except OSError as exc:
        log.error("rollback.log_unavailable", error=str(exc))
        log_fd = None
    try:
        return await run_command(argv, env, timeout, log_fd)
    finally:
        if log_fd is not None:
            os.close(log_fd)
