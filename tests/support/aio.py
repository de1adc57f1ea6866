"""For tests that run in the test's own event loop: a TCP server on 127.0.0.1 whose
conversations the test writes, `Changes` (what such a server records, and waiting on it), and
`eventually`, the loop's `wait_until` for a state without an event.

`tcp_server(converse)` listens on a random port (TLS with `tls`) and runs `converse(reader,
writer)` for each connection, in a task of its own. When the block ends, even because the
test's own deadline fired, it stops listening, cancels every conversation still running (a
hung one would otherwise wait forever) and waits for them; a connection is closed when its
conversation ends. Bookkeeping a test needs at the end of a conversation goes in the
conversation's own `finally`.

`answering(reply)` is the simplest of them: every request on a connection gets the same raw
answer, as a target that is always up (or always down) does.

`KeepAliveServer` is the record a keep-alive HTTP test server keeps on top of `tcp_server`
(each connection it accepted, `Conn`, and when it ended), for the test servers that script
their answers byte by byte; `read_body` reads a transport's answer the way the Prober does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx

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


@asynccontextmanager
async def answering(reply: bytes) -> AsyncIterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request (a head without a body, as
    a probe sends) with the raw bytes `reply` and keeps the connection; yields its base URL."""

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away

    async with tcp_server(converse) as port:
        yield f"http://127.0.0.1:{port}"


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


@dataclass(eq=False)
class Conn:
    """One connection a keep-alive test server accepted, as that server sees it."""

    index: int  # accept order on its server, from 0
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: int = 0  # requests read on it so far
    client_closed: bool = False  # the server read end-of-stream (or a reset) from the client
    server_closed: bool = False  # the server ended it (on command, by its route, or stopping)
    finished: bool = False  # the conversation is over, whoever ended it


@dataclass(eq=False)
class KeepAliveServer(Changes):
    """A keep-alive test server's record: its connections in accept order and where it
    listens. `running(converse)` serves for the block, `converse(conn)` once per connection;
    every accept and every end of a connection wakes `wait_until`."""

    scheme: str = "http"
    port: int = 0
    conns: list[Conn] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @asynccontextmanager
    async def running(
        self, converse: Callable[[Conn], Awaitable[None]], *, tls: ssl.SSLContext | None = None
    ) -> AsyncIterator[None]:
        """Serve on 127.0.0.1 (HTTPS with `tls`) for the block."""

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Conn(len(self.conns), reader, writer)
            self.conns.append(conn)
            self.notify()
            try:
                await converse(conn)
            finally:  # also when the server stops: a hung conversation is cancelled then
                if not conn.client_closed:
                    conn.server_closed = True
                writer.close()
                conn.finished = True
                self.notify()

        self.scheme = "https" if tls else "http"
        async with tcp_server(on_connect, tls=tls) as port:
            self.port = port
            yield


async def read_body(response: httpx.Response) -> bytes:
    """The whole body of a transport's answer, its stream closed after (as the Prober does)."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    body = bytearray()
    try:
        async for chunk in stream:
            body += chunk
    finally:
        await stream.aclose()
    return bytes(body)
