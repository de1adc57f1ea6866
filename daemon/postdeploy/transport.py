"""A lean HTTP/1.1 transport for httpx: asyncio protocols and h11, nothing else.

httpx's default transport (httpcore over anyio streams) costs about 0.6-1.4 ms of CPU per
request on a small machine: stream wrappers, a cancel scope per read, connection-pool
bookkeeping that grows with the requests queued, a `getpeername()` and a `poll()` per
connection per request. A monitor making a thousand probes a second cannot afford that on one
core. This transport keeps httpx as the API (`httpx.Request` in, `httpx.Response` out, httpx's
exceptions) and does the HTTP itself with h11 (the parser httpcore uses) on asyncio protocols.

The pool:

- one pool of idle keep-alive connections per origin (scheme, host, port and, for https, the
  TLS context), shared by every caller; no limit on connections: the caller bounds its
  requests in flight (the `Prober` does); idle ones are closed after `keepalive_expiry` s;
- a connection goes back to the pool only when its exchange ended cleanly: both sides DONE,
  nothing left over after the answer's end (a 204, a 304 or a HEAD answer sent with a body
  leaves bytes that would be read as the next request's answer), and no doubt about it (a
  204 announcing a body, whose body may still be on its way). Anything else closes it;
- a server that speaks on an idle connection (a "408 Request Timeout" before it closes) has
  ended it: the connection is closed, and that answer is never taken for the next request's;
- timeouts are the caller's: a cancelled request closes its connection, which is then never
  reused (its state is unknown).

Retries. Only GET and HEAD are ever sent twice, at most once more, on a new connection, and
only when the first try went to a kept-alive connection (taken from the pool) and what came
back on it is no answer to our request:

- nothing at all: the connection failed (reset, closed, or found closed when writing) before
  any byte came. The server's idle timeout closed it just as we picked it; it never saw our
  request, or dropped it unread;
- a 408 (or a failure after the start of one, "HTTP/1.x 408"). A 408 says the server did not
  receive a whole request in time: it acted on nothing. On a reused connection it is nearly
  always the idle-timeout notice the server sent before it could read our request (it
  crossed our request on the wire, or arrived just as we took the connection, with or
  without `Connection: close`), and RFC 9110 (15.5.9) lets a client repeat the request. If
  the new connection answers 408 as well, that is the answer.

Anything else that came back, however broken, is the server's answer and is not retried. A
POST (or any other method) is never retried: the server may have acted on it; it gets the
error, or the 408 as its answer.

Bounds, against a hostile or broken server:

- a response head may have at most `MAX_HEADERS` header lines and `MAX_HEAD_BYTES` bytes, and
  come after at most `MAX_INFORMATIONAL` 1xx answers. The head is measured as it arrives,
  before h11 parses it (10,000 headers cost h11 20+ ms of CPU); over a bound, the request
  fails with httpx.RemoteProtocolError and the connection is closed;
- reading pauses when more than `READ_HIGH_WATER` bytes arrived since the reader last asked
  for an event, so a fast large body is not buffered in memory ahead of the reader.

Name resolution. asyncio resolves a host name with getaddrinfo in the event loop's default
thread pool, which the rest of the daemon uses (file writes through aiofiles): a name that
takes 20 s to resolve would hold a thread of it per request, and a few of them would stall
every window's writes. So names are resolved here, by a `ThreadedResolver`:

- on `LOOKUP_THREADS` threads of its own, which nothing else uses (daemon threads: a lookup
  still hanging never delays the process's exit, as a ThreadPoolExecutor's would);
- single-flight: concurrent lookups of one (host, port) share one lookup, so a hung name holds
  one thread however many requests wait on it; answers are kept `LOOKUP_TTL` seconds;
- IP literals are never looked up (no thread at all); the connection is made to the resolved
  address, and TLS still verifies (and sends as SNI) the URL's host name;
- a request whose deadline passes during the lookup stops waiting (the caller's cancel) while
  the lookup finishes on its thread; the request carries the `RESOLVING` extension while it
  waits, so the caller can tell a name-resolution timeout from others.

`LeanTransport(resolver=...)` takes any `Resolver` in its place (a seam for tests).

Request extensions: `ON_SENT` (a callable, called once the request is written to its
connection) and `SSL_CONTEXT` (an `ssl.SSLContext` for this request's https connections,
instead of the transport's; connections made with one context never serve another).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import h11
import httpx

READ_HIGH_WATER = 256 * 1024
KEEPALIVE_EXPIRY = 5.0
MAX_HEADERS = 100  # header lines in one response head
MAX_HEAD_BYTES = 64 * 1024  # bytes of one response head, status line and headers
MAX_INFORMATIONAL = 10  # 1xx answers before the final one
LOOKUP_THREADS = 4  # threads of the default resolver
LOOKUP_TTL = 5.0  # seconds a resolved name is remembered

# Request extensions (see the module docstring).
ON_SENT = "postdeploy.on_sent"  # a callable, called once the request is written
SSL_CONTEXT = "postdeploy.ssl_context"  # the ssl.SSLContext of this request's https connections
RESOLVING = "postdeploy.resolving"  # set by the transport while the request waits on DNS

RETRYABLE = frozenset({"GET", "HEAD"})  # the only methods ever sent twice

# A pool key: scheme, host, port, and the TLS context of an https origin (None for http).
Origin = tuple[bytes, bytes, int, ssl.SSLContext | None]
# One entry of socket.getaddrinfo: family, type, proto, canonical name, socket address.
Address = tuple[int, int, int, str, tuple[Any, ...]]
# Resolves (host, port) to the addresses to try in order; raises OSError (socket.gaierror).
Resolver = Callable[[str, int], Awaitable[Sequence[Address]]]


# --------------------------------------------------------------------------------------------
# Decisions (pure functions)
# --------------------------------------------------------------------------------------------

_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head, as h11 finds it
_INFORMATIONAL = re.compile(rb"HTTP/\d\.\d 1")  # the start of a 1xx head
_TIMEOUT_408 = re.compile(rb"HTTP/1\.[01] 408[ \r]")  # the start of a 408 head


def check_heads(data: bytes) -> tuple[str | None, bool]:
    """Measure the response heads at the start of `data` (received, not yet parsed) against
    the bounds: (what is wrong or None, whether the final head is complete).

    1xx heads before the final one are measured each, and counted."""
    start = 0
    for _ in range(MAX_INFORMATIONAL + 1):
        end_of_head = _BLANK_LINE.search(data, start)
        end = len(data) if end_of_head is None else end_of_head.end()
        # Lines ended so far, less the status line, less the blank line once it came.
        headers = data.count(b"\n", start, end) - 1 - (end_of_head is not None)
        if headers > MAX_HEADERS:
            return f"response head with over {MAX_HEADERS} header lines", False
        if end - start > MAX_HEAD_BYTES:
            return f"response head over {MAX_HEAD_BYTES} bytes", False
        if end_of_head is None:
            return None, False
        if not _INFORMATIONAL.match(data, start):
            return None, True
        start = end
    return f"over {MAX_INFORMATIONAL} informational responses", False


def no_answer_to_us(received: int, unparsed: bytes) -> bool:
    """Whether what a kept-alive connection returned before it failed is no answer to the
    request we sent on it: nothing at all, or the start of a 408 (see the module docstring).
    `unparsed` is what h11 holds unparsed (a head cut short)."""
    return received == 0 or _TIMEOUT_408.match(unparsed) is not None


def announces_missing_body(status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """A 204 that announces a body it cannot have: the body may be on its way, to be read as
    the next request's answer. (A HEAD or 304 answer's Content-Length is the length the
    body would have: normal.) `headers` are h11's, names in lower case."""
    if status != 204:
        return False
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
        for name, value in headers
    )


# --------------------------------------------------------------------------------------------
# Name resolution
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Threads:
    """A fixed set of daemon threads running blocking calls, started on first use.

    Not a ThreadPoolExecutor: its threads are joined at the interpreter's exit, so a lookup
    hanging for a minute would hold up the daemon's exit for that minute."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]
        ] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        if not self._started:
            with self._lock:
                if not self._started:
                    for i in range(self._count):
                        name = f"{self._name}-{i}"
                        threading.Thread(target=self._work, name=name, daemon=True).start()
                    self._started = True
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args  # hold nothing while waiting for the next job


def _getaddrinfo(host: str, port: int) -> Sequence[Address]:
    """The blocking lookup (`socket.getaddrinfo` found at each call, so tests can replace it)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class ThreadedResolver:
    """Resolves host names on threads of its own, one lookup per (host, port) at a time.

    `lookup` is the blocking function (getaddrinfo for TCP by default). Answers are kept
    `ttl` seconds; failures are not kept."""

    def __init__(
        self,
        *,
        threads: int = LOOKUP_THREADS,
        ttl: float = LOOKUP_TTL,
        lookup: Callable[[str, int], Sequence[Address]] = _getaddrinfo,
    ) -> None:
        self._threads = _Threads(threads, "postdeploy-dns")
        self._ttl = ttl
        self._lookup = lookup
        # Shared by the event loop(s) and the lookup threads (which finish lookups).
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], concurrent.futures.Future[Sequence[Address]]] = {}
        self._cache: dict[tuple[str, int], tuple[float, Sequence[Address]]] = {}

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        key = (host, port)
        started = False
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            future = self._pending.get(key)
            if future is None:
                future = self._pending[key] = self._threads.submit(self._lookup, host, port)
                started = True
        if started:  # outside the lock: the callback takes it, and may run right here
            future.add_done_callback(functools.partial(self._finished, key))
        # Shielded: a waiter that gives up (its deadline) must not cancel the others' lookup.
        return await asyncio.shield(asyncio.wrap_future(future))

    def _finished(
        self, key: tuple[str, int], future: concurrent.futures.Future[Sequence[Address]]
    ) -> None:
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]
            if future.cancelled() or future.exception() is not None or self._ttl <= 0:
                return
            if len(self._cache) >= 4096:  # names come from the config: a safety cap
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self._ttl, future.result())


_default_resolver: ThreadedResolver | None = None


def default_resolver() -> ThreadedResolver:
    """The process's resolver (one set of lookup threads, however many transports)."""
    global _default_resolver
    if _default_resolver is None:
        _default_resolver = ThreadedResolver()
    return _default_resolver


def ip_literal(host: str, port: int) -> list[Address] | None:
    """The address of an IP literal (no lookup), or None for a host name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        sockaddr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
    return None


async def _open_socket(
    loop: asyncio.AbstractEventLoop, addresses: Sequence[Address]
) -> socket.socket:
    """A socket connected to the first of `addresses` that accepts (as asyncio's
    create_connection does with the addresses it resolved, and with its error texts)."""
    errors: list[OSError] = []
    for family, kind, proto, _, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if not errors:
        raise OSError("the name resolved to no address")
    if len({str(exc) for exc in errors}) == 1:
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its h11 state machine."""

    def __init__(self, origin: Origin, pool: LeanTransport) -> None:
        self.origin = origin
        self.pool = pool
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.received = 0  # bytes received since the current request was sent
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: BaseException | None = None
        self.problem: str | None = None  # a bound the server broke: the exchange fails with it
        self.doubtful = False  # the exchange ended, but the connection is not to be reused
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self._unread = 0  # bytes received since the reader last asked for an event
        # Measuring the response head as it arrives (see `data_received`).
        self._measuring = False
        self._head_lines = 0
        self._head_bytes = 0
        self.expiry: asyncio.TimerHandle | None = None

    # asyncio.Protocol callbacks: they only feed h11 and wake the reader.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._eof or self.problem is not None:
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
        if self._measuring:
            # Until the final head is parsed, count what arrives (an overestimate: a body may
            # come with the head); past a bound, measure what h11 holds exactly, before h11
            # spends its time parsing a huge head.
            self._head_lines += data.count(b"\n")
            self._head_bytes += len(data)
            if self._head_lines > MAX_HEADERS + 1 or self._head_bytes > MAX_HEAD_BYTES:
                self._measure_head()
        if self._unread > READ_HIGH_WATER and self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def _measure_head(self) -> None:
        unparsed = self.h11.trailing_data[0]
        problem, complete = check_heads(unparsed)
        if problem is not None:
            self.problem = problem
            self.close()
        elif complete:
            self._measuring = False  # the final head is within bounds: nothing more to count
        else:
            # Within bounds: the counts included heads h11 has parsed since (1xx answers).
            self._head_lines = unparsed.count(b"\n")
            self._head_bytes = len(unparsed)

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
    def start(self) -> None:
        """A request is about to be sent: reset the per-exchange state."""
        self.received = 0
        self._measuring = True
        self._head_lines = 0
        self._head_bytes = 0

    def head_done(self) -> None:
        """The final response head is parsed: what follows is body, not to be counted."""
        self._measuring = False

    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("connection closed by the server")
        if data:
            self.transport.write(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        """The next event from the server, waiting for data as needed (never NEED_DATA)."""
        while True:
            if self.problem is not None:
                raise httpx.RemoteProtocolError(self.problem)
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


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 over asyncio with h11, keep-alive pool per origin."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        resolver: Resolver | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._expiry = keepalive_expiry
        self._resolver: Resolver = resolver or default_resolver()
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False  # aclose() was called: no retry may open a connection

    @property
    def connections(self) -> int:
        """Connections open now (idle or in use)."""
        return len(self._open)

    def _tls(self, request: httpx.Request) -> ssl.SSLContext:
        """The TLS context of an https request: its own, else the transport's."""
        context = request.extensions.get(SSL_CONTEXT)
        if context is None:
            if self._ssl is None:
                # Made once: building a context loads the CA bundle (100+ ms of CPU).
                self._ssl = ssl.create_default_context()
            return self._ssl
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"{SSL_CONTEXT} must be an ssl.SSLContext, not {type(context)}")
        return context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        tls = self._tls(request) if scheme == b"https" else None
        origin: Origin = (scheme, url.raw_host, port, tls)
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
            # A kept-alive connection: if what comes back is no answer to this request (see
            # the module docstring), a GET or HEAD is asked once more on a new connection.
            retryable = request.method in RETRYABLE
            try:
                response = await self._exchange(conn, head, body, on_sent)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if not (
                    retryable
                    and not self._closed
                    and no_answer_to_us(conn.received, conn.h11.trailing_data[0])
                ):
                    raise
            else:
                if response.status_code != 408 or not retryable or self._closed:
                    return response
                conn.close()  # its answer (the 408's body) is never read
        conn = await self._connect(origin, request)
        return await self._exchange(conn, head, body, on_sent)

    async def _exchange(
        self,
        conn: _Connection,
        head: h11.Request,
        body: bytes,
        on_sent: Callable[[], object] | None = None,
    ) -> httpx.Response:
        try:
            conn.start()
            conn.send(head)
            if body:
                conn.send(h11.Data(data=body))
            conn.send(h11.EndOfMessage())
            if on_sent is not None:
                on_sent()
            informational = 0
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):  # e.g. 100 Continue
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")
                informational += 1
                if informational > MAX_INFORMATIONAL:
                    message = f"over {MAX_INFORMATIONAL} informational responses"
                    raise httpx.RemoteProtocolError(message)
        except h11.LocalProtocolError as exc:
            conn.close()
            raise httpx.LocalProtocolError(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        conn.head_done()
        if event.status_code == 204 and announces_missing_body(204, event.headers):
            conn.doubtful = True
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(self, conn),
            extensions={"http_version": b"HTTP/" + event.http_version},
        )

    def _take(self, origin: Origin) -> _Connection | None:
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

    async def _connect(self, origin: Origin, request: httpx.Request) -> _Connection:
        _, host, port, tls = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        try:
            addresses = ip_literal(hostname, port) or await self._resolve(request, hostname, port)
            sock = await _open_socket(loop, addresses)
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        conn = _Connection(origin, self)
        try:
            # With TLS, the certificate is checked against the URL's host name, sent as SNI.
            await loop.create_connection(
                lambda: conn, sock=sock, ssl=tls, server_hostname=hostname if tls else None
            )
        except OSError as exc:
            sock.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            sock.close()
            raise
        if not conn.closed:
            self._open.add(conn)
        return conn

    async def _resolve(self, request: httpx.Request, hostname: str, port: int) -> Sequence[Address]:
        """The addresses of a host name. While the lookup runs, the request carries the
        RESOLVING extension; it stays if the caller's deadline cancels the wait."""
        request.extensions[RESOLVING] = True
        try:
            addresses = await self._resolver(hostname, port)
        except Exception:
            del request.extensions[RESOLVING]
            raise
        del request.extensions[RESOLVING]
        return addresses

    def release(self, conn: _Connection) -> None:
        """Return a connection whose exchange is complete to the idle pool, or close it."""
        # Not both DONE (e.g. "Connection: close") raises: the connection is not reusable.
        with contextlib.suppress(h11.LocalProtocolError):
            conn.h11.start_next_cycle()
        # Bytes after the answer's end (a 204 sent with a body...) would be read as the next
        # request's answer: such a connection is closed, like one in doubt.
        if not conn.reusable or conn.doubtful or conn.h11.trailing_data[0]:
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
