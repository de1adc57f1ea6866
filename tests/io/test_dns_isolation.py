"""Name resolution in the lean transport: a name that never resolves stalls nothing else.

asyncio resolves names with getaddrinfo in the event loop's default thread pool, the pool
the daemon's file writes (aiofiles) use. The transport resolves names on threads of its own
instead, one lookup per (host, port) at a time. These tests make lookups hang for one name:

- in this process, by replacing `socket.getaddrinfo` (the production resolver calls it on
  its threads) or through the transport's `resolver` seam, synchronised on events;
- in a real subprocess whose libc getaddrinfo is replaced by a small C shim (LD_PRELOAD) that
  sleeps for one name: the same hang a dead DNS server causes, below Python.

Servers are asyncio servers on 127.0.0.1 (port 0); names ending in ".test" resolve to it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from postdeploy.probe import Prober
from postdeploy.transport import SSL_CONTEXT, Address, LeanTransport, ThreadedResolver
from support.aio import eventually, tcp_server
from support.dns_shim import build_hung_dns_shim
from support.tls import self_signed

DEADLINE_S = 20.0  # only reached when something is broken
NO_EXPIRY_S = 3600.0
# More hung lookups than the default thread pool has threads (at most 32) on any machine.
HUNG_REQUESTS = 40
_names = itertools.count()


def hung_name() -> str:
    """A name no other test uses (a lookup of it from an earlier test may still be ending)."""
    return f"hung-{next(_names)}.test"


# --------------------------------------------------------------------------------------------
# A server answering 200 "ok <Host header>" to every request, kept alive
# --------------------------------------------------------------------------------------------


async def answer_with_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """200 "ok <Host header>" to every request on the connection, kept alive."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            host = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"host:")
            )
            body = b"ok " + host
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (asyncio.IncompleteReadError, OSError):
        pass


def serve(tls: ssl.SSLContext | None = None) -> AbstractAsyncContextManager[int]:
    """A server on 127.0.0.1:0 (HTTPS with `tls`) for the block; yields its port."""
    return tcp_server(answer_with_host, tls=tls)


async def get(transport: LeanTransport, url: str, tls: ssl.SSLContext | None = None) -> bytes:
    """One GET, body read; `tls` is the request's own TLS context."""
    request = httpx.Request("GET", url, extensions={SSL_CONTEXT: tls} if tls else None)
    response = await transport.handle_async_request(request)
    assert isinstance(response.stream, httpx.AsyncByteStream)
    try:
        return b"".join([chunk async for chunk in response.stream])
    finally:
        await response.stream.aclose()


# --------------------------------------------------------------------------------------------
# A getaddrinfo that hangs for names starting with "hung"
# --------------------------------------------------------------------------------------------


@dataclass
class FakeDns:
    """Replaces socket.getaddrinfo: "hung*" names block until the test ends, "nxdomain*"
    names do not exist, other ".test" names are 127.0.0.1, the rest is the real lookup."""

    real: Any
    release: threading.Event = field(default_factory=threading.Event)
    hung: list[str] = field(default_factory=list)  # hung lookups started, by name
    lookups: list[str] = field(default_factory=list)  # every name looked up (not literals)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Sequence[Address]:
        if isinstance(host, str) and host.endswith(".test"):
            with self.lock:
                self.lookups.append(host)
                if host.startswith("hung"):
                    self.hung.append(host)
            if host.startswith("hung"):
                self.release.wait(DEADLINE_S * 3)
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            if host.startswith("nxdomain"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = "127.0.0.1"
        result: Sequence[Address] = self.real(host, port, family, type, proto, flags)
        return result


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDns]:
    fake = FakeDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    try:
        yield fake
    finally:
        fake.release.set()  # every hung lookup ends, with an error


async def test_a_hung_name_stalls_neither_the_default_pool_nor_other_requests(
    dns: FakeDns,
) -> None:
    """40 requests wait on a name that never resolves. Meanwhile the default thread pool
    runs work, and requests to an IP literal and to other names complete; the 40 requests
    share a single lookup (one thread)."""
    name = hung_name()
    transport = LeanTransport(keepalive_expiry=NO_EXPIRY_S)
    loop = asyncio.get_running_loop()
    async with serve() as port:
        hung = [
            asyncio.ensure_future(get(transport, f"http://{name}:{port}/"))
            for _ in range(HUNG_REQUESTS)
        ]
        try:
            # Each hung request has asked for its lookup (in its first step) before the
            # work below asks for anything: the work queues behind them wherever they wait.
            await asyncio.sleep(0)
            await eventually(lambda: dns.hung, "the hung lookup starts")
            async with asyncio.timeout(DEADLINE_S):
                assert await loop.run_in_executor(None, sum, [1, 2]) == 3
                assert await get(transport, f"http://127.0.0.1:{port}/") == (
                    f"ok 127.0.0.1:{port}".encode()
                )
                assert await get(transport, f"http://other.test:{port}/") == (
                    f"ok other.test:{port}".encode()
                )
            assert not any(task.done() for task in hung)
            assert dns.hung == [name]  # one lookup for the 40 requests
        finally:
            for task in hung:
                task.cancel()
            await asyncio.gather(*hung, return_exceptions=True)
            await transport.aclose()


async def test_prober_names_dns_trouble(dns: FakeDns) -> None:
    """The Prober's error says when a request never got past name resolution: its deadline
    passed during the lookup, or the name does not exist."""
    prober = Prober()
    try:
        async with serve() as port:
            hung = await prober.get(f"http://{hung_name()}:{port}/health", 0.2, read_body=True)
            assert hung.error == "name resolution timed out after 0.2s"
            missing = await prober.get(f"http://nxdomain.test:{port}/", 5, read_body=True)
            assert missing.error == "name resolution failed: Name or service not known"
            # A name that resolves is probed as usual.
            fine = await prober.get(f"http://ok.test:{port}/", 5, read_body=True)
            assert (fine.code, fine.body) == (200, f"ok ok.test:{port}".encode())
    finally:
        await prober.aclose()


# --------------------------------------------------------------------------------------------
# The resolver seam, and connecting to the resolved address
# --------------------------------------------------------------------------------------------


class Seam:
    """An async resolver: "hung*" names never resolve; the others are 127.0.0.1."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        self.asked.append((host, port))
        if host.startswith("hung"):
            await asyncio.Event().wait()
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]


@pytest.fixture(scope="module")
def named_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name "named.test" only (skips without openssl)."""
    made = self_signed(tmp_path_factory.mktemp("tls"), "named.test", "DNS:named.test")
    return made.cert, made.key


async def test_resolver_seam_and_tls_by_name(named_cert: tuple[Path, Path]) -> None:
    """With a resolver that never answers for one name, requests to other names go on; the
    connection is made to the resolved address while TLS checks the URL's name (the
    certificate is valid for "named.test" only); IP literals are never resolved."""
    crt, key = named_cert
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(crt, key)
    client_tls = ssl.create_default_context(cafile=str(crt))
    seam = Seam()
    transport = LeanTransport(keepalive_expiry=NO_EXPIRY_S, resolver=seam)
    async with serve(server_tls) as port:
        name = hung_name()
        hung = asyncio.ensure_future(get(transport, f"https://{name}:{port}/", tls=client_tls))
        try:
            async with asyncio.timeout(DEADLINE_S):
                body = await get(transport, f"https://named.test:{port}/", tls=client_tls)
                assert body == f"ok named.test:{port}".encode()
                # The IP literal reaches the same server, but its certificate names no IP.
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await get(transport, f"https://127.0.0.1:{port}/", tls=client_tls)
            assert not hung.done()
            assert sorted(seam.asked) == [(name, port), ("named.test", port)]
        finally:
            hung.cancel()
            await asyncio.gather(hung, return_exceptions=True)
            await transport.aclose()


# --------------------------------------------------------------------------------------------
# ThreadedResolver: single flight, cache, failures
# --------------------------------------------------------------------------------------------


class BlockingLookup:
    """A blocking lookup that waits for `release`, counting the calls; "bad*" names fail."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[Address]:
        self.calls.append(host)
        self.release.wait(DEADLINE_S)
        if host.startswith("bad"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


async def test_lookups_of_one_name_share_one_thread_and_one_answer() -> None:
    """Concurrent lookups of a name make one call; a waiter that gives up does not end the
    others' lookup; the answer is kept `ttl` seconds, a failure is not kept."""
    lookup = BlockingLookup()
    resolver = ThreadedResolver(threads=2, ttl=DEADLINE_S * 3, lookup=lookup)
    waiters = [asyncio.ensure_future(resolver("a.test", 80)) for _ in range(10)]
    await eventually(lambda: lookup.calls, "the lookup starts")
    waiters[0].cancel()  # its deadline passed
    await asyncio.gather(waiters[0], return_exceptions=True)
    lookup.release.set()
    answers = await asyncio.wait_for(asyncio.gather(*waiters[1:]), DEADLINE_S)
    expected = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]
    assert answers == [expected] * 9
    assert await resolver("a.test", 80) == expected  # from the cache
    assert lookup.calls == ["a.test"]

    for _ in range(2):
        with pytest.raises(socket.gaierror):
            await asyncio.wait_for(resolver("bad.test", 80), DEADLINE_S)
    assert lookup.calls == ["a.test", "bad.test", "bad.test"]

    uncached = ThreadedResolver(threads=1, ttl=0, lookup=lookup)
    for _ in range(2):
        await asyncio.wait_for(uncached("b.test", 80), DEADLINE_S)
    assert lookup.calls[-2:] == ["b.test", "b.test"]


# --------------------------------------------------------------------------------------------
# The real thing: libc's getaddrinfo hanging, in a subprocess (LD_PRELOAD)
# --------------------------------------------------------------------------------------------


SCRIPT = r"""
import asyncio, ctypes, json, sys
import anyio, httpx
from postdeploy.probe import Prober
from postdeploy.transport import LeanTransport

HUNG, DEADLINE = int(sys.argv[2]), float(sys.argv[3])

async def answer(reader, writer):
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (asyncio.IncompleteReadError, OSError):
        writer.close()

async def get(transport, url):
    response = await transport.handle_async_request(httpx.Request("GET", url))
    body = b"".join([chunk async for chunk in response.stream])
    await response.stream.aclose()
    return body

async def main():
    shim = ctypes.CDLL(sys.argv[1])
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = LeanTransport()
    loop = asyncio.get_running_loop()
    hung = [asyncio.ensure_future(get(transport, f"http://hung.test:{port}/")) for _ in range(HUNG)]
    await asyncio.sleep(0)  # each hung request has asked for its lookup
    counts = {"executor_jobs": 0, "ip_requests": 0, "name_requests": 0}
    with anyio.move_on_after(DEADLINE):  # only reached when something is stalled
        for _ in range(20):
            await loop.run_in_executor(None, sum, [1, 2])
            counts["executor_jobs"] += 1
        for _ in range(5):
            assert await get(transport, f"http://127.0.0.1:{port}/") == b"ok"
            counts["ip_requests"] += 1
        for _ in range(5):
            assert await get(transport, f"http://localhost:{port}/") == b"ok"
            counts["name_requests"] += 1
    counts["hung_pending"] = sum(not task.done() for task in hung)
    prober = Prober()
    answer_ = await prober.get(f"http://hung.test:{port}/health", 0.5, read_body=True)
    counts["prober_error"] = answer_.error
    counts["hung_lookups"] = ctypes.c_int.in_dll(shim, "hung_lookups").value
    print(json.dumps(counts), flush=True)
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)
    await prober.aclose()
    await transport.aclose()
    server.close()

asyncio.run(main())
"""


def test_libc_lookup_hanging_in_a_real_process(tmp_path: Path) -> None:
    """A subprocess whose getaddrinfo sleeps 120 s for "hung.test" (the LD_PRELOAD shim)
    sends 40 requests there, then counts what still works: jobs in the default thread pool,
    requests to 127.0.0.1 and to "localhost" (a real lookup). All of it completes; the 40
    requests and a Prober's cost one lookup, and the Prober says it was DNS that timed
    out. The process then exits at once, the hung lookup's thread notwithstanding."""
    shim = build_hung_dns_shim(tmp_path)
    script = tmp_path / "probe_hung.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(shim), str(HUNG_REQUESTS), str(DEADLINE_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # within DEADLINE_S, plus start-up
        assert line, f"no report; stderr: {process.stderr.read() if process.stderr else ''}"
        counts = json.loads(line)
        assert counts == {
            "executor_jobs": 20,
            "ip_requests": 5,
            "name_requests": 5,
            "hung_pending": HUNG_REQUESTS,
            "prober_error": "name resolution timed out after 0.5s",
            "hung_lookups": 1,
        }
        assert process.wait(timeout=DEADLINE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
