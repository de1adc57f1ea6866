"""Running a command from the config in a process group of its own, and ending that group.

Both the rollback command and the `command` alert sink run this way:

- argv from the config, never a shell (unless the argv names one), in a new session, so the
  command and everything it starts form one process group;
- its stdout and stderr go through one pipe into a `CappedOutput`: the first and the last
  `limit` bytes are kept, the middle is counted and dropped, so a command that prints 100 MB
  costs 2 x `limit` bytes of memory and of disk;
- at its timeout the group gets SIGTERM, then SIGKILL after `grace` seconds;
- when the command exits, whatever it left running in its group (a background child, even
  one that ignores SIGTERM) is ended the same way: nothing a command starts outlives it;
- a child that escaped the group (its own `setsid`) and keeps the pipe open cannot hang us:
  the output is read for at most `grace` seconds after the group is ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO

import anyio
import anyio.abc

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL to a process group
OUTPUT_LIMIT = 64 * 1024  # bytes kept from each end of a command's output
_POLL_S = 0.02


@dataclass
class CappedOutput:
    """The head and the tail of a stream of bytes, at most `limit` bytes each."""

    limit: int = OUTPUT_LIMIT
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail += chunk
        excess = len(self.tail) - self.limit
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def render(self) -> bytes:
        """Everything kept, with a line saying how much was left out between head and tail."""
        if not self.dropped:
            return bytes(self.head + self.tail)
        marker = f"\n[... {self.dropped} bytes of output left out ...]\n".encode()
        return bytes(self.head) + marker + bytes(self.tail)

    def last_text(self, limit: int = 400) -> str:
        """The last `limit` characters, as text, for a one-line detail."""
        data = bytes(self.tail) if self.tail else bytes(self.head)
        return data.decode("utf-8", errors="replace")[-limit:].strip()


@dataclass(frozen=True)
class Finished:
    """How a command ended: `exit_code` None if it did not start or was killed at the timeout."""

    exit_code: int | None
    detail: str
    duration_s: float


async def run_in_group(
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    *,
    output: CappedOutput | None = None,
    stdin: IO[bytes] | int = subprocess.DEVNULL,
    grace: float = KILL_GRACE_S,
) -> Finished:
    """Run `argv` in its own process group; its output goes to `output` (None: discarded)."""
    start = time.monotonic()
    try:
        process = await anyio.open_process(
            argv,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE if output is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return Finished(None, f"could not start {argv[0]!r}: {exc}", time.monotonic() - start)
    code: int | None = None
    read_all = anyio.Event()
    async with anyio.create_task_group() as tg:
        if output is not None and process.stdout is not None:
            tg.start_soon(_read, process.stdout, output, read_all)
        else:
            read_all.set()
        try:
            with anyio.move_on_after(timeout):
                code = await process.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await end_group(process, grace)
                # The group is gone; a child that left it may still hold the pipe open.
                with anyio.move_on_after(grace):
                    await read_all.wait()
                tg.cancel_scope.cancel()
        duration = time.monotonic() - start
    with contextlib.suppress(OSError):
        await process.aclose()
    if code is None:
        return Finished(None, f"timed out after {timeout:g}s; process group killed", duration)
    return Finished(code, f"exited with {code}", duration)


async def _read(
    stream: anyio.abc.ByteReceiveStream, output: CappedOutput, done: anyio.Event
) -> None:
    try:
        while True:
            output.feed(await stream.receive(65536))
    except (anyio.EndOfStream, anyio.ClosedResourceError, OSError):
        pass
    finally:
        done.set()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def end_group(process: anyio.abc.Process, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the process's whole group, then SIGKILL what is left after `grace` seconds.

    Also after the leader exited by itself: its children are still in the group."""
    pgid = process.pid
    if process.returncode is not None and not _group_alive(pgid):
        return
    kill_group(pgid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        await process.wait()
        while _group_alive(pgid):  # noqa: ASYNC110 (no event says a group is empty)
            await anyio.sleep(_POLL_S)
    kill_group(pgid, signal.SIGKILL)
    await process.wait()
