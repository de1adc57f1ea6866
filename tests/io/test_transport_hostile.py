"""The lean transport against servers that break HTTP/1.1 in ways meant to hurt a client.

Each scenario is a keep-alive server on 127.0.0.1 (port 0) whose answers are raw bytes chosen
by the request's path and its position on its connection: an answer that carries bytes after
its end (a 204, 304 or HEAD answer with a body), a "408 Request Timeout" that crosses our
request on a kept-alive connection, a head with 10,000 header lines. What the tests check is
what the next request (or the request itself) gets: the right answer, on the connection it
should have taken, or a clean httpx error, with the bad connection closed.

Tests wait on what the server records (a connection accepted, a request read, the client's
end-of-stream) with deadlines that are only reached when something is broken; the per-request
TLS context is tested with a self-signed certificate made by openssl.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from postdeploy.transport import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_INFORMATIONAL,
    SSL_CONTEXT,
    LeanTransport,
    announces_missing_body,
    check_heads,
    no_answer_to_us,
)
from support.aio import Conn, KeepAliveServer, eventually, read_body
from support.tls import Cert, self_signed

# --------------------------------------------------------------------------------------------
# A scripted keep-alive server
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Seen:
    conn: Conn
    number: int  # position on its connection, from 1
    method: str
    path: str


# A route writes its answer to a request and says whether the connection stays open.
Route = Callable[["Server", Seen], Awaitable[bool]]


@dataclass(eq=False)
class Server(KeepAliveServer):
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def seen(self) -> list[tuple[int, int, str, str]]:
        """(connection, position on it, method, path) of every request, in arrival order."""
        return [(r.conn.index, r.number, r.method, r.path) for r in self.requests]


def answer(status: int = 200, headers: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    """A response with Content-Length set to the body's length (unless `headers` set one)."""
    lines = [f"HTTP/1.1 {status} Whatever", *headers]
    if not any(line.lower().startswith("content-length:") for line in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def body_of(seen: Seen) -> bytes:
    return f"{seen.method} {seen.path} conn={seen.conn.index} n={seen.number}".encode()


async def answer_ok(server: Server, seen: Seen) -> bool:
    """200 naming the request and where it arrived; stays open."""
    body = body_of(seen) if seen.method != "HEAD" else b""
    seen.conn.writer.write(answer(200, body=body))
    await seen.conn.writer.drain()
    return True


async def until_client_closes(server: Server, conn: Conn) -> bool:
    try:
        while await conn.reader.read(65536):
            pass
    except OSError:
        pass
    conn.client_closed = True
    server.notify()
    return False


async def read_request(conn: Conn) -> tuple[str, str] | None:
    try:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, OSError):
        return None
    method, path, _ = raw.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await conn.reader.readexactly(int(line.split(b":", 1)[1]))
    return method, path


@asynccontextmanager
async def serve(
    routes: dict[str, Route], *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """Run a server on 127.0.0.1:0; a path missing from `routes` gets `answer_ok`."""
    server = Server(routes=routes)

    async def converse(conn: Conn) -> None:
        try:
            while (request := await read_request(conn)) is not None:
                conn.requests += 1
                seen = Seen(conn, conn.requests, *request)
                server.requests.append(seen)
                server.notify()
                if not await server.routes.get(seen.path, answer_ok)(server, seen):
                    return
            conn.client_closed = True
        except OSError:
            conn.client_closed = True

    async with server.running(converse, tls=tls):
        yield server


@dataclass
class Reply:
    status: int
    body: bytes


async def fetch(
    transport: LeanTransport, method: str, url: str, extensions: dict[str, object] | None = None
) -> Reply:
    """One request through the transport, as the Prober makes it: body read, stream closed."""
    content = b"data" if method == "POST" else None
    request = httpx.Request(method, url, content=content, extensions=extensions)
    response = await transport.handle_async_request(request)
    return Reply(response.status_code, await read_body(response))


# --------------------------------------------------------------------------------------------
# Bytes after an answer's end: the connection is closed, never reused
# --------------------------------------------------------------------------------------------


def raw(data: bytes) -> Route:
    """A route writing `data` (answer and leftovers in one write); stays open."""

    async def route(server: Server, seen: Seen) -> bool:
        seen.conn.writer.write(data)
        await seen.conn.writer.drain()
        return True

    return route


LEFTOVERS = {
    # A 204 has no body, whatever it says: the bytes after its head are not part of it.
    "204-with-body": ("GET", answer(204, body=b"hello")),
    "204-without-length": ("GET", answer(204, ("Content-Length: 0",)) + b"hello"),
    # A 304's Content-Length is the length of the resource: it has no body either.
    "304-with-body": ("GET", answer(304, body=b"hello")),
    # A HEAD answer's body is never sent.
    "head-with-body": ("HEAD", answer(200, body=b"hello")),
    # More bytes than the Content-Length announced.
    "longer-than-announced": ("GET", answer(200, ("Content-Length: 2",), b"hello")),
    # A whole second answer nobody asked for, right after the first one.
    "unasked-answer": ("GET", answer(200, body=b"one") + answer(200, body=b"two")),
}


@pytest.mark.parametrize("case", LEFTOVERS, ids=list(LEFTOVERS))
async def test_bytes_after_an_answer_close_its_connection(
    transport: LeanTransport, case: str
) -> None:
    """The first answer ends before all its bytes did: those bytes would be read as the next
    request's answer, so its connection is closed and the next request opens a new one."""
    method, data = LEFTOVERS[case]
    async with serve({"/odd": raw(data)}) as server:
        first = await fetch(transport, method, server.url("/odd"))
        assert first.body in (b"", b"he", b"one")
        second = await fetch(transport, "GET", server.url("/next"))
        assert (second.status, second.body) == (200, b"GET /next conn=1 n=1")
        assert server.seen() == [(0, 1, method, "/odd"), (1, 1, "GET", "/next")]
        await server.wait_until(lambda: server.conns[0].client_closed)
        await eventually(lambda: transport.connections == 1, "the first connection is closed")


async def test_a_204_announcing_a_body_is_not_reused(transport: LeanTransport) -> None:
    """A 204 with Content-Length: 5 whose 5 bytes come later (here: only once the next
    request arrives on that connection). Nothing is left over when the answer ends, but the
    connection is in doubt: it is closed, and the next request goes elsewhere."""

    async def late_body(server: Server, seen: Seen) -> bool:
        seen.conn.writer.write(answer(204, ("Content-Length: 5",)))
        if await read_request(seen.conn) is not None:  # the next request, if it comes here
            seen.conn.writer.write(b"hello" + answer(200, body=b"late"))
            return True
        return False

    async with serve({"/204": late_body}) as server:
        first = await fetch(transport, "GET", server.url("/204"))
        assert (first.status, first.body) == (204, b"")
        second = await fetch(transport, "GET", server.url("/next"))
        assert (second.status, second.body) == (200, b"GET /next conn=1 n=1")


async def test_clean_answers_still_keep_the_connection(transport: LeanTransport) -> None:
    """The ordinary no-body answers (204 and 304 without a body, a HEAD answer with the
    length its body would have) keep their connection: one connection for all."""
    routes = {
        "/204": raw(answer(204, ("Content-Length: 0",))),
        "/304": raw(answer(304, ("Content-Length: 12345",))),
        "/head": raw(answer(200, ("Content-Length: 12345",))),
    }
    async with serve(routes) as server:
        for method, path in [("GET", "/204"), ("GET", "/304"), ("HEAD", "/head")]:
            reply = await fetch(transport, method, server.url(path))
            assert reply.body == b""
        reply = await fetch(transport, "GET", server.url("/last"))
        assert reply.body == b"GET /last conn=0 n=4"
        assert len(server.conns) == 1


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (204, [], False),
        (204, [(b"content-length", b"0")], False),
        (204, [(b"content-length", b"5")], True),
        (204, [(b"transfer-encoding", b"chunked")], True),
        (304, [(b"content-length", b"5")], False),  # the resource's length: normal
        (200, [(b"content-length", b"5")], False),
    ],
)
def test_a_204_in_doubt(status: int, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert announces_missing_body(status, headers) is expected


# --------------------------------------------------------------------------------------------
# A 408 on a kept-alive connection answers nothing: GET and HEAD are asked again
# --------------------------------------------------------------------------------------------

TIMEOUT_408 = answer(408, ("Connection: close",), b"idle too long")


def on_reused(route: Route) -> Route:
    """`route` for a request that arrived on a used connection, `answer_ok` otherwise."""

    async def pick(server: Server, seen: Seen) -> bool:
        return await (route if seen.number > 1 else answer_ok)(server, seen)

    return pick


async def timeout_then_close(server: Server, seen: Seen) -> bool:
    """The server's idle timeout fired as our request arrived: 408, then it closes."""
    seen.conn.writer.write(TIMEOUT_408)
    await seen.conn.writer.drain()
    return False


async def timeout_kept_open(server: Server, seen: Seen) -> bool:
    """A 408 without Connection: close, and the connection stays open."""
    seen.conn.writer.write(answer(408, body=b"idle too long"))
    await seen.conn.writer.drain()
    return True


async def half_a_408_then_close(server: Server, seen: Seen) -> bool:
    """The 408's head is cut short by the close."""
    seen.conn.writer.write(b"HTTP/1.1 408 Request Ti")
    await seen.conn.writer.drain()
    return False


STALE_408 = {
    "408-then-close": timeout_then_close,
    "408-kept-open": timeout_kept_open,
    "half-a-408": half_a_408_then_close,
}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("case", STALE_408, ids=list(STALE_408))
async def test_408_on_a_reused_connection_is_retried(
    transport: LeanTransport, case: str, method: str
) -> None:
    """A 408 (or the start of one) on a reused connection answers nothing we asked: a GET
    or HEAD is asked again, once, on a new connection, and gets the real answer."""
    async with serve({"/probe": on_reused(STALE_408[case])}) as server:
        await fetch(transport, "GET", server.url("/warm"))
        reply = await fetch(transport, method, server.url("/probe"))
        assert reply.status == 200
        assert reply.body == (b"" if method == "HEAD" else f"{method} /probe conn=1 n=1".encode())
        assert server.seen() == [
            (0, 1, "GET", "/warm"),
            (0, 2, method, "/probe"),  # answered 408
            (1, 1, method, "/probe"),  # the retry
        ]
        await server.wait_until(lambda: server.conns[0].finished)
        await eventually(lambda: transport.connections == 1, "the 408's connection is closed")


async def test_408_crossing_the_request_is_retried(transport: LeanTransport) -> None:
    """The race the hostile tester hit: the server's 408 is already on its way (here: in our
    socket's buffer, unread) when the idle connection is taken for the next request. It is
    read as that request's answer; it is none, and the GET is asked again."""
    async with serve({}) as server:
        await fetch(transport, "GET", server.url("/warm"))
        # Written straight to the socket: our side reads it only once the next request is
        # sent and the transport waits for its answer (nothing yields to the loop before).
        server.conns[0].writer.write(TIMEOUT_408)
        reply = await fetch(transport, "GET", server.url("/next"))
        assert (reply.status, reply.body) == (200, b"GET /next conn=1 n=1")
        assert (1, 1, "GET", "/next") in server.seen()


async def test_408_is_the_answer_of_a_post_and_of_a_fresh_connection(
    transport: LeanTransport,
) -> None:
    """A POST is never sent twice: the 408 is its answer. A 408 on a fresh connection (the
    first one, or the retry's) is the answer too: at most one retry."""
    routes = {"/always-408": timeout_then_close, "/post": on_reused(timeout_then_close)}
    async with serve(routes) as server:
        fresh = await fetch(transport, "GET", server.url("/always-408"))
        assert (fresh.status, fresh.body) == (408, b"idle too long")
        assert len(server.conns) == 1

        await fetch(transport, "GET", server.url("/warm"))  # conn 1, kept alive
        post = await fetch(transport, "POST", server.url("/post"))
        assert post.status == 408
        assert [r.path for r in server.requests].count("/post") == 1

        await fetch(transport, "GET", server.url("/warm"))  # conn 2, kept alive
        twice = await fetch(transport, "GET", server.url("/always-408"))
        assert twice.status == 408
        assert server.seen()[-2:] == [(2, 2, "GET", "/always-408"), (3, 1, "GET", "/always-408")]


@pytest.mark.parametrize(
    ("received", "unparsed", "expected"),
    [
        (0, b"", True),  # nothing came: the request was never read
        (23, b"HTTP/1.1 408 Request Ti", True),
        (14, b"HTTP/1.0 408\r\n", True),
        (12, b"HTTP/1.1 408", False),  # "4080"? too short to tell: an answer
        (10, b"HTTP/1.1 4", False),
        (30, b"HTTP/1.1 500 Internal Error\r\n", False),
        (23, b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False),
        (40, b"", False),  # a whole answer came (h11 parsed it) before the failure
    ],
)
def test_what_counts_as_no_answer(received: int, unparsed: bytes, expected: bool) -> None:
    assert no_answer_to_us(received, unparsed) is expected


# --------------------------------------------------------------------------------------------
# Bounded heads
# --------------------------------------------------------------------------------------------


def many_headers(count: int) -> bytes:
    return answer(200, tuple(f"X-H{i}: v" for i in range(count)), b"ok")


def trickled(data: bytes, piece: int) -> Route:
    """A route writing `data` in pieces of `piece` bytes, each drained; stays open."""

    async def route(server: Server, seen: Seen) -> bool:
        for start in range(0, len(data), piece):
            seen.conn.writer.write(data[start : start + piece])
            await seen.conn.writer.drain()
        return True

    return route


HOSTILE_HEADS = {
    # MAX_HEADERS header lines, and the Content-Length one.
    "10000-headers": (raw(many_headers(10_000)), "over 100 header lines"),
    "101-headers": (raw(many_headers(MAX_HEADERS)), "over 100 header lines"),
    "trickled-headers": (trickled(many_headers(500), 1000), "over 100 header lines"),
    "one-huge-header": (
        raw(answer(200, ("X-Big: " + "a" * MAX_HEAD_BYTES,), b"ok")),
        "head over 65536 bytes",
    ),
    "informational-flood": (
        raw(b"HTTP/1.1 100 Continue\r\n\r\n" * 1000 + answer(200, body=b"ok")),
        "over 10 informational responses",
    ),
    "informational-trickle": (
        trickled(b"HTTP/1.1 100 Continue\r\n\r\n" * 20 + answer(200, body=b"ok"), 25),
        "over 10 informational responses",
    ),
}


@pytest.mark.parametrize("case", HOSTILE_HEADS, ids=list(HOSTILE_HEADS))
async def test_oversized_heads_fail_cleanly(transport: LeanTransport, case: str) -> None:
    """A head over the bounds is an httpx.RemoteProtocolError naming the bound, and its
    connection is closed; the transport serves the next request on a new one."""
    route, message = HOSTILE_HEADS[case]
    async with serve({"/hostile": route}) as server:
        with pytest.raises(httpx.RemoteProtocolError, match=message):
            await fetch(transport, "GET", server.url("/hostile"))
        await server.wait_until(lambda: server.conns[0].client_closed)
        reply = await fetch(transport, "GET", server.url("/next"))
        assert reply.body == b"GET /next conn=1 n=1"


async def test_heads_within_the_bounds_pass(transport: LeanTransport) -> None:
    """Exactly MAX_HEADERS headers, MAX_INFORMATIONAL 1xx answers first, and a head with a
    large body arriving with it: all fine, on one connection."""
    routes = {
        "/100": raw(many_headers(MAX_HEADERS - 1)),  # and Content-Length: 100 in all
        "/1xx": raw(b"HTTP/1.1 103 Early Hints\r\n\r\n" * MAX_INFORMATIONAL + answer(body=b"ok")),
        "/big": raw(answer(200, body=b"\n" * (4 * MAX_HEAD_BYTES))),
    }
    async with serve(routes) as server:
        assert (await fetch(transport, "GET", server.url("/100"))).body == b"ok"
        assert (await fetch(transport, "GET", server.url("/1xx"))).body == b"ok"
        assert len((await fetch(transport, "GET", server.url("/big"))).body) == 4 * MAX_HEAD_BYTES
        assert len(server.conns) == 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", (None, False)),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n", (None, False)),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody\n\n\n", (None, True)),
        (b"HTTP/1.1 200 OK\nA: b\n\n", (None, True)),  # bare line feeds, as h11 takes them
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", (None, False)),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", (None, True)),
        (b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 100 + b"\r\n", (None, True)),
        (
            b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 101 + b"\r\n",
            ("response head with over 100 header lines", False),
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 101,  # not even complete
            ("response head with over 100 header lines", False),
        ),
        (
            b"HTTP/1.1 200 OK\r\nA: " + b"b" * MAX_HEAD_BYTES,
            ("response head over 65536 bytes", False),
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + b"HTTP/1.1 200 OK\r\n\r\n",
            ("over 10 informational responses", False),
        ),
    ],
)
def test_check_heads(data: bytes, expected: tuple[str | None, bool]) -> None:
    assert check_heads(data) == expected


# --------------------------------------------------------------------------------------------
# The per-request TLS context
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 (skips without openssl)."""
    return self_signed(tmp_path_factory.mktemp("tls"), "127.0.0.1", "IP:127.0.0.1")


async def test_per_request_tls_context(cert: Cert, transport: LeanTransport) -> None:
    """A request's SSL_CONTEXT is used for its https connection (the transport's own
    context trusts only the system's CAs), and it is part of the pool's key: a connection
    made with one context serves requests with that context only."""
    trusting, other_trusting = cert.client_context(), cert.client_context()
    async with serve({}, tls=cert.server_context()) as server:
        url = server.url("/secure")
        reply = await fetch(transport, "GET", url, {SSL_CONTEXT: trusting})
        assert reply.body == b"GET /secure conn=0 n=1"

        # Without the extension: the transport's context, which does not trust the server,
        # and not the idle connection made with the other context.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(transport, "GET", url)

        # Another context (trusting the same certificate): a connection of its own.
        reply = await fetch(transport, "GET", url, {SSL_CONTEXT: other_trusting})
        assert reply.body == b"GET /secure conn=1 n=1"  # (a failed handshake is no conn)
        # The first context again: its kept-alive connection.
        reply = await fetch(transport, "GET", url, {SSL_CONTEXT: trusting})
        assert reply.body == b"GET /secure conn=0 n=2"
        assert transport.connections == 2


async def test_tls_context_must_be_a_context(transport: LeanTransport) -> None:
    with pytest.raises(TypeError, match="SSLContext"):
        await fetch(transport, "GET", "https://127.0.0.1:1/", {SSL_CONTEXT: "yes please"})
