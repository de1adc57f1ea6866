"""For tests that run in the test's own event loop: a TCP server on 127.0.0.1 whose
conversations the test writes, `Changes` (what such a server records, and waiting on it), and
`eventually`, the loop's `wait_until` for a state without an event.

`tcp_server(converse)` listens on a random port (TLS with `tls`) and runs `converse(reader,
writer)` for each connection, in a task of its own. When the block ends, even because the
test's own deadline fired, it stops listening, cancels every conversation still running (a
hung one would otherwise wait forever) and waits for them; a connection is closed when its
conversation ends. Bookkeeping a test needs at the end of a conversation goes in the
conversation's own `finally`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from support.wait import DEADLINE_S

Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(
    converse: Conversation, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve on 127.0.0.1 for the block; yields the port."""
    conversations: set[asyncio.Future[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await converse(reader, writer)
        finally:
            writer.close()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # In a task of our own: cancelling asyncio's own connection task instead makes
        # Python 3.11 log a spurious "Exception in callback".
        task = asyncio.ensure_future(run(reader, writer))
        conversations.add(task)
        await asyncio.wait({task})

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        with anyio.CancelScope(shield=True):  # also when the test's deadline has fired
            listener.close()
            for task in conversations:
                task.cancel()
            await asyncio.gather(*conversations, return_exceptions=True)
            await listener.wait_closed()


async def eventually(
    predicate: Callable[[], object], what: str, timeout: float = DEADLINE_S
) -> None:
    """Wait until `predicate()` holds, for a state that has no event to wait on (the
    transport's own, or one another thread changes): brief polls; fails after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


@dataclass(eq=False)
class Changes:
    """A state a test's server changes in the loop and the test waits on (a base for the
    servers' records): `notify()` after each change wakes every `wait_until`, which re-checks
    its predicate."""

    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], deadline: float = DEADLINE_S) -> None:
        """Wait until `predicate()` holds; TimeoutError after `deadline` seconds."""
        async with asyncio.timeout(deadline):
            while not predicate():
                await self._changed.wait()
