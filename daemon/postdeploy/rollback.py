"""Running the rollback command: argv from the config, its own process group, a timeout.

The command never goes through a shell (unless its argv names one), and nothing from the
sentinel reaches its argv: metadata is passed only as `POSTDEPLOY_META_<KEY>` environment
values. Its stdout and stderr go to `rollback.log` in the work item's directory, so a hook
that leaves a background child holding the output open cannot hang the daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL to the group at the timeout


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


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def run_command(
    argv: list[str], env: dict[str, str], timeout: float, log_fd: int | None
) -> RollbackResult:
    """Run `argv` in a new session (its own process group) and wait up to `timeout`."""
    start = time.monotonic()
    output: int = log_fd if log_fd is not None else subprocess.DEVNULL
    try:
        process = await anyio.open_process(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    except OSError as exc:
        return RollbackResult(None, f"could not start {argv[0]!r}: {exc}", time.monotonic() - start)
    async with process:
        with anyio.move_on_after(timeout):
            code = await process.wait()
            return RollbackResult(code, f"exited with {code}", time.monotonic() - start)
        await _terminate(process)
    return RollbackResult(
        None, f"timed out after {timeout:g}s; process group killed", time.monotonic() - start
    )


async def _terminate(process: anyio.abc.Process) -> None:
    """SIGTERM the whole process group, then SIGKILL it after a short grace."""
    with anyio.CancelScope(shield=True):
        _kill_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE_S):
            await process.wait()
        # Kill the group even if the leader exited: children may ignore SIGTERM.
        _kill_group(process.pid, signal.SIGKILL)
        await process.wait()
