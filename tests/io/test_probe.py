"""The HTTP prober against real, often hostile, HTTP servers on 127.0.0.1.

Every server here is a small asyncio TCP server started inside the test on port 0, so each
misbehaviour (a hang, a trickle, a reset, a 100 MB body, junk where TLS should be) is exact.
A hostile target must cost exactly one failed probe with a precise `detail`, within bounded
time and memory, and must not affect any other target probed by the same `Prober`.

Nothing here waits on a bare sleep: servers record the requests they receive and tests wait
for those events with generous deadlines that are only reached when something is broken.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import pytest

from postdeploy.config import RepoConfig
from postdeploy.probe import Answer, Prober, health_problem
from postdeploy.series import ProbeRow
from support.aio import Changes, tcp_server

DEADLINE_S = 20.0  # only reached when something is broken
LONG_TIMEOUT_S = 30.0  # a probe timeout that must never be what ends a test
SHORT_TIMEOUT_S = 0.5  # for targets that are meant to time out
OK_BODY = b'{"status": "ok"}'
HUGE = 100 * 1024 * 1024  # the 100 MB body: streamed lazily, never built in memory
PEAK_LIMIT = 8 * 1024 * 1024  # the prober's peak Python allocation while facing it
FIVEXX_PATHS = ("/status", "/queue")


# --------------------------------------------------------------------------------------------
# A tiny HTTP/1.1 server: reads one request head per connection, hands it to a handler that
# writes whatever raw bytes the scenario calls for, then closes the connection.
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One request head as the server received it, and the connection to answer on."""

    index: int  # arrival order on this server, from 0
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


Handler = Callable[[Request], Awaitable[None]]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(eq=False)
class Server(Changes):
    """What a running test server has seen; `wait_until` blocks on its events."""

    port: int = 0
    scheme: str = "http"
    requests: list[Request] = field(default_factory=list)
    inflight: int = 0  # requests received whose handler has not finished
    max_inflight: int = 0
    finished: int = 0  # handlers that have returned (or failed because the client left)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    async def wait_for_requests(self, count: int) -> None:
        """Wait until at least `count` requests have arrived."""
        await self.wait_until(lambda: len(self.requests) >= count)


async def _dispatch(
    server: Server, handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _version = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    request = Request(len(server.requests), method, path, headers, reader, writer)
    server.requests.append(request)
    server.inflight += 1
    server.max_inflight = max(server.max_inflight, server.inflight)
    server.notify()
    try:
        await handler(request)
    finally:
        server.inflight -= 1
        server.notify()


@asynccontextmanager
async def serve(
    handler: Handler | None = None, *, raw: RawHandler | None = None, scheme: str = "http"
) -> AsyncIterator[Server]:
    """Run a server on 127.0.0.1:0 for the duration of the block; `raw` handlers get the bare
    connection (no HTTP parsing), e.g. to answer a TLS handshake with junk."""
    server = Server(scheme=scheme)

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if raw is not None:
                await raw(reader, writer)
            else:
                assert handler is not None
                await _dispatch(server, handler, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, which the prober is entitled to do
        finally:  # also when the server stops: a hung handler is cancelled then
            writer.close()
            server.finished += 1
            server.notify()

    async with tcp_server(converse) as port:
        server.port = port
        yield server


def head(status: int, headers: dict[str, str] | None = None, *, length: int | None = 0) -> bytes:
    """A response head; `length=None` leaves Content-Length out."""
    lines = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def routes(table: dict[str, tuple[int, bytes]]) -> Handler:
    """A well-behaved handler answering each path from `table` (404 for the others)."""

    async def handle(request: Request) -> None:
        status, body = table.get(request.path, (404, b"not found"))
        await send(request.writer, head(status, length=len(body)) + body)

    return handle


def healthy_routes() -> Handler:
    return routes({"/health": (200, OK_BODY), **{path: (200, b"fine") for path in FIVEXX_PATHS}})


def repo_for(base_url: str, fivexx_paths: tuple[str, ...] = FIVEXX_PATHS) -> RepoConfig:
    return RepoConfig(base_url=base_url, health_path="/health", fivexx_paths=list(fivexx_paths))


async def probe_once(prober: Prober, repo: RepoConfig, timeout: float) -> ProbeRow:
    """One tick, which must end within DEADLINE_S whatever the target does."""
    with anyio.fail_after(DEADLINE_S):
        return await prober.probe(repo, timeout, 0, time.time(), False)


# --------------------------------------------------------------------------------------------
# Well-behaved and merely unhealthy targets
# --------------------------------------------------------------------------------------------


async def test_healthy_target_and_fivexx_counting(prober: Prober) -> None:
    """200 {"status": "ok"} is healthy; only 500-599 answers on 5xx paths count as 5xx, and
    the row carries the tick's identity, every path's code and a readable detail."""
    table = {
        "/health": (200, OK_BODY),
        "/ok": (200, b"fine"),
        "/busy": (503, b""),
        "/boom": (500, b"trace"),
        "/teapot": (418, b""),
        "/edge": (599, b""),
        "/missing": (404, b""),
    }
    paths = ("/ok", "/busy", "/boom", "/teapot", "/edge", "/missing")
    async with serve(routes(table)) as server:
        with anyio.fail_after(DEADLINE_S):
            row = await prober.probe(repo_for(server.url, paths), LONG_TIMEOUT_S, 7, 123.5, True)
    assert (row.tick, row.scheduled_ts, row.catch_up) == (7, 123.5, True)
    assert row.health_ok and row.health_code == 200
    assert (row.total, row.fivexx) == (6, 3)
    assert row.codes == {path: table[path][0] for path in paths}
    assert (
        row.detail
        == "health ok; /ok 200; /busy 503; /boom 500; /teapot 418; /edge 599; /missing 404"
    )
    assert row.latency_ms > 0
    # Each path was asked exactly once, without compression, by a recognisable client.
    assert sorted(server.paths()) == sorted(["/health", *paths])
    for request in server.requests:
        assert request.method == "GET"
        assert request.headers["accept-encoding"] == "identity"
        assert request.headers["user-agent"].startswith("postdeploy/")


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (503, OK_BODY, "HTTP 503"),
        (200, b'{"status": "degraded"}', "HTTP 200 but status='degraded'"),
        (200, b"{}", "HTTP 200 but status=None"),
        (200, b'{"status": ', "HTTP 200 but the body is not JSON"),
        (200, b"", "HTTP 200 but the body is not JSON"),
        (200, b"\xff\xfe\x00garbage", "HTTP 200 but the body is not JSON"),
        (200, b'["ok"]', "HTTP 200 but the body is not a JSON object"),
        (200, b'"ok"', "HTTP 200 but the body is not a JSON object"),
        (201, OK_BODY, "HTTP 201"),
        pytest.param(
            200,
            b"[" * 60000,  # under the body bound, but deeper than Python's recursion limit
            "HTTP 200 but the body is not JSON",
            id="deeply-nested",
        ),
        pytest.param(
            200,
            b'{"status": "ok", "n": ' + b"1" * 5000 + b"}",  # over int's 4300-digit limit
            "HTTP 200 but the body is not JSON",
            id="huge-integer",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_unhealthy_health_answers(
    prober: Prober, status: int, body: bytes, problem: str
) -> None:
    """Anything but 200 with a JSON object whose status is "ok" fails health, and says why;
    a failed health answer does not leak into the 5xx counts."""
    table = {"/health": (status, body), **{path: (200, b"") for path in FIVEXX_PATHS}}
    async with serve(routes(table)) as server:
        row = await probe_once(prober, repo_for(server.url), LONG_TIMEOUT_S)
    assert not row.health_ok
    assert row.health_code == status
    assert row.detail == f"health {problem}; /status 200; /queue 200"
    assert (row.total, row.fivexx) == (2, 0)


def test_health_problem_is_total_over_answers() -> None:
    """The pure judgement on an Answer: unanswered answers report their error verbatim."""
    assert health_problem(Answer(200, 1.0, OK_BODY)) is None
    assert health_problem(Answer(200, 1.0, b'{"status": "ok", "extra": [1, 2]}')) is None
    assert health_problem(Answer(0, 1.0, error="connection failed: nope")) == (
        "connection failed: nope"
    )
    assert health_problem(Answer(200, 1.0, None)) == "HTTP 200 but the body is not JSON"
    assert health_problem(Answer(200, 1.0, b'{"status": "OK"}')) == "HTTP 200 but status='OK'"


async def test_body_bound_is_exact() -> None:
    """A health body of exactly max_body_bytes is read and judged; one byte more is not."""
    limit = 4096
    prefix, suffix = b'{"status": "ok", "pad": "', b'"}'
    fits = prefix + b"x" * (limit - len(prefix) - len(suffix)) + suffix
    over = prefix + b"x" * (limit + 1 - len(prefix) - len(suffix)) + suffix
    assert (len(fits), len(over)) == (limit, limit + 1)
    table = {"/fits/health": (200, fits), "/over/health": (200, over)}
    prober = Prober(max_body_bytes=limit)
    try:
        async with serve(routes(table)) as server:
            ok = await probe_once(prober, repo_for(server.url + "/fits", ()), LONG_TIMEOUT_S)
            bad = await probe_once(prober, repo_for(server.url + "/over", ()), LONG_TIMEOUT_S)
    finally:
        await prober.aclose()
    assert ok.health_ok, ok.detail
    assert not bad.health_ok
    assert bad.detail == f"health HTTP 200 body over {limit} bytes"


# --------------------------------------------------------------------------------------------
# Hostile targets: each one fails its own probe, precisely, and leaves a sibling target alone
# --------------------------------------------------------------------------------------------


async def hang(request: Request) -> None:
    """Accept and read the request, then never answer."""
    await asyncio.Event().wait()


async def trickle_body(request: Request) -> None:
    """A 200 head promising 2000 bytes, then one byte every 50 ms: each read is well within
    httpx's per-read timeout, so only an overall deadline ends it."""
    await send(request.writer, head(200, length=2000))
    for _ in range(2000):
        await send(request.writer, b" ")
        await asyncio.sleep(0.05)


async def trickle_head(request: Request) -> None:
    """The status line, then a header line one byte every 50 ms, never finished."""
    await send(request.writer, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(2000):
        await send(request.writer, b"a")
        await asyncio.sleep(0.05)


async def endless_header(request: Request) -> None:
    """A header line that never ends, sent as fast as the client reads it."""
    await send(request.writer, b"HTTP/1.1 200 OK\r\nX-Big: ")
    chunk = b"a" * 65536
    for _ in range(HUGE // len(chunk)):
        await send(request.writer, chunk)


async def reset(request: Request) -> None:
    """Read the request, then reset the connection (SO_LINGER 0 turns close into an RST)."""
    sock = request.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.writer.transport.abort()


async def disconnect(request: Request) -> None:
    """Read the request, then close cleanly without a word."""


async def speak_garbage(request: Request) -> None:
    """Answer with something that is not HTTP at all."""
    await send(request.writer, b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\xff\r\n\r\n")


async def junk_instead_of_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain TCP server behind an https:// URL: wait for the ClientHello, answer junk."""
    await reader.read(1)
    await send(writer, b"this is not TLS at all\r\n" * 8)


@asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler) as server:
        yield server.url


@asynccontextmanager
async def tls_junk() -> AsyncIterator[str]:
    async with serve(raw=junk_instead_of_tls, scheme="https") as server:
        yield server.url


@asynccontextmanager
async def refused() -> AsyncIterator[str]:
    """A port that is bound but not listening: the kernel refuses every connection to it, and
    no other process can take the port while the socket stays bound."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass(frozen=True)
class Hostile:
    """A misbehaving target (every path behaves the same) and what its probe must say."""

    target: Callable[[], AbstractAsyncContextManager[str]]
    timeout: float
    health: str  # regex for the health part of `detail`
    path: str  # regex for each 5xx path's part of `detail`
    path_code: int  # the code each 5xx path records (0: no answer)


TIMED_OUT = re.escape(f"timed out after {SHORT_TIMEOUT_S:g}s")
HOSTILE = {
    "hang": Hostile(partial(served, hang), SHORT_TIMEOUT_S, TIMED_OUT, TIMED_OUT, 0),
    # 5xx paths do not read bodies: the trickled head is an answer for them, not for health.
    "trickle-body": Hostile(partial(served, trickle_body), SHORT_TIMEOUT_S, TIMED_OUT, "200", 200),
    "trickle-head": Hostile(
        partial(served, trickle_head), SHORT_TIMEOUT_S, TIMED_OUT, TIMED_OUT, 0
    ),
    "endless-header": Hostile(
        partial(served, endless_header),
        LONG_TIMEOUT_S,
        "protocol error: response head over 65536 bytes",
        "protocol error: response head over 65536 bytes",
        0,
    ),
    # Reset and refused: the cause is checked precisely in test_network_errors_name_the_cause.
    "reset": Hostile(partial(served, reset), LONG_TIMEOUT_S, "read error.*", "read error.*", 0),
    "disconnect": Hostile(
        partial(served, disconnect),
        LONG_TIMEOUT_S,
        "protocol error: Server disconnected without sending a response.",
        "protocol error: Server disconnected without sending a response.",
        0,
    ),
    "garbage": Hostile(
        partial(served, speak_garbage),
        LONG_TIMEOUT_S,
        re.escape("protocol error: illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.6')"),
        re.escape("protocol error: illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.6')"),
        0,
    ),
    "refused": Hostile(
        refused, LONG_TIMEOUT_S, "connection failed: .+", "connection failed: .+", 0
    ),
    "tls-junk": Hostile(
        tls_junk,
        LONG_TIMEOUT_S,
        r"connection failed: \[SSL: WRONG_VERSION_NUMBER\] .+",
        r"connection failed: \[SSL: WRONG_VERSION_NUMBER\] .+",
        0,
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_target_fails_alone(prober: Prober, name: str) -> None:
    """The hostile target's tick fails with a precise detail and health_code 0, its unanswered
    5xx paths count as 5xx, memory stays bounded, and a healthy target probed at the same time
    by the same Prober is untouched."""
    case = HOSTILE[name]
    rows: dict[str, ProbeRow] = {}

    async def run(key: str, repo: RepoConfig, timeout: float) -> None:
        rows[key] = await probe_once(prober, repo, timeout)

    tracemalloc.start()
    try:
        async with (
            case.target() as hostile_url,
            serve(healthy_routes()) as healthy,
            anyio.create_task_group() as tg,
        ):
            tracemalloc.reset_peak()
            tg.start_soon(run, "hostile", repo_for(hostile_url), case.timeout)
            tg.start_soon(run, "healthy", repo_for(healthy.url), LONG_TIMEOUT_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak allocation {peak} bytes"

    row = rows["hostile"]
    assert not row.health_ok
    assert row.health_code == 0
    expected = rf"health {case.health}; /status {case.path}; /queue {case.path}"
    assert re.fullmatch(expected, row.detail), row.detail
    assert row.codes == dict.fromkeys(FIVEXX_PATHS, case.path_code)
    assert (row.total, row.fivexx) == (2, 0 if case.path_code else 2)

    sibling = rows["healthy"]
    assert sibling.health_ok and sibling.fivexx == 0, sibling.detail


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("reset", "health read error: Connection reset by peer"),
        ("refused", "health connection failed: Connection refused"),
    ],
)
async def test_network_errors_name_the_cause(prober: Prober, name: str, detail: str) -> None:
    """An operator reading the series must tell a reset from a refused port from a timeout."""
    async with HOSTILE[name].target() as url:
        row = await probe_once(prober, repo_for(url, ()), LONG_TIMEOUT_S)
    assert row.detail == detail


async def test_redirect_loop_is_not_followed(prober: Prober) -> None:
    """302 to itself: health fails with the 302, a 3xx on a 5xx path is not a 5xx, and each
    path is requested exactly once."""

    async def loop(request: Request) -> None:
        await send(request.writer, head(302, {"Location": request.path}))

    async with serve(loop) as server:
        row = await probe_once(prober, repo_for(server.url), LONG_TIMEOUT_S)
    assert not row.health_ok and row.health_code == 302
    assert row.detail == "health HTTP 302; /status 302; /queue 302"
    assert row.codes == dict.fromkeys(FIVEXX_PATHS, 302)
    assert (row.total, row.fivexx) == (2, 0)
    assert sorted(server.paths()) == sorted(["/health", *FIVEXX_PATHS])


# --------------------------------------------------------------------------------------------
# Bounded memory: a 100 MB body and a gzip bomb
# --------------------------------------------------------------------------------------------


def huge_body(chunked: bool) -> Callable[[Request], Awaitable[None]]:
    """A 200 whose body is 100 MB of one 64 KiB block sent over and over (never built)."""

    async def handle(request: Request) -> None:
        block = b"x" * 65536
        if chunked:
            await send(request.writer, head(200, {"Transfer-Encoding": "chunked"}, length=None))
            block = b"%x\r\n%s\r\n" % (len(block), block)
        else:
            await send(request.writer, head(200, length=HUGE))
        for _ in range(HUGE // 65536):
            await send(request.writer, block)

    return handle


@pytest.mark.parametrize("limit", [65536, 4096])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_huge_body_is_cut_off_in_bounded_memory(limit: int, chunked: bool) -> None:
    """The body is read only up to the bound ("body over N bytes"), the prober's peak Python
    allocation stays far below the body size, and the connection is dropped early: the
    server never gets to send the whole 100 MB. 5xx paths do not read bodies at all."""
    prober = Prober(max_body_bytes=limit)
    tracemalloc.start()
    try:
        async with serve(huge_body(chunked)) as server:
            tracemalloc.reset_peak()
            row = await probe_once(prober, repo_for(server.url), LONG_TIMEOUT_S)
            _, peak = tracemalloc.get_traced_memory()
            # Every handler ends once the prober has hung up on it (write fails).
            await server.wait_until(lambda: server.finished == 3)
    finally:
        tracemalloc.stop()
        await prober.aclose()
    assert not row.health_ok and row.health_code == 200
    assert row.detail == f"health HTTP 200 body over {limit} bytes; /status 200; /queue 200"
    assert (row.total, row.fivexx) == (2, 0)
    assert peak < PEAK_LIMIT, f"peak allocation {peak} bytes"


def gzip_bomb(expanded: int) -> bytes:
    """A gzip stream that expands to `expanded` bytes of valid JSON with status "ok": a prober
    that decompressed it would call it healthy (and hold it all in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    parts = [compressor.compress(b'{"status": "ok", "pad": "')]
    block = b" " * (1 << 20)
    parts += [compressor.compress(block) for _ in range(expanded >> 20)]
    parts += [compressor.compress(b'"}'), compressor.flush()]
    return b"".join(parts)


async def test_gzip_bomb_is_not_decompressed(prober: Prober) -> None:
    """The prober asks for identity; a server that sends gzip anyway gets its bytes judged
    as they are (not JSON), and they are never inflated."""
    bomb = gzip_bomb(16 << 20)
    assert len(bomb) < 65536  # fits under the body bound, so the bound is not what saves us
    assert json.loads(zlib.decompress(bomb, 31))["status"] == "ok"

    async def handle(request: Request) -> None:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        await send(request.writer, head(200, headers, length=len(bomb)) + bomb)

    async with serve(handle) as server:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            row = await probe_once(prober, repo_for(server.url, ()), LONG_TIMEOUT_S)
            with anyio.fail_after(DEADLINE_S):
                answer = await prober.get(server.url + "/health", LONG_TIMEOUT_S, read_body=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert not row.health_ok and row.health_code == 200
    assert row.detail == "health HTTP 200 but the body is not JSON"
    assert answer.body == bomb  # the raw bytes, untouched
    assert peak < PEAK_LIMIT, f"peak allocation {peak} bytes"
    assert all(r.headers["accept-encoding"] == "identity" for r in server.requests)


# --------------------------------------------------------------------------------------------
# Concurrency, isolation and the in-flight bound, all proven with events
# --------------------------------------------------------------------------------------------


async def test_one_tick_requests_its_paths_concurrently(prober: Prober) -> None:
    """/health answers only once /status has arrived and /status only once /health has: a
    prober that asked them one after the other would see both give up with a 500."""

    async def handle(request: Request) -> None:
        other = "/status" if request.path == "/health" else "/health"
        try:
            await server.wait_until(lambda: other in server.paths())
        except TimeoutError:
            await send(request.writer, head(500, length=10) + b"sequential")
            return
        body = OK_BODY if request.path == "/health" else b"fine"
        await send(request.writer, head(200, length=len(body)) + body)

    async with serve(handle) as server:
        row = await probe_once(prober, repo_for(server.url, ("/status",)), LONG_TIMEOUT_S)
    assert row.health_ok, row.detail
    assert row.detail == "health ok; /status 200"


async def test_hung_target_does_not_hold_up_another(prober: Prober) -> None:
    """Two targets probed at the same moment by one Prober: the healthy one answers only once
    the hung one has its request (so they truly overlap), and its result arrives while the
    hung probe is still pending."""
    results: dict[str, ProbeRow] = {}
    healthy_done = anyio.Event()

    async with serve(hang) as hung:

        async def health_after_hung(request: Request) -> None:
            await hung.wait_until(lambda: "/health" in hung.paths())
            await send(request.writer, head(200, length=len(OK_BODY)) + OK_BODY)

        async with serve(health_after_hung) as healthy:

            async def run(key: str, url: str) -> None:
                results[key] = await prober.probe(
                    repo_for(url, ()), LONG_TIMEOUT_S, 0, time.time(), False
                )
                if key == "healthy":
                    healthy_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "hung", hung.url)
                tg.start_soon(run, "healthy", healthy.url)
                with anyio.fail_after(DEADLINE_S):
                    await healthy_done.wait()
                assert "hung" not in results  # still waiting on its silent server
                assert hung.inflight == 1
                tg.cancel_scope.cancel()
    assert results["healthy"].health_ok


async def test_max_inflight_bounds_requests_at_the_server() -> None:
    """With max_inflight=2, the server never holds more than 2 requests at once. Requests are
    held until the test releases them, one at a time, each after the next one has arrived."""
    count = 6
    release = [asyncio.Event() for _ in range(count)]

    async def held(request: Request) -> None:
        await release[request.index].wait()
        await send(request.writer, head(200, length=2) + b"ok")

    prober = Prober(max_inflight=2)
    answers: list[Answer] = []

    async def get(url: str) -> None:
        answers.append(await prober.get(url, LONG_TIMEOUT_S, read_body=True))

    try:
        with anyio.fail_after(DEADLINE_S):
            async with serve(held) as server, anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(get, f"{server.url}/r{i}")
                await server.wait_until(lambda: len(server.requests) >= 2)
                # An observation window for the negative: had the limiter let more through,
                # the other requests (already started) would reach the server on loopback
                # within it. It can only let a broken limiter pass on an overloaded machine,
                # never fail a correct one; the running maximum is checked at every step too.
                await anyio.sleep(0.2)
                assert len(server.requests) == 2
                for i in range(count):
                    await server.wait_for_requests(min(i + 2, count))
                    assert server.inflight <= 2
                    release[i].set()
                # Leaving the task group waits for every get to return.
    finally:
        await prober.aclose()
    assert server.max_inflight == 2  # the bound is reached, and never exceeded
    assert [answer.code for answer in answers] == [200] * count
