"""A tick's health request never queues behind secondary requests, against a real server.

`Prober` has two classes of global slots, `max_inflight` each: one for the health request of
every tick, one for every other request (5xx paths, feature checks, control probes). These
tests fill the secondary class with requests the server holds until the test releases them,
and show that a health request still reaches the server, and that each class is bounded on
its own.

The server is a small asyncio TCP server on 127.0.0.1:0 (the kit's `support.aio.tcp_server`,
as in `test_probe.py`). It records the order in which requests arrive. Nothing waits on a
sleep: the tests wait for the server's events, with a deadline that is only reached when
something is broken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from postdeploy.config import RepoConfig
from postdeploy.probe import Answer, Prober
from postdeploy.series import ProbeRow
from support.aio import Changes, tcp_server

DEADLINE_S = 20.0  # only reached when something is broken
LONG_TIMEOUT_S = 30.0  # a probe timeout that must never be what ends a test
OK_BODY = b'{"status": "ok"}'
RESPONSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
    len(OK_BODY),
    OK_BODY,
)


@dataclass(eq=False)
class Target(Changes):
    """A server answering every path with 200 {"status": "ok"}; a request for a path in
    `gates` is held until its event is set. `paths` is the order in which requests arrived."""

    gates: dict[str, asyncio.Event]
    port: int = 0
    paths: list[str] = field(default_factory=list)
    inflight: int = 0  # requests received and not yet answered
    max_inflight: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, *paths: str) -> None:
        """Wait until a request for each of `paths` has arrived."""
        await self.wait_until(lambda: all(path in self.paths for path in paths))


@asynccontextmanager
async def target(*held: str) -> AsyncIterator[Target]:
    """Run a `Target` holding requests for `held` paths, for the duration of the block."""
    server = Target(gates={path: asyncio.Event() for path in held})

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            server.paths.append(path)
            server.inflight += 1
            server.max_inflight = max(server.max_inflight, server.inflight)
            server.notify()
            gate = server.gates.get(path)
            if gate is not None:
                await gate.wait()
            server.inflight -= 1
            server.notify()
            writer.write(RESPONSE)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, which the prober is entitled to do

    async with tcp_server(converse) as port:
        server.port = port
        yield server


@asynccontextmanager
async def closing(prober: Prober) -> AsyncIterator[Prober]:
    try:
        yield prober
    finally:
        await prober.aclose()


async def test_health_request_does_not_queue_behind_secondary_requests() -> None:
    """max_inflight=1: /slow holds the only secondary slot and /other waits for it. A tick's
    health request still reaches the server while /slow is held, so before /other; the tick's
    own 5xx path (/status) is secondary and queues behind /other. With a single global class
    the health request would wait for /slow to end."""
    answers: dict[str, Answer] = {}
    rows: list[ProbeRow] = []

    async with target("/slow") as server, closing(Prober(max_inflight=1)) as prober:
        repo = RepoConfig(base_url=server.url, health_path="/health", fivexx_paths=["/status"])

        async def get(path: str) -> None:
            answers[path] = await prober.get(server.url + path, LONG_TIMEOUT_S, read_body=False)

        async def tick() -> None:
            rows.append(await prober.probe(repo, LONG_TIMEOUT_S, 0, time.time(), False))

        with anyio.fail_after(3 * DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, "/slow")
                await server.wait_for("/slow")
                # Tasks take their first step in the order they were started: /other is
                # waiting for the secondary slot before the tick asks for any slot.
                tg.start_soon(get, "/other")
                tg.start_soon(tick)
                try:
                    await server.wait_for("/health")
                except TimeoutError:
                    pytest.fail(
                        f"the health request never arrived while /slow was held: it is "
                        f"queued behind secondary requests (arrived: {server.paths})"
                    )
                assert server.paths == ["/slow", "/health"]  # /slow is still held
                server.gates["/slow"].set()
                # Leaving the task group waits for every request and the tick to end.

    assert server.paths == ["/slow", "/health", "/other", "/status"]
    assert {path: answer.code for path, answer in answers.items()} == {"/slow": 200, "/other": 200}
    [row] = rows
    assert row.health_ok, row.detail
    assert row.detail == "health ok; /status 200"


async def test_each_class_has_max_inflight_slots_of_its_own() -> None:
    """max_inflight=1: one urgent and one secondary request are in flight together (2 x
    max_inflight overall); a second request of each class waits for its own class's slot,
    and only for that one."""
    answers: dict[str, Answer] = {}
    held = ("/u1", "/s1", "/u2", "/s2")

    async with target(*held) as server, closing(Prober(max_inflight=1)) as prober:

        async def get(path: str, urgent: bool) -> None:
            answers[path] = await prober.get(
                server.url + path, LONG_TIMEOUT_S, read_body=True, urgent=urgent
            )

        with anyio.fail_after(3 * DEADLINE_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, "/u1", True)
                tg.start_soon(get, "/s1", False)
                await server.wait_for("/u1", "/s1")
                tg.start_soon(get, "/u2", True)
                tg.start_soon(get, "/s2", False)
                # /s1 ends: its slot goes to /s2, while /u2 still waits for /u1's.
                server.gates["/s1"].set()
                await server.wait_for("/s2")
                assert "/u2" not in server.paths
                server.gates["/u1"].set()
                await server.wait_for("/u2")
                for path in held:
                    server.gates[path].set()

    assert sorted(server.paths) == sorted(held)
    assert server.paths.index("/s2") < server.paths.index("/u2")
    assert server.max_inflight == 2  # one slot of each class, never more
    assert {path: answer.code for path, answer in answers.items()} == dict.fromkeys(held, 200)
    assert all(answer.body == OK_BODY for answer in answers.values())
