"""The lean HTTP/1.1 transport (`postdeploy.transport.LeanTransport`) against real servers.

The transport is used the way the Prober uses it: `handle_async_request(httpx.Request(...))`,
then the body is read from `response.stream`, which is closed with `aclose()`. Each test runs
a small asyncio HTTP/1.1 server on 127.0.0.1 (port 0) that keeps connections alive, counts
the connections it accepts and the requests each one carries, and can misbehave on demand
(close an idle connection, drop or reset a request, hang, answer with garbage...), chosen by
the request's path. The server records what happens, and tests wait for those records (a
connection accepted, a request read, the client's end-of-stream seen) with generous
deadlines that are only reached when something is broken. Where the only signal is the
transport's own state (`transport.connections`), `eventually()` polls it briefly. The
`transport` fixture (tests/conftest.py) is a LeanTransport whose idle connections never
expire.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from postdeploy.transport import LeanTransport
from support.aio import Conn, KeepAliveServer, eventually, read_body
from support.tls import Cert, self_signed

DEADLINE_S = 20.0  # only reached when something is broken
CANCEL_AFTER_S = 0.2  # the caller's timeout in the cancellation tests
EXPIRY_S = 0.2  # keep-alive expiry in the expiry tests
# Keep-alive expiry everywhere else: longer than any deadline, so an expiry can never tidy up
# after a transport that failed to notice a closed connection by itself.
NO_EXPIRY_S = 3600.0
# The large body, streamed by the server as fast as it can: far more than the kernel's buffers
# between us can hold once we stop reading (a few MiB), so the server must block.
BIG = 32 * 1024 * 1024
BIG_CHUNK = b"x" * 65536  # one object, written again and again: the server allocates nothing
PEAK_LIMIT = 2 * 1024 * 1024  # our peak Python allocation once the first chunk is taken


# --------------------------------------------------------------------------------------------
# A keep-alive HTTP/1.1 test server. Each connection reads request after request; the path
# of each request picks a behaviour from ROUTES (the default answers 200 and stays open).
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Seen:
    """One request as the server read it."""

    server: Server
    conn: Conn
    number: int  # its position on its connection, from 1
    method: str
    target: str
    headers: list[tuple[str, str]]  # in order, names as sent
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def header(self, name: str) -> list[str]:
        """Every value of the header `name` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


# A route writes its answer and says whether the connection stays open for another request.
Route = Callable[[Seen], Awaitable[bool]]


@dataclass(eq=False)
class Server(KeepAliveServer):
    """What a running test server has seen; `wait_until` blocks on its events."""

    requests: list[Seen] = field(default_factory=list)
    sent: int = 0  # body bytes written by the streaming route
    # "fin" or "rst": the next request that arrives on an already used connection is read and
    # then the connection is closed (or reset) without an answer, exactly as if the server's
    # idle timeout had fired while the request was on its way.
    drop_next_reused: str | None = None

    def close(self, conn: Conn) -> None:
        """Close `conn` from the server's side (e.g. an idle keep-alive connection)."""
        conn.server_closed = True
        conn.writer.close()
        self.notify()

    async def push(self, conn: Conn, data: bytes) -> None:
        """Send `data` on `conn` now, whether or not a request is waiting for it."""
        await send(conn, data)

    def seen(self) -> list[tuple[int, int, str, str]]:
        """(connection, position on it, method, target) of every request, in arrival order."""
        return [(r.conn.index, r.number, r.method, r.target) for r in self.requests]


def head(
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    *,
    length: int | None = 0,
    version: str = "1.1",
) -> bytes:
    """A response head; `length=None` leaves Content-Length out."""
    lines = [f"HTTP/{version} {status} Whatever"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ok_body(seen: Seen) -> bytes:
    """The default answer's body: names the request and where it arrived."""
    return f"{seen.method} {seen.target} conn={seen.conn.index} n={seen.number}".encode()


async def send(conn: Conn, data: bytes) -> None:
    conn.writer.write(data)
    await conn.writer.drain()


async def until_client_closes(conn: Conn) -> bool:
    """Read (and ignore) whatever comes until the client closes; the connection is over."""
    try:
        while await conn.reader.read(65536):
            pass
    except OSError:
        pass  # a reset: the client is gone all the same
    conn.client_closed = True
    return False


async def answer_ok(seen: Seen) -> bool:
    """200 with `ok_body`; stays open."""
    body = ok_body(seen)
    await send(seen.conn, head(200, length=len(body)) + body)
    return True


async def answer_head(seen: Seen) -> bool:
    """What a HEAD gets: the length the body would have, and no body."""
    await send(seen.conn, head(200, length=12345))
    return True


async def close_after_answer(seen: Seen) -> bool:
    """200 with `Connection: close`, then the server closes."""
    body = ok_body(seen)
    await send(seen.conn, head(200, [("Connection", "close")], length=len(body)) + body)
    return False


async def close_announced_but_kept_open(seen: Seen) -> bool:
    """200 with `Connection: close`, but the server leaves it to the client to close."""
    body = ok_body(seen)
    await send(seen.conn, head(200, [("Connection", "close")], length=len(body)) + body)
    return await until_client_closes(seen.conn)


async def http10_answer(seen: Seen) -> bool:
    """An HTTP/1.0 answer (not persistent by default); the server waits for the client."""
    body = ok_body(seen)
    await send(seen.conn, head(200, length=len(body), version="1.0") + body)
    return await until_client_closes(seen.conn)


async def continue_then_chunked(seen: Seen) -> bool:
    """100 Continue and 103 Early Hints, then a 200 whose body comes in chunks; stays open."""
    await send(seen.conn, b"HTTP/1.1 100 Continue\r\n\r\n")
    await send(seen.conn, b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    await send(seen.conn, head(200, [("Transfer-Encoding", "chunked")], length=None))
    for piece in (b"hello", b", chunked", b" world"):
        await send(seen.conn, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    await send(seen.conn, b"0\r\n\r\n")
    return True


async def big_body(seen: Seen) -> bool:
    """BIG bytes of body, written as fast as the client takes them (until it hangs up)."""
    conn = seen.conn
    await send(conn, head(200, length=BIG))
    while seen.server.sent < BIG:
        await send(conn, BIG_CHUNK)
        seen.server.sent += len(BIG_CHUNK)
        seen.server.notify()
    return True


async def hang(seen: Seen) -> bool:
    """Never answer; the connection ends when the client closes it."""
    return await until_client_closes(seen.conn)


async def partial_body(seen: Seen) -> bool:
    """A head announcing 10000 bytes and 1000 of them, then silence until the client leaves."""
    await send(seen.conn, head(200, length=10000) + b"p" * 1000)
    return await until_client_closes(seen.conn)


async def drop(seen: Seen) -> bool:
    """Read the request, then close without a word (a clean FIN)."""
    return False


async def reset(seen: Seen) -> bool:
    """Read the request, then reset the connection (SO_LINGER 0 turns close into an RST)."""
    sock = seen.conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    seen.conn.writer.transport.abort()
    return False


GARBAGE = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"


async def garbage_then_hang(seen: Seen) -> bool:
    await send(seen.conn, GARBAGE)
    return await until_client_closes(seen.conn)


async def garbage_then_close(seen: Seen) -> bool:
    await send(seen.conn, GARBAGE)
    return False


async def truncated_body(seen: Seen) -> bool:
    """Announce 100 bytes, send 10, close."""
    await send(seen.conn, head(200, length=100) + b"t" * 10)
    return False


async def barrier(seen: Seen) -> bool:
    """`/barrier/N/...`: answer only once N requests for this very target have arrived, so
    the N requests are provably in flight at the same time."""
    count = int(seen.path.split("/")[2])
    server = seen.server
    await server.wait_until(lambda: sum(r.target == seen.target for r in server.requests) >= count)
    return await answer_ok(seen)


ROUTES: dict[str, Route] = {
    "/head": answer_head,
    "/close": close_after_answer,
    "/close-kept-open": close_announced_but_kept_open,
    "/http10": http10_answer,
    "/continue": continue_then_chunked,
    "/big": big_body,
    "/hang": hang,
    "/partial": partial_body,
    "/drop": drop,
    "/reset": reset,
    "/garbage": garbage_then_hang,
    "/garbage-close": garbage_then_close,
    "/truncated": truncated_body,
}


def route_for(path: str) -> Route:
    if path.startswith("/barrier/"):
        return barrier
    return ROUTES.get(path, answer_ok)


async def read_request(server: Server, conn: Conn) -> Seen | None:
    """The next request on `conn`, or None once the connection is over."""
    try:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, OSError):
        if not conn.server_closed:
            conn.client_closed = True
        return None
    request_line, *lines = raw.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = []
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    body = await conn.reader.readexactly(int(lengths[0])) if lengths else b""
    conn.requests += 1
    return Seen(server, conn, conn.requests, method, target, headers, body)


async def converse(server: Server, conn: Conn) -> None:
    """Serve requests on one connection until a route or either side ends it."""
    try:
        while (seen := await read_request(server, conn)) is not None:
            server.requests.append(seen)
            server.notify()
            route = route_for(seen.path)
            if server.drop_next_reused and seen.number > 1:
                route = reset if server.drop_next_reused == "rst" else drop
                server.drop_next_reused = None
            if not await route(seen):
                return
    except (OSError, asyncio.IncompleteReadError):
        conn.client_closed = True  # a write or read failed: the client went away


@asynccontextmanager
async def serve(*, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """Run a server on 127.0.0.1:0 for the duration of the block (HTTPS with `tls`)."""
    server = Server()
    async with server.running(lambda conn: converse(server, conn), tls=tls):
        yield server


# --------------------------------------------------------------------------------------------
# The client side, used as the Prober uses the transport
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes


async def fetch(
    transport: LeanTransport,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> Reply:
    """One request through the transport, body read to its end, stream closed."""
    request = httpx.Request(method, url, headers=headers, content=content)
    return await fetch_request(transport, request)


async def fetch_request(transport: LeanTransport, request: httpx.Request) -> Reply:
    response = await transport.handle_async_request(request)
    return Reply(response.status_code, response.headers, await read_body(response))


async def open_body(transport: LeanTransport, url: str) -> httpx.AsyncByteStream:
    """GET `url`, which must answer 200; its body's stream, unread (the test closes it)."""
    response = await transport.handle_async_request(httpx.Request("GET", url))
    assert response.status_code == 200
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    return stream


def ok(method: str, target: str, conn: int, number: int) -> bytes:
    """The body `answer_ok` sends for this request on that connection."""
    return f"{method} {target} conn={conn} n={number}".encode()


async def fetch_after(transport: LeanTransport, server: Server, on_conn: int, number: int) -> None:
    """A GET /after, which must arrive on connection `on_conn` as its request `number`:
    where a test checks which connection the transport chose for the next request."""
    reply = await fetch(transport, "GET", server.url("/after"))
    assert reply.body == ok("GET", "/after", on_conn, number)


# --------------------------------------------------------------------------------------------
# Keep-alive and the pool
# --------------------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(transport: LeanTransport) -> None:
    """20 GETs one after the other travel on one connection, each answer intact."""
    async with serve() as server:
        for i in range(20):
            reply = await fetch(transport, "GET", server.url(f"/item/{i}?q={i}"))
            assert reply.status == 200
            assert reply.body == ok("GET", f"/item/{i}?q={i}", 0, i + 1)
            assert transport.connections == 1
        assert len(server.conns) == 1
        assert server.conns[0].requests == 20
        assert not server.conns[0].finished


async def test_head_answer_has_no_body_and_keeps_the_connection(
    transport: LeanTransport,
) -> None:
    """A HEAD answer announces a length but has no body: nothing is waited for, and the
    connection carries the next request."""
    async with serve() as server:
        reply = await fetch(transport, "HEAD", server.url("/head"))
        assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"", "12345")
        await fetch_after(transport, server, on_conn=0, number=2)
        assert len(server.conns) == 1


async def test_concurrent_requests_then_reuse_of_every_connection(
    transport: LeanTransport,
) -> None:
    """10 requests in flight at once need (and get) 10 connections; afterwards 10 sequential
    requests and then 10 concurrent ones are served by those same 10 connections."""
    async with serve() as server:
        # The server answers none of them until all 10 have arrived: had the transport
        # serialised them, this would never complete.
        async with asyncio.timeout(DEADLINE_S):
            replies = await asyncio.gather(
                *(fetch(transport, "GET", server.url("/barrier/10/first")) for _ in range(10))
            )
        assert [reply.status for reply in replies] == [200] * 10
        assert len(server.conns) == 10
        assert transport.connections == 10

        for i in range(10):
            reply = await fetch(transport, "GET", server.url(f"/seq/{i}"))
            assert reply.status == 200
        # One after the other, they all took the most recently used connection.
        assert len({r.conn.index for r in server.requests if r.path.startswith("/seq/")}) == 1
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.gather(
                *(fetch(transport, "GET", server.url("/barrier/10/again")) for _ in range(10))
            )
        assert len(server.conns) == 10  # not one more accept
        assert transport.connections == 10
        # The second burst found all 10 idle connections in the pool.
        again = {r.conn.index for r in server.requests if r.target == "/barrier/10/again"}
        assert again == set(range(10))


async def test_idle_connection_closed_by_server_is_noticed(transport: LeanTransport) -> None:
    """The server closes an idle kept-alive connection: the transport notices, drops it, and
    the next request (even a POST, which is never retried) goes on a new connection."""
    async with serve() as server:
        await fetch(transport, "GET", server.url("/first"))
        server.close(server.conns[0])
        await eventually(lambda: transport.connections == 0, "the closed connection is dropped")
        reply = await fetch(transport, "POST", server.url("/second"), content=b"data")
        assert reply.body == ok("POST", "/second", 1, 1)
        assert server.seen() == [(0, 1, "GET", "/first"), (1, 1, "POST", "/second")]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_stale_connection_is_retried_for_get(transport: LeanTransport, how: str) -> None:
    """The race the retry exists for: the server's idle timeout closes the connection just as
    our next request arrives on it (the server reads it, then closes or resets). A GET is
    then asked again, once, on a new connection, and succeeds."""
    async with serve() as server:
        await fetch(transport, "GET", server.url("/first"))
        server.drop_next_reused = how
        reply = await fetch(transport, "GET", server.url("/second"))
        assert reply.status == 200
        assert reply.body == ok("GET", "/second", 1, 1)
        assert server.seen() == [
            (0, 1, "GET", "/first"),
            (0, 2, "GET", "/second"),  # dropped without an answer
            (1, 1, "GET", "/second"),  # the retry
        ]
        await eventually(lambda: transport.connections == 1, "the dead connection is dropped")


@pytest.mark.parametrize(
    ("how", "error"),
    [("fin", httpx.RemoteProtocolError), ("rst", httpx.ReadError)],
)
async def test_stale_connection_is_not_retried_for_post(
    transport: LeanTransport, how: str, error: type[httpx.TransportError]
) -> None:
    """The same race with a POST: the server may have acted on it, so it is not sent again;
    the caller gets a transport error."""
    async with serve() as server:
        await fetch(transport, "GET", server.url("/first"))
        server.drop_next_reused = how
        with pytest.raises(httpx.TransportError) as info:
            await fetch(transport, "POST", server.url("/submit"), content=b"once")
        assert type(info.value) is error
        if how == "fin":
            assert str(info.value) == "Server disconnected without sending a response."
        assert server.seen() == [(0, 1, "GET", "/first"), (0, 2, "POST", "/submit")]
        assert len(server.conns) == 1  # no second connection: no retry
        await eventually(lambda: transport.connections == 0, "the dead connection is dropped")


async def test_bytes_on_an_idle_connection_are_no_answer(transport: LeanTransport) -> None:
    """Some servers send "408 Request Timeout" on an idle connection before closing it.
    Until the close arrives, the connection looks reusable; but that 408 answers nothing we
    asked, so the connection must not carry the next request (httpcore checks an idle
    connection is not readable before reusing it)."""
    async with serve() as server, serve() as other:
        await fetch(transport, "GET", server.url("/first"))
        timeout_answer = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
        await server.push(server.conns[0], timeout_answer)
        # A whole exchange with another server: the event loop has read those bytes by now.
        await fetch(transport, "GET", other.url("/elsewhere"))
        reply = await fetch(transport, "GET", server.url("/second"))
        assert reply.status == 200
        assert reply.body == ok("GET", "/second", 1, 1)


@pytest.mark.parametrize("path", ["/close", "/close-kept-open", "/http10"])
async def test_non_persistent_answers_are_not_reused(transport: LeanTransport, path: str) -> None:
    """`Connection: close` (whether or not the server then closes) and HTTP/1.0 answers end
    their connection: the next request opens a new one, and none is left open."""
    async with serve() as server:
        first = await fetch(transport, "GET", server.url(path))
        assert first.body == ok("GET", path, 0, 1)
        await server.wait_until(lambda: server.conns[0].finished)
        if path != "/close":
            assert server.conns[0].client_closed  # we closed it, the server did not
        await eventually(lambda: transport.connections == 0, "no connection left open")

        second = await fetch(transport, "GET", server.url(path))
        assert second.body == ok("GET", path, 1, 1)
        assert len(server.conns) == 2
        await server.wait_until(lambda: server.conns[1].finished)
        await eventually(lambda: transport.connections == 0, "no connection left open")


async def test_idle_connection_expires() -> None:
    """An idle connection is closed by us after `keepalive_expiry`; the next request opens a
    new one."""
    transport = LeanTransport(keepalive_expiry=EXPIRY_S)
    try:
        async with serve() as server:
            await fetch(transport, "GET", server.url("/first"))
            await server.wait_until(lambda: server.conns[0].client_closed)
            await eventually(lambda: transport.connections == 0, "the expired one is dropped")
            reply = await fetch(transport, "GET", server.url("/second"))
            assert reply.body == ok("GET", "/second", 1, 1)
    finally:
        await transport.aclose()


async def test_expiry_spares_a_connection_in_use() -> None:
    """A connection taken from the pool no longer expires: one busy for longer than the
    expiry (measured by another connection expiring meanwhile) answers normally."""
    transport = LeanTransport(keepalive_expiry=EXPIRY_S)
    try:
        async with serve() as server:
            await fetch(transport, "GET", server.url("/warm"))  # conn 0 goes idle, timer set
            busy = asyncio.ensure_future(fetch(transport, "GET", server.url("/barrier/2/slow")))
            await server.wait_until(lambda: len(server.requests) == 2)
            assert server.requests[1].conn.index == 0  # taken from the pool
            # Conn 1 goes idle after conn 0's timer was set, and expires after it would have.
            await fetch(transport, "GET", server.url("/other"))
            assert server.requests[2].conn.index == 1
            await server.wait_until(lambda: server.conns[1].client_closed)
            # Conn 1 is gone on our side too (we closed it); conn 0, busy, is still open.
            assert transport.connections == 1
            # Now let conn 0 answer.
            await fetch(transport, "GET", server.url("/barrier/2/slow"))
            reply = await asyncio.wait_for(busy, DEADLINE_S)
            assert reply.body == ok("GET", "/barrier/2/slow", 0, 2)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("path", ["/hang", "/partial"])
async def test_cancelled_request_closes_its_connection(transport: LeanTransport, path: str) -> None:
    """A request cancelled by its caller's timeout (waiting for the head, or in the middle of
    the body) closes its connection, which is never reused."""
    async with serve() as server:
        await fetch(transport, "GET", server.url("/warm"))
        with anyio.move_on_after(CANCEL_AFTER_S) as scope:
            await fetch(transport, "GET", server.url(path))
        assert scope.cancelled_caught
        assert server.requests[1].conn.index == 0  # it had reused the warm connection
        await server.wait_until(lambda: server.conns[0].client_closed)
        await fetch_after(transport, server, on_conn=1, number=1)
        await eventually(lambda: transport.connections == 1, "the cancelled one is dropped")


@pytest.mark.parametrize("read_first_chunk", [True, False], ids=["partly-read", "unread"])
async def test_body_closed_before_its_end_closes_the_connection(
    transport: LeanTransport, read_first_chunk: bool
) -> None:
    """A body closed before its end leaves the connection in an unknown state: it is closed,
    never reused."""
    async with serve() as server:
        stream = await open_body(transport, server.url("/partial"))
        chunks = aiter(stream)  # held: an abandoned iterator, once finalised, would close
        if read_first_chunk:
            chunk = await anext(chunks)
            assert chunk == b"p" * len(chunk)
        await stream.aclose()
        await server.wait_until(lambda: server.conns[0].client_closed)
        await fetch_after(transport, server, on_conn=1, number=1)
        assert server.conns[0].requests == 1


async def test_informational_answers_are_skipped_and_chunks_joined(
    transport: LeanTransport,
) -> None:
    """100 Continue and 103 Early Hints before the 200 are skipped; a chunked body comes out
    whole, and its connection is reused afterwards."""
    async with serve() as server:
        reply = await fetch(transport, "GET", server.url("/continue"))
        assert reply.status == 200
        assert reply.headers["transfer-encoding"] == "chunked"
        assert "link" not in reply.headers  # the 103's header is not the answer's
        assert reply.body == b"hello, chunked world"
        await fetch_after(transport, server, on_conn=0, number=2)
        assert len(server.conns) == 1


async def test_large_fast_body_is_not_buffered_ahead_of_the_reader(
    transport: LeanTransport,
) -> None:
    """A server pushing 32 MiB as fast as it can, to a reader that takes 64 KiB and stops:
    reading pauses at READ_HIGH_WATER, so our memory stays bounded (the rest waits in the
    kernel's buffers and the server blocks), and closing the body ends it all."""
    async with serve() as server:
        tracemalloc.start()
        try:
            stream = await open_body(transport, server.url("/big"))
            # Take 64 KiB, holding the iterator: an `async for` left with `break` would let
            # the abandoned generator be finalised, which closes the connection.
            chunks = aiter(stream)
            taken = 0
            while taken < 65536:
                taken += len(await anext(chunks))
            # From here on we hold the body unread while the server pushes all it can: it
            # stops once every buffer between us is full (or, had reading not paused, once
            # the whole body sits in our memory).
            tracemalloc.reset_peak()
            conn = server.conns[0]
            await wait_for_stall(lambda: server.sent, BIG)
            _, peak = tracemalloc.get_traced_memory()
            await stream.aclose()
        finally:
            tracemalloc.stop()
        assert server.sent < BIG, "the whole body was taken in: reading never paused"
        assert peak < PEAK_LIMIT, f"peak allocation {peak} bytes"
        await server.wait_until(lambda: conn.finished)  # its write failed once we hung up
        assert conn.client_closed
        await eventually(lambda: transport.connections == 0, "the big body's connection ends")


async def wait_for_stall(progress: Callable[[], int], total: int) -> None:
    """Wait until `progress()` reaches `total`, or stops moving for 5 polls in a row (the
    server is blocked). A stall misjudged on a slow machine only ends the wait early."""
    still = 0
    last = -1
    async with asyncio.timeout(DEADLINE_S):
        while progress() < total and still < 5:
            now = progress()
            still = still + 1 if now == last else 0
            last = now
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------
# Errors, as httpx exceptions
# --------------------------------------------------------------------------------------------


async def test_refused_port_is_a_connect_error(transport: LeanTransport) -> None:
    """Nothing listening: httpx.ConnectError, and nothing left open."""
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await fetch(transport, "GET", f"http://127.0.0.1:{port}/")
    assert transport.connections == 0


async def test_disconnect_before_answer_on_a_fresh_connection(transport: LeanTransport) -> None:
    """A server that reads the request and closes: httpcore's exact wording, and no retry (a
    fresh connection cannot have been a stale one)."""
    async with serve() as server:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await fetch(transport, "GET", server.url("/drop"))
        assert str(info.value) == "Server disconnected without sending a response."
        assert len(server.conns) == 1
        assert len(server.requests) == 1


async def test_reset_on_a_fresh_connection_is_a_read_error(transport: LeanTransport) -> None:
    async with serve() as server:
        with pytest.raises(httpx.ReadError):
            await fetch(transport, "GET", server.url("/reset"))
        assert len(server.conns) == 1


@pytest.mark.parametrize("path", ["/garbage", "/garbage-close"])
@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
async def test_garbage_status_line_is_a_protocol_error(
    transport: LeanTransport, path: str, reused: bool
) -> None:
    """Something that is not HTTP: httpx.RemoteProtocolError naming the bad line (whether the
    server then waits or closes), the connection is closed, and the request is not sent
    again, even on a reused connection (the server did answer, however badly)."""
    async with serve() as server:
        if reused:
            await fetch(transport, "GET", server.url("/warm"))
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await fetch(transport, "GET", server.url(path))
        assert "illegal status line" in str(info.value)
        assert "SSH-2.0-OpenSSH_9.6" in str(info.value)
        assert len(server.conns) == 1
        assert [r.target for r in server.requests] == ["/warm"] * reused + [path]
        await server.wait_until(lambda: server.conns[0].finished)
        await eventually(lambda: transport.connections == 0, "the connection is dropped")


async def test_truncated_body_is_a_protocol_error(transport: LeanTransport) -> None:
    """A body shorter than its Content-Length: the error comes while reading the body."""
    async with serve() as server:
        stream = await open_body(transport, server.url("/truncated"))
        got = bytearray()
        with pytest.raises(httpx.RemoteProtocolError) as info:
            async for chunk in stream:
                got += chunk
        await stream.aclose()
        assert bytes(got) == b"t" * 10
        assert "received 10 bytes, expected 100" in str(info.value)
        await eventually(lambda: transport.connections == 0, "the connection is dropped")


async def test_unsupported_scheme(transport: LeanTransport) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await fetch(transport, "GET", "ftp://127.0.0.1/file")
    assert transport.connections == 0


async def test_header_h11_refuses_is_an_httpx_error(transport: LeanTransport) -> None:
    """Whatever goes wrong comes out as an httpx exception (the Prober catches those)."""
    async with serve() as server:
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(transport, "GET", server.url("/x"), headers={"X-Bad": "a\nb"})
        assert server.requests == []


# --------------------------------------------------------------------------------------------
# What the server receives
# --------------------------------------------------------------------------------------------


async def test_host_header_and_request_arrive_intact(transport: LeanTransport) -> None:
    """Host is the URL's netloc (with its port) unless the request names one, exactly one
    Host is sent, and headers (names as written, repeated ones in order), the query and a
    POST body arrive as given, with the Content-Length httpx.Request set."""
    async with serve() as server:
        netloc = f"127.0.0.1:{server.port}"
        await fetch(transport, "GET", server.url("/plain"))

        await fetch(transport, "GET", server.url("/named"), headers={"Host": "example.test"})

        # A request without Host (httpx.Request always adds one; take it away): the transport
        # supplies the netloc itself.
        bare = httpx.Request("GET", server.url("/bare"))
        del bare.headers["Host"]
        await fetch_request(transport, bare)

        body = bytes(range(256)) * 400  # 100 KiB, every byte value
        post = httpx.Request(
            "POST",
            server.url("/submit?a=1&b=two%20words"),
            headers=[("X-Trace", "abc 123"), ("X-Multi", "one"), ("X-Multi", "two")],
            content=body,
        )
        reply = await fetch_request(transport, post)
        assert reply.status == 200

        plain, named, bare_seen, posted = server.requests
        assert plain.header("host") == [netloc]
        assert named.header("host") == ["example.test"]
        assert bare_seen.header("host") == [netloc]
        assert posted.header("host") == [netloc]
        assert (posted.method, posted.target) == ("POST", "/submit?a=1&b=two%20words")
        assert posted.header("X-Trace") == ["abc 123"]
        assert posted.header("x-multi") == ["one", "two"]
        assert ("X-Trace", "abc 123") in posted.headers  # the name's case as written
        assert posted.header("content-length") == [str(len(body))]
        assert posted.body == body
        assert plain.body == b""
        assert {r.conn.index for r in server.requests} == {0}  # all on one connection


async def test_works_under_an_httpx_client() -> None:
    """Plugged into httpx.AsyncClient, the transport serves the usual API, with keep-alive."""
    async with serve() as server, httpx.AsyncClient(transport=LeanTransport()) as client:
        first = await client.get(server.url("/a"))
        second = await client.post(server.url("/b"), content=b"xyz")
        assert (first.status_code, first.content) == (200, ok("GET", "/a", 0, 1))
        assert (second.status_code, second.content) == (200, ok("POST", "/b", 0, 2))
        assert server.requests[1].body == b"xyz"
        assert len(server.conns) == 1


async def test_aclose_closes_every_connection() -> None:
    """aclose() closes idle connections and busy ones alike."""
    transport = LeanTransport(keepalive_expiry=NO_EXPIRY_S)
    async with serve() as server:
        await asyncio.gather(
            *(fetch(transport, "GET", server.url("/barrier/3/idle")) for _ in range(3))
        )
        busy = asyncio.ensure_future(fetch(transport, "GET", server.url("/hang")))
        try:
            await server.wait_until(lambda: len(server.requests) == 4)
            assert server.requests[3].number == 2  # the hanging request reused an idle one
            assert transport.connections == 3
            await transport.aclose()
            assert transport.connections == 0
            first_three = server.conns[:3]
            await server.wait_until(lambda: all(conn.client_closed for conn in first_three))
        finally:
            busy.cancel()
            await asyncio.gather(busy, return_exceptions=True)
            await transport.aclose()


async def test_aclose_fails_requests_in_flight() -> None:
    """A request waiting on a connection aclose() closes fails at once, and no connection is
    opened after aclose()."""
    transport = LeanTransport(keepalive_expiry=NO_EXPIRY_S)
    async with serve() as server:
        await fetch(transport, "GET", server.url("/warm"))
        busy = asyncio.ensure_future(fetch(transport, "GET", server.url("/hang")))
        try:
            await server.wait_until(lambda: len(server.requests) == 2)
            await transport.aclose()
            # Either the request fails (right) or a new connection arrives (wrong): both are
            # events, so a wrong transport fails this at once rather than at a deadline.
            await server.wait_until(lambda: len(server.conns) > 1 or busy.done())
            assert busy.done()
            assert isinstance(busy.exception(), httpx.TransportError)
            assert len(server.conns) == 1
            assert transport.connections == 0
        finally:
            busy.cancel()
            await asyncio.gather(busy, return_exceptions=True)
            await transport.aclose()


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 (skips without openssl)."""
    return self_signed(tmp_path_factory.mktemp("tls"), "127.0.0.1", "IP:127.0.0.1")


async def test_tls_with_keep_alive(cert: Cert) -> None:
    """HTTPS through a context trusting the server's certificate, kept alive like HTTP; an
    idle TLS connection the server closes is noticed too."""
    transport = LeanTransport(ssl_context=cert.client_context(), keepalive_expiry=NO_EXPIRY_S)
    try:
        async with serve(tls=cert.server_context()) as server:
            for i in range(5):
                reply = await fetch(transport, "GET", server.url(f"/secure/{i}"))
                assert reply.body == ok("GET", f"/secure/{i}", 0, i + 1)
            assert len(server.conns) == 1
            assert transport.connections == 1

            server.close(server.conns[0])
            await eventually(lambda: transport.connections == 0, "the closed one is dropped")
            await fetch_after(transport, server, on_conn=1, number=1)

            await transport.aclose()
            await server.wait_until(lambda: server.conns[1].client_closed)
    finally:
        await transport.aclose()


async def test_tls_untrusted_certificate_is_a_connect_error(cert: Cert) -> None:
    """The default context does not trust a self-signed certificate."""
    transport = LeanTransport()
    try:
        async with serve(tls=cert.server_context()) as server:
            with pytest.raises(httpx.ConnectError) as info:
                await fetch(transport, "GET", server.url("/"))
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
            assert server.requests == []
            assert transport.connections == 0
    finally:
        await transport.aclose()
