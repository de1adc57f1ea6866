"""A window's conclusion: verdict -> reaction -> verification -> outcome.

Once a window has its verdict, `verdict.decide_action` names the reaction (none, an alert, a
rollback, or what would have been done in shadow mode); the rollback runs at most once
(`reaction`), a successful one is verified (`verification`), and the outcome is written
(`outcome`) only after every event of the window is on disk. Never interrupted, except by a
shutdown while it waits for the disk (`Interrupted`: the restart takes it up again).
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import structlog

from postdeploy import metrics, reaction
from postdeploy.emission import Emitter
from postdeploy.manual import Request
from postdeploy.outcome import OutcomeWriter
from postdeploy.reaction import ROLLBACK_EVENT, ManualRollback, RollbackRecord, detail_of
from postdeploy.report import Outcome
from postdeploy.rollback import rollback_env
from postdeploy.series import ticks_missed
from postdeploy.verdict import Action, Decision, Status, Verdict, decide_action
from postdeploy.verification import Verification, verify
from postdeploy.window_context import WindowContext

log = structlog.get_logger("postdeploy.window")

# The event sent when a window ends with each status (DEGRADED is sent before the reaction).
FINISH_EVENT = {
    Status.HEALTHY: "window.healthy",
    Status.INCONCLUSIVE: "window.inconclusive",
    Status.SUPERSEDED: "window.superseded",
    Status.CANCELLED: "window.cancelled",
    Status.DISABLED: "window.disabled",
    Status.MISSED: "window.missed",
    Status.ERROR: "window.error",
}


def rollback_json(
    record: RollbackRecord | None, checked: Verification | None = None
) -> dict[str, Any] | None:
    """`done`'s `rollback`: the recorded result, with the verification when there was one."""
    if checked is not None:
        return {**(record.to_json() if record else {}), "verification": checked.to_json()}
    return record.to_json() if record else None


class Conclusion:
    """The reaction and the outcome of one window that has its verdict."""

    def __init__(
        self, ctx: WindowContext, events: Emitter, writer: OutcomeWriter, shutdown: anyio.Event
    ) -> None:
        self._ctx = ctx
        self._events = events
        self._writer = writer
        self._shutdown = shutdown  # set at daemon shutdown: stop waiting for the disk
        self.verify_scope = anyio.CancelScope()  # rollback verification; cancelled at shutdown
        self.completed = False  # `done` is written: the window is finished for good

    async def conclude(self, verdict: Verdict, manual: Request | None) -> None:
        """React to `verdict` (`manual`: a person asked for the rollback), then finish."""
        ctx = self._ctx
        decision = decide_action(
            verdict.status,
            self_hosting=ctx.repo.self_hosting,
            auto_rollback=ctx.settings.auto_rollback,
            preexisting=verdict.preexisting,
        )
        shadow = ctx.settings.mode == "shadow" or ctx.metadata.get("mode") == "shadow"
        if manual is not None:  # a person decided: no rule of the repo's applies
            decision, shadow = Decision.ROLLBACK, False
            await self._events.event(
                "rollback.manual",
                f"{manual.requested_by} asked for the rollback: "
                f"{manual.reason or '(no reason given)'}",
                verdict,
                status=verdict.status,
                request=manual.to_dict(),
            )
        if decision is not Decision.NONE:
            log.critical(
                "window.degraded",
                decision=str(decision),
                shadow=shadow,
                reason=verdict.reason,
                self_hosting=ctx.repo.self_hosting,
            )
            kind = "window.shadow" if shadow else "window.degraded"
            note = f"would have done {decision} (shadow mode): " if shadow else f"{decision}: "
            await self._events.event(
                kind, note + verdict.reason, verdict, decision=str(decision), status=verdict.status
            )
        if decision is not Decision.NONE and shadow:
            await self.finish(verdict, Action.SHADOW)
        elif decision is Decision.ALERT_ONLY:
            await self.finish(verdict, Action.ALERT_ONLY)
        elif decision is Decision.ROLLBACK:
            await self._roll_back(verdict, manual)
        else:
            await self.finish(verdict, Action.NONE)

    async def _roll_back(self, verdict: Verdict, manual: Request | None) -> None:
        """The rollback, its event, its verification, then the outcome."""
        with anyio.CancelScope(shield=True):
            action, record = await self._rollback(verdict, manual)
        await self._events.event(
            ROLLBACK_EVENT[action],
            f"rollback {action}: {detail_of(record)}; degraded because {verdict.reason}",
            verdict,
            status=verdict.status,
            action_taken=action,
            rollback=rollback_json(record),
        )
        by_hand = ManualRollback(manual, action, record) if manual is not None else None
        checked = None
        if action is Action.ROLLBACK_OK and self._ctx.settings.verify_ticks > 0:
            checked = await verify(self._ctx, self._events, verdict, self.verify_scope)
            if checked is None:
                return  # shutdown: the verification resumes after the restart
        await self.finish(verdict, action, rollback_json(record, checked), by_hand)

    async def _rollback(
        self, verdict: Verdict, manual: Request | None
    ) -> tuple[Action, RollbackRecord | None]:
        """The rollback command, at most once per work item (see `reaction`)."""
        ctx = self._ctx
        env = rollback_env(
            os.environ,
            ctx.repo.rollback_env,
            repo=ctx.key.repo,
            work_item=ctx.key.work_item,
            # A person's rollback passes on their reason, as the contract says.
            reason=manual.reason if manual and manual.reason else verdict.reason,
            metadata=ctx.metadata,
        )
        return await reaction.rollback(
            ctx.store,
            list(ctx.repo.rollback_command or []),
            env,
            ctx.settings.rollback_timeout_s,
            self._shutdown,
            manual=manual is not None,
        )

    async def finish(
        self,
        verdict: Verdict,
        action: Action,
        rollback: dict[str, Any] | None = None,
        manual: ManualRollback | None = None,
    ) -> None:
        """The finish event, then (once every event is on disk) `report.md` and `done`."""
        ctx = self._ctx
        outcome = Outcome(
            key=ctx.key,
            status=verdict.status,
            action_taken=action,
            reason=verdict.reason,
            checks_total=ctx.tally.checks_total,
            checks_failed=ctx.tally.checks_failed,
            window_s=ctx.start.window_s or ctx.start.schedule.window_s,
            finished_at=time.time(),
            armed_at=ctx.start.schedule.armed_at,
            metadata=ctx.metadata,
            evidence=verdict.evidence,
            preexisting=verdict.preexisting,
            rollback=rollback,
            manual_rollback=manual.to_json() if manual else None,
            ticks_missed=ticks_missed(ctx.tally, ctx.start.schedule.max_ticks),
        )
        finish_event = FINISH_EVENT.get(verdict.status)
        if finish_event:  # the outbox keeps an event the disk refuses in memory and retries
            with anyio.CancelScope(shield=True):
                await self._events.event(
                    finish_event,
                    verdict.reason,
                    verdict,
                    status=verdict.status,
                    action_taken=action,
                )
        await self._events.all_written(self._shutdown)
        await self._writer.commit(outcome, self._shutdown)
        self.completed = True
        metrics.window_finished(ctx.key.repo, str(verdict.status), str(action))
        level = log.info if verdict.status is Status.HEALTHY else log.warning
        if (
            action in (Action.ROLLBACK_FAILED, Action.ROLLBACK_UNKNOWN)
            or verdict.status is Status.ERROR
        ):
            level = log.error
        level(
            "window.finished",
            status=str(outcome.status),
            action_taken=str(action),
            reason=verdict.reason,
            checks_total=outcome.checks_total,
            checks_failed=outcome.checks_failed,
            window_s=outcome.window_s,
            metadata=ctx.metadata,
        )
