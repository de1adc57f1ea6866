"""One tick against one service: the health path and every 5xx path, concurrently.

Each request has a hard deadline (`probe_timeout_s`) covering connect, headers and body, so
a target that hangs or trickles bytes costs one failed probe, never more. Bodies are read up
to a bound and never decompressed (`Accept-Encoding: identity`). Redirects are not followed.
Clients are kept per target origin so a hung target's connection pool cannot starve another
target's; a global limiter bounds the requests in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import anyio
import httpx

from postdeploy import __version__
from postdeploy.config import RepoConfig
from postdeploy.series import ProbeRow

HEADERS = {"User-Agent": f"postdeploy/{__version__}", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Answer:
    """One HTTP request's result; `code` is 0 when no answer came."""

    code: int
    latency_ms: float
    body: bytes | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None


def health_problem(answer: Answer) -> str | None:
    """Why a health answer is not healthy, or None: healthy iff HTTP 200 and a JSON object
    whose "status" is "ok"."""
    if not answer.answered:
        return answer.error
    if answer.code != 200:
        return f"HTTP {answer.code}"
    try:
        value = json.loads(answer.body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "HTTP 200 but the body is not JSON"
    if not isinstance(value, dict):
        return "HTTP 200 but the body is not a JSON object"
    if value.get("status") != "ok":
        return f"HTTP 200 but status={value.get('status')!r}"
    return None


def _error_text(exc: Exception) -> str:
    kinds: dict[type[Exception], str] = {
        httpx.ConnectTimeout: "connect timed out",
        httpx.ConnectError: "connection failed",
        httpx.ReadTimeout: "read timed out",
        httpx.RemoteProtocolError: "protocol error",
        httpx.ReadError: "read error",
        httpx.WriteError: "write error",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    text = str(exc).strip()
    return f"{kind}: {text[:120]}" if text else kind


class Prober:
    """Makes the requests of every window; one instance per daemon."""

    def __init__(self, *, max_inflight: int = 256, max_body_bytes: int = 65536) -> None:
        self._limiter = anyio.CapacityLimiter(max_inflight)
        self._max_body = max_body_bytes
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, url: httpx.URL) -> httpx.AsyncClient:
        origin = f"{url.scheme}://{url.netloc.decode()}"
        client = self._clients.get(origin)
        if client is None:
            client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                headers=HEADERS,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
            self._clients[origin] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def get(self, url: str, timeout: float, *, read_body: bool) -> Answer:
        """GET `url` within `timeout` seconds overall; never raises for network trouble."""
        target = httpx.URL(url)
        client = self._client(target)
        async with self._limiter:
            start = time.perf_counter()
            with anyio.move_on_after(timeout):
                try:
                    return await self._request(client, target, timeout, read_body, start)
                except httpx.TimeoutException:
                    pass  # reported below, like the overall deadline
                except (httpx.HTTPError, OSError) as exc:
                    return Answer(0, _elapsed_ms(start), error=_error_text(exc))
            return Answer(0, _elapsed_ms(start), error=f"timed out after {timeout:g}s")

    async def _request(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL,
        timeout: float,
        read_body: bool,
        start: float,
    ) -> Answer:
        async with client.stream("GET", url, timeout=timeout) as response:
            if not read_body:
                return Answer(response.status_code, _elapsed_ms(start))
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self._max_body:
                    return Answer(
                        response.status_code,
                        _elapsed_ms(start),
                        error=f"HTTP {response.status_code} body over {self._max_body} bytes",
                    )
            return Answer(response.status_code, _elapsed_ms(start), bytes(body))

    async def probe(
        self, repo: RepoConfig, timeout: float, tick: int, scheduled_ts: float, catch_up: bool
    ) -> ProbeRow:
        """One tick: the health path and all 5xx paths at once."""
        ts = time.time()
        answers: dict[str, Answer] = {}

        async def fetch(path: str, read_body: bool) -> None:
            answers[path] = await self.get(repo.base_url + path, timeout, read_body=read_body)

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, repo.health_path, True)
            for path in repo.fivexx_paths:
                if path != repo.health_path:
                    tg.start_soon(fetch, path, False)
        health = answers[repo.health_path]
        problem = health_problem(health)
        parts = [f"health {'ok' if problem is None else problem}"]
        codes: dict[str, int] = {}
        fivexx = 0
        for path in repo.fivexx_paths:
            answer = answers[path]
            codes[path] = answer.code
            bad = not answer.answered or 500 <= answer.code <= 599
            fivexx += bad
            parts.append(f"{path} {answer.error if not answer.answered else answer.code}")
        return ProbeRow(
            tick=tick,
            scheduled_ts=scheduled_ts,
            ts=ts,
            health_ok=problem is None,
            health_code=health.code,
            total=len(repo.fivexx_paths),
            fivexx=fivexx,
            latency_ms=health.latency_ms,
            detail="; ".join(parts),
            catch_up=catch_up,
            codes=codes,
        )


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
