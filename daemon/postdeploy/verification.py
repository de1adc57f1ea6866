"""After a successful rollback: probe again until recovery is confirmed or refuted.

Never a second rollback: a service still broken gets a critical event, not another go. The
probes go to `verify.jsonl`, so a restart resumes the count; `recovery` (pure) judges them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from postdeploy import layout
from postdeploy.context import WindowContext
from postdeploy.emission import Emitter
from postdeploy.series import fold, replay
from postdeploy.store import dump_line
from postdeploy.verdict import Action, Status, Verdict, classify, recovery

log = structlog.get_logger("postdeploy.window")


@dataclass(frozen=True)
class Verification:
    """What the probes after the rollback showed (`done`'s `rollback.verification`)."""

    recovered: bool
    checks: int  # probes made after the rollback
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"recovered": self.recovered, "checks": self.checks, "reason": self.reason}


async def verify(
    ctx: WindowContext, events: Emitter, verdict: Verdict, scope: anyio.CancelScope
) -> Verification | None:
    """Probe every `interval_s` until `verify_ticks` probes or a tripped rule; None when
    `scope` is cancelled (shutdown: the verification resumes after the restart)."""
    wanted, th = ctx.settings.verify_ticks, ctx.thresholds()
    tally = replay((await ctx.store.read_lines(layout.VERIFY)).rows)
    with scope:
        while tally.checks_total < wanted and classify(tally, th) is None:
            await anyio.sleep(ctx.settings.interval_s)
            row = await ctx.prober.probe(
                ctx.repo, ctx.settings.probe_timeout_s, tally.last_tick + 1, time.time(), False
            )
            try:
                with anyio.CancelScope(shield=True):
                    await ctx.store.append_lines(layout.VERIFY, [dump_line(row.to_dict())])
            except OSError as exc:
                log.error("verify.append_failed", error=str(exc))
            tally = fold(tally, row)
        result = recovery(tally, th, wanted)
        recovered = result.status is Status.HEALTHY
        with anyio.CancelScope(shield=True):
            await events.event(
                "rollback.verified" if recovered else "rollback.still_degraded",
                result.reason,
                result,
                status=verdict.status,
                action_taken=Action.ROLLBACK_OK,
            )
        (log.info if recovered else log.critical)(
            "rollback.verification", recovered=recovered, reason=result.reason
        )
        return Verification(recovered, tally.checks_total, result.reason)
    return None
