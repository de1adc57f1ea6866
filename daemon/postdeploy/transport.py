"""A lean HTTP/1.1 transport for httpx: asyncio protocols and h11, nothing else.

httpx's default transport (httpcore over anyio streams) costs about 0.6-1.4 ms of CPU per
request on a small machine: stream wrappers, a cancel scope per read, connection-pool
bookkeeping that grows with the requests queued, a `getpeername()` and a `poll()` per
connection per request. A monitor making a thousand probes a second cannot afford that on one
core. This transport keeps httpx as the API (`httpx.Request` in, `httpx.Response` out, httpx's
exceptions) and does the HTTP itself with h11 (the parser httpcore uses) on asyncio protocols:

- one pool of idle keep-alive connections per origin, shared by every caller; a connection is
  taken from it only when its last exchange ended cleanly (both sides DONE) and the server
  has not closed it since; idle ones are closed after `keepalive_expiry` seconds;
- no limit on connections: the caller bounds its requests in flight (the `Prober` does);
- timeouts are the caller's: a cancelled request closes its connection, which is then never
  reused (its state is unknown);
- reading pauses when more than `READ_HIGH_WATER` bytes arrived since the reader last asked
  for an event, so a fast large body is not buffered in memory ahead of the reader;
- a server that speaks on an idle connection (a "408 Request Timeout" before it closes) has
  ended it: the connection is closed, and that answer is never taken for the next request's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import h11
import httpx

READ_HIGH_WATER = 256 * 1024
KEEPALIVE_EXPIRY = 5.0


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its h11 state machine."""

    def __init__(self, origin: tuple[bytes, bytes, int], pool: LeanTransport) -> None:
        self.origin = origin
        self.pool = pool
        self.h11 = h11.Connection(h11.CLIENT)
        self.received = 0  # bytes received since the current request was sent
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self._unread = 0  # bytes received since the reader last asked for an event
        self.expiry: asyncio.TimerHandle | None = None

    # asyncio.Protocol callbacks: they only feed h11 and wake the reader.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._eof:
            return
        if self.expiry is not None:
            # Idle in the pool (only idle connections have an expiry timer), yet the server
            # speaks, e.g. "408 Request Timeout" before it closes: that answers nothing we
            # asked, and nothing more on this connection can be trusted.
            self.close()
            return
        self.received += len(data)
        self._unread += len(data)
        self.h11.receive_data(data)
        if self._unread > READ_HIGH_WATER and self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        if not self._eof:
            self._eof = True
            self.h11.receive_data(b"")
        self.closed = True
        self._wake()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.pool.forget(self)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Used by the request in progress.
    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("connection closed by the server")
        if data:
            self.transport.write(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        """The next event from the server, waiting for data as needed (never NEED_DATA)."""
        while True:
            self._unread = 0  # what h11 holds now is being parsed
            state = self.h11.their_state
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof and state is h11.SEND_RESPONSE:
                    # Closed before a whole status line and headers (httpcore's wording).
                    message = "Server disconnected without sending a response."
                    raise httpx.RemoteProtocolError(message) from exc
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            if self.closed:
                # h11 saw the EOF (or never will): the server went away mid-answer.
                raise httpx.ReadError(
                    str(self.lost) if self.lost else "server closed the connection"
                ) from self.lost
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and self.h11.our_state is h11.IDLE
            and self.h11.their_state is h11.IDLE
        )

    def close(self) -> None:
        self.closed = True
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.transport is not None:
            self.transport.close()


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; hands the connection back when complete."""

    def __init__(self, pool: LeanTransport, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed before the end, or anything unexpected
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self._conn = None
        self._pool.release(conn)

    async def aclose(self) -> None:
        # Closed before the body was read to its end: the connection's state is unknown.
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# A request extension: a callable, called once the request is written to its connection.
ON_SENT = "postdeploy.on_sent"


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 over asyncio with h11, keep-alive pool per origin."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._ssl = ssl_context
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int], collections.deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False  # aclose() was called: no retry may open a connection

    @property
    def connections(self) -> int:
        """Connections open now (idle or in use)."""
        return len(self._open)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        origin = (scheme, url.raw_host, port)
        headers = list(request.headers.raw)
        if not any(name.lower() == b"host" for name, _ in headers):
            headers.insert(0, (b"Host", url.netloc))
        try:
            head = h11.Request(method=request.method, target=url.raw_path, headers=headers)
        except h11.LocalProtocolError as exc:  # e.g. a header value with a line break
            raise httpx.LocalProtocolError(str(exc)) from exc
        body = request.content  # the Prober builds requests with bytes, never a stream
        on_sent = request.extensions.get(ON_SENT)
        conn = self._take(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, on_sent)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                # A kept-alive connection the server closed while we picked it (its idle
                # timeout can be as short as ours): it never saw the request, so asking
                # again on a new connection is safe. Anything else is the answer.
                if conn.received or self._closed or request.method not in ("GET", "HEAD"):
                    raise
        return await self._exchange(await self._connect(origin), head, body, on_sent)

    async def _exchange(
        self,
        conn: _Connection,
        head: h11.Request,
        body: bytes,
        on_sent: Callable[[], object] | None = None,
    ) -> httpx.Response:
        try:
            conn.received = 0
            conn.send(head)
            if body:
                conn.send(h11.Data(data=body))
            conn.send(h11.EndOfMessage())
            if on_sent is not None:
                on_sent()
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):  # e.g. 100 Continue
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except h11.LocalProtocolError as exc:
            conn.close()
            raise httpx.LocalProtocolError(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, conn),
            extensions={"http_version": b"HTTP/" + event.http_version},
        )

    def _take(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have expired
            if conn.expiry is not None:
                conn.expiry.cancel()
                conn.expiry = None
            if conn.reusable:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(origin, self)
        hostname = host.decode("ascii")
        tls: dict[str, Any] = {}
        if scheme == b"https":
            tls = {"ssl": self._ssl or ssl.create_default_context(), "server_hostname": hostname}
        try:
            await loop.create_connection(lambda: conn, hostname, port, **tls)
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        if not conn.closed:
            self._open.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        """Return a connection whose exchange is complete to the idle pool, or close it."""
        # Not both DONE (e.g. "Connection: close") raises: the connection is not reusable.
        with contextlib.suppress(h11.LocalProtocolError):
            conn.h11.start_next_cycle()
        if not conn.reusable:
            conn.close()
            return
        self._idle.setdefault(conn.origin, collections.deque()).append(conn)
        conn.expiry = asyncio.get_running_loop().call_later(self._expiry, conn.close)

    def forget(self, conn: _Connection) -> None:
        """Called once a connection is lost: drop it from the pool."""
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None:
            with contextlib.suppress(ValueError):  # it was in use, not idle
                idle.remove(conn)
            if not idle:
                del self._idle[conn.origin]

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
