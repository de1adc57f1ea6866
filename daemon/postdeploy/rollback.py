"""Running the rollback command: argv from the config, its own process group, a timeout.

The command never goes through a shell (unless its argv names one), and nothing from the
sentinel reaches its argv: metadata is passed only as `POSTDEPLOY_META_<KEY>` environment
values. Its stdout and stderr go to `rollback.log` in the work item's directory, capped (head
and tail); whatever it leaves running in its process group is ended when it exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from postdeploy.durable import write_fd
from postdeploy.process import CappedOutput, run_in_group

log = structlog.get_logger("postdeploy.rollback")


@dataclass(frozen=True)
class RollbackResult:
    """`exit_code` is None when the command did not start or was killed at its timeout."""

    exit_code: int | None
    detail: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 3),
        }


def rollback_env(
    base: Mapping[str, str],
    extra: Mapping[str, str],
    *,
    repo: str,
    work_item: str,
    reason: str,
    metadata: Mapping[str, str],
) -> dict[str, str]:
    """The command's environment: the daemon's, `rollback_env`, then the POSTDEPLOY_ values."""
    env = {**base, **extra}
    env.update(POSTDEPLOY_REPO=repo, POSTDEPLOY_WORK_ITEM=work_item, POSTDEPLOY_REASON=reason)
    for key, value in metadata.items():
        env[f"POSTDEPLOY_META_{key.upper()}"] = value
    return env


async def run_command(
    argv: list[str], env: dict[str, str], timeout: float, log_fd: int | None
) -> RollbackResult:
    """Run `argv` in its own process group and wait up to `timeout`.

    Its output goes to `log_fd` (None: discarded), capped: the first and last
    `OUTPUT_LIMIT` bytes are kept (see `process`). The log is written when the command has
    ended; a disk that refuses it loses the log, never the result."""
    output = CappedOutput() if log_fd is not None else None
    finished = await run_in_group(argv, env, timeout, output=output)
    if output is not None and log_fd is not None:
        try:
            await anyio.to_thread.run_sync(write_fd, log_fd, output.render())
        except OSError as exc:
            log.error("rollback.log_unwritable", error=str(exc))
    return RollbackResult(finished.exit_code, finished.detail, finished.duration_s)
