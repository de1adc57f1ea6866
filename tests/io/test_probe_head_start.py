"""A tick's other requests follow its health request onto the wire, against real servers.

With no connection open yet (the first tick of hundreds of windows at once), every request of
every tick would open its connection at the same time and the health requests' connects would
queue behind the others'. So a tick's secondary requests (5xx paths, checks, the control
probe) wait until its health request is written to its connection, at most a head start.
Over a kept-alive connection the health request is written at once and nothing waits.

The health request is held unwritten by a server that takes the TCP connection, reads the TLS
ClientHello and never answers it: the client's TLS handshake, so its connect, stays pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from postdeploy import probe
from postdeploy.config import RepoConfig
from postdeploy.probe import Prober

DEADLINE_S = 20.0  # only reached when something is broken
TIMEOUT_S = 600.0  # the probe timeout; a tenth of it is above the head start the tests set
HEAD_START_S = 30.0  # far above any delay a loaded machine adds
OK = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"status": "ok"}'


class Recorder:
    """An HTTP server that answers every request with 200 {"status": "ok"} (keep-alive) and
    records each request's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.arrived = asyncio.Condition()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                async with self.arrived:
                    self.paths.append(head.split(b" ", 2)[1].decode())
                    self.arrived.notify_all()
                writer.write(OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def wait_for(self, path: str) -> None:
        async with asyncio.timeout(DEADLINE_S), self.arrived:
            await self.arrived.wait_for(lambda: path in self.paths)


class TlsStall:
    """Takes TCP connections, reads the TLS ClientHello, then holds until `release()`."""

    def __init__(self) -> None:
        self.hello = asyncio.Event()
        self._release = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)  # the first byte of the ClientHello
            self.hello.set()
            await self._release.wait()
        finally:
            writer.close()  # the handshake fails: the health request ends, unanswered

    def release(self) -> None:
        self._release.set()


@asynccontextmanager
async def serving(handler: Recorder | TlsStall) -> AsyncIterator[None]:
    listener = await asyncio.start_server(handler.handle, "127.0.0.1", 0)
    handler.port = listener.sockets[0].getsockname()[1]
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            if isinstance(handler, TlsStall):
                handler.release()
            listener.close()
            await listener.wait_closed()


async def test_secondary_requests_wait_for_the_health_request_to_be_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The health request's connect is held: the control probe waits (no request arrives);
    once the health request has ended, the control probe goes out."""
    monkeypatch.setattr(probe, "HEAD_START_S", HEAD_START_S)
    stall, control = TlsStall(), Recorder()
    async with serving(stall), serving(control):
        prober = Prober()
        repo = RepoConfig(
            base_url=f"https://127.0.0.1:{stall.port}",
            fivexx_paths=[],
            control_url=f"http://127.0.0.1:{control.port}/control",
        )
        try:
            async with anyio.create_task_group() as tg:
                rows = []

                async def tick() -> None:
                    rows.append(await prober.probe(repo, TIMEOUT_S, 0, 0.0, False))

                tg.start_soon(tick)
                with anyio.fail_after(DEADLINE_S):
                    await stall.hello.wait()  # the health request is connecting
                # The control probe would have gone out at once (it did before the head
                # start): give it ample time to show up, far less than the head start.
                with anyio.move_on_after(1.0):
                    await control.wait_for("/control")
                assert control.paths == [], "a secondary request went out before the health"
                stall.release()
                await control.wait_for("/control")
        finally:
            await prober.aclose()
    [row] = rows
    assert not row.health_ok
    assert not row.inconclusive  # the control probe was answered: the service is at fault


async def test_over_a_kept_alive_connection_nothing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second tick's health request is written at once over the pooled connection, so
    its 5xx path goes out without waiting for the head start."""
    monkeypatch.setattr(probe, "HEAD_START_S", HEAD_START_S)
    server = Recorder()
    async with serving(server):
        prober = Prober()
        repo = RepoConfig(base_url=f"http://127.0.0.1:{server.port}", fivexx_paths=["/status"])
        try:
            first = await prober.probe(repo, TIMEOUT_S, 0, 0.0, False)
            assert first.health_ok and first.fivexx == 0, first.detail
            with anyio.fail_after(10.0):  # far below the 30 s a wait would take
                second = await prober.probe(repo, TIMEOUT_S, 1, 0.0, False)
        finally:
            await prober.aclose()
    assert second.health_ok and second.fivexx == 0, second.detail
    assert server.paths[-2:] == ["/health", "/status"]
