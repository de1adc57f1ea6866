"""One tick against one service: the health path and every 5xx path, concurrently.

Each request has a hard deadline (`probe_timeout_s`) covering connect, headers and body, so
a target that hangs or trickles bytes costs one failed probe, never more. Bodies are read up
to a bound and never decompressed (`Accept-Encoding: identity`). Redirects are not followed.
A hung service can hold only a few of the global slots that bound the requests in flight.

Health requests have global slots of their own, apart from every other request's (5xx paths,
feature checks, control probes): when many windows tick at once, a window's health request
must not queue behind the other windows' secondary requests. It is what the verdict's
consecutive-failure rule rests on, and its arrival at the target is when the tick happened.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx

from postdeploy import __version__
from postdeploy.checks import Condition, Response, Result, evaluate_all, json_number, judge_sample
from postdeploy.config import HttpCheck, ProbeSettings, PrometheusCheck, RepoConfig
from postdeploy.errors import error_text, short
from postdeploy.series import ProbeRow
from postdeploy.transport import ON_SENT, RESOLVING, SSL_CONTEXT, LeanTransport

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


def health_problem(
    answer: Answer, expect: tuple[Condition, ...] | list[Condition] | None = None
) -> str | None:
    """Why a health answer is not healthy, or None. Healthy iff every condition of `expect`
    (the repo's `health_expect`) holds; without them, iff HTTP 200 and a JSON object whose
    "status" is "ok"."""
    if not answer.answered:
        return answer.error
    if expect is not None:
        response = Response(answer.code, answer.latency_ms, answer.body or b"")
        result = evaluate_all(list(expect), response)
        return None if result.ok else result.detail
    if answer.code != 200:
        return f"HTTP {answer.code}"
    try:
        value = json.loads(answer.body or b"")
    except (ValueError, RecursionError):  # bad JSON or UTF-8, an int over the digit limit, too deep
        return "HTTP 200 but the body is not JSON"
    if not isinstance(value, dict):
        return "HTTP 200 but the body is not a JSON object"
    if value.get("status") != "ok":
        return f"HTTP 200 but status={short(repr(value.get('status')))}"
    return None


# A tick's other requests wait at most this long (and a tenth of the probe timeout) for its
# health request to be written to its connection (see `Prober.probe`).
HEAD_START_S = 0.05

# Requests in flight to one service. A service that hangs can then hold at most this many of
# the global slots (of both classes together), and a burst of ticks on one service queues in
# our O(1) limiter.
PER_SERVICE = 8


class Prober:
    """Makes the requests of every window; one instance per daemon.

    Requests go straight to a `LeanTransport` (httpx's client layer, with its cookie jar,
    auth and redirect machinery, costs more CPU than the request itself and none of it is
    wanted here): `httpx.Request` in, `httpx.Response` out.

    Every request takes two slots: its service's (at most `PER_SERVICE` in flight), then a
    global one. The global slots come in two classes of `max_inflight` each, so at most
    2 x `max_inflight` requests are in flight overall:

    - urgent: the health request of each tick (`probe`, or `request(..., urgent=True)`);
    - the rest: 5xx paths, feature checks, Prometheus queries, control and baseline probes.

    Both are FIFO. With a single class, 200 windows ticking in the same instant queued a late
    window's health request behind hundreds of the others' secondary requests (200+ ms late).
    With two, a health request waits only for other windows' health requests.
    """

    def __init__(
        self,
        *,
        max_inflight: int = 256,
        max_body_bytes: int = 65536,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: where requests go (default: a `LeanTransport`); tests pass an
        `httpx.MockTransport` to run the daemon in-process without a network."""
        # asyncio's semaphores, not anyio's limiters: an anyio limiter yields to the event loop
        # on every acquire, even a free one, and each request takes two. Two plain semaphores
        # (one per class, see the class docstring) rather than a priority semaphore: nothing
        # hand-written to get wrong when a waiter is cancelled.
        self._urgent_limiter = asyncio.Semaphore(max_inflight)  # health requests
        self._limiter = asyncio.Semaphore(max_inflight)  # every other request
        self._max_body = max_body_bytes
        self._services: dict[str, asyncio.Semaphore] = {}
        # One TLS context for every connection: building one costs 100+ ms of CPU (it loads
        # the CA bundle), which would stall the event loop.
        self._tls = ssl.create_default_context()
        self._transport = transport or LeanTransport(ssl_context=self._tls)
        self._urls: dict[str, httpx.URL] = {}

    def _service_limiter(self, url: httpx.URL, service: str | None) -> asyncio.Semaphore:
        """The limiter of `service` (a repo's base_url: one per configured service, so their
        number is bounded by the config), else of the URL's origin."""
        key = service or f"{url.scheme}://{url.netloc.decode()}"
        limiter = self._services.get(key)
        if limiter is None:
            limiter = self._services[key] = asyncio.Semaphore(PER_SERVICE)
        return limiter

    def _url(self, url: str | httpx.URL) -> httpx.URL:
        """Parsed URL; the few a window probes every tick are parsed once."""
        if isinstance(url, httpx.URL):
            return url
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < 100_000:  # bounded by the config in practice; a safety cap
                self._urls[url] = parsed
        return parsed

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def get(
        self,
        url: str,
        timeout: float,
        *,
        read_body: bool,
        service: str | None = None,
        urgent: bool = False,
        on_sent: Callable[[], object] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Answer:
        """GET `url` within `timeout` seconds overall; never raises for network trouble."""
        return await self.request(
            "GET",
            url,
            timeout,
            read_body=read_body,
            service=service,
            urgent=urgent,
            on_sent=on_sent,
            ssl_context=ssl_context,
        )

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        timeout: float,
        *,
        read_body: bool = True,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        service: str | None = None,
        urgent: bool = False,
        on_sent: Callable[[], object] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Answer:
        """One request within `timeout` seconds overall (connect, headers and body).

        `urgent` (a tick's health request) takes a global slot of the urgent class, so it
        never waits behind the non-urgent requests in flight or queued (see the class).
        `on_sent` is called once the request is written to its connection. `ssl_context`
        (built once per config load) replaces the default one for a TLS connection."""
        target = self._url(url)
        extensions: dict[str, Any] = {}
        if on_sent is not None:
            extensions[ON_SENT] = on_sent
        if ssl_context is not None:
            extensions[SSL_CONTEXT] = ssl_context
        limiter = self._urgent_limiter if urgent else self._limiter
        # The service's slot first: a request waiting on a busy service holds no global slot.
        async with self._service_limiter(target, service), limiter:
            start = time.perf_counter()
            got: list[Answer] = []  # the answer once it is in, even if draining the body fails
            request: httpx.Request | None = None
            with anyio.move_on_after(timeout):
                try:
                    request = httpx.Request(
                        method,
                        target,
                        headers={**HEADERS, **headers} if headers else HEADERS,
                        content=content,
                        extensions=extensions or None,
                    )
                    return await self._send(request, read_body, start, got)
                except (httpx.HTTPError, OSError) as exc:
                    if got:
                        return got[0]
                    return Answer(0, _elapsed_ms(start), error=error_text(exc))
            if got:
                return got[0]
            # The transport marks a request still waiting on DNS: say so (it never reached
            # the target).
            resolving = request is not None and request.extensions.get(RESOLVING)
            stage = "name resolution " if resolving else ""
            return Answer(0, _elapsed_ms(start), error=f"{stage}timed out after {timeout:g}s")

    async def _send(
        self, request: httpx.Request, read_body: bool, start: float, got: list[Answer]
    ) -> Answer:
        response = await self._transport.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        code = response.status_code
        try:
            if not read_body:
                got.append(Answer(code, _elapsed_ms(start)))
                # Read the (bounded) body all the same: a response closed unread closes its
                # connection, so every such request would open a new one.
                received = 0
                async for chunk in stream:
                    received += len(chunk)
                    if received > self._max_body:
                        break
                return got[0]
            body = bytearray()
            async for chunk in stream:
                body += chunk
                if len(body) > self._max_body:
                    return Answer(
                        code,
                        _elapsed_ms(start),
                        error=f"HTTP {code} body over {self._max_body} bytes",
                    )
            return Answer(code, _elapsed_ms(start), bytes(body))
        finally:
            await stream.aclose()

    async def probe(
        self,
        repo: RepoConfig,
        timeout: float,
        tick: int,
        scheduled_ts: float,
        catch_up: bool,
        *,
        urgent: bool = True,
    ) -> ProbeRow:
        """One tick: the health path, the 5xx paths, the feature checks and the control
        probe, all at once.

        The health request goes out first: it runs in this task (the others start when this
        task first waits), takes an urgent slot, and the others wait until it is written to
        its connection (at most HEAD_START_S, and a tenth of `timeout`). Over a kept-alive
        connection it is written at once and nobody waits; with none open, hundreds of
        windows ticking together would open every connection of every request at once, and
        the health requests' connects would queue behind the others'. Like the wait for a
        request slot, that wait is not part of a request's own `timeout`.

        `urgent=False` (a baseline probe, see sampler.py): its health request takes a
        non-urgent slot, never one a window's tick needs."""
        ts = time.time()
        settings = repo.resolved_probe  # prepared when the config was loaded
        if settings is None:  # a repo validated on its own: once, off the event loop
            settings = await anyio.to_thread.run_sync(repo.resolve_probe)
        tls = settings.ssl_context  # for every request to base_url
        answers: dict[str, Answer] = {}
        checks: dict[str, dict[str, Any]] = {}
        control: list[Answer] = []
        health_out = asyncio.Event()  # the health request is written, or has ended

        async def after_health() -> None:
            if not health_out.is_set():
                with anyio.move_on_after(min(HEAD_START_S, timeout / 10)):
                    await health_out.wait()

        async def fetch(path: str) -> None:
            await after_health()
            answers[path] = await self.get(
                repo.base_url + path,
                timeout,
                read_body=False,
                service=repo.base_url,
                ssl_context=tls,
            )

        async def check(spec: HttpCheck | PrometheusCheck) -> None:
            await after_health()
            deadline = spec.timeout_s or timeout
            if isinstance(spec, HttpCheck):
                checks[spec.name] = await self._http_check(repo, spec, deadline, tls)
            else:
                checks[spec.name] = await self._prometheus_check(spec, deadline)

        async def fetch_control(url: str) -> None:
            await after_health()
            control.append(await self.get(url, timeout, read_body=False))

        async with anyio.create_task_group() as tg:
            for path in repo.fivexx_paths:
                if path != repo.health_path:
                    tg.start_soon(fetch, path)
            for spec in repo.checks:
                tg.start_soon(check, spec)
            if repo.control_url:
                tg.start_soon(fetch_control, repo.control_url)
            try:
                answers[repo.health_path] = await self.get(
                    repo.base_url + repo.health_path,
                    timeout,
                    read_body=True,
                    service=repo.base_url,
                    urgent=urgent,
                    on_sent=health_out.set,
                    ssl_context=tls,
                )
            finally:
                health_out.set()
        return _row(repo, settings, answers, checks, control, tick, scheduled_ts, ts, catch_up)

    async def _http_check(
        self, repo: RepoConfig, spec: HttpCheck, timeout: float, tls: ssl.SSLContext | None
    ) -> dict[str, Any]:
        # The secret header values were read when the config was loaded, not now.
        if spec.secret_problem is not None:
            # Our configuration, not the service, is broken: never held against it.
            return {"ok": None, "detail": spec.secret_problem}
        body = spec.body.encode() if spec.body is not None else None
        answer = await self.request(
            spec.method,
            repo.base_url + spec.path,
            timeout,
            headers=spec.request_headers,
            content=body,
            service=repo.base_url,
            ssl_context=tls,
        )
        response = Response(answer.code, answer.latency_ms, answer.body or b"", answer.error)
        return _http_result(spec, response, evaluate_all(spec.conditions, response))

    async def _prometheus_check(self, spec: PrometheusCheck, timeout: float) -> dict[str, Any]:
        url = httpx.URL(spec.url + "/api/v1/query", params={"query": spec.query})
        answer = await self.request("GET", url, timeout)
        latency = round(answer.latency_ms, 3)
        try:
            values = prometheus_values(answer)
        except ValueError as exc:
            # Prometheus itself is unwell: that says nothing about the service.
            return {"ok": None, "latency_ms": latency, "detail": f"prometheus: {exc}"}
        result = judge_sample(values, spec.bound, spec.no_data == "fail")
        entry: dict[str, Any] = {
            "ok": result.ok,
            "value": result.value,
            "latency_ms": latency,
            "detail": f"{spec.query}: {result.detail}",
        }
        if result.no_data:
            entry["no_data"] = True
        return entry


def prometheus_values(answer: Answer) -> list[float]:
    """The sample values of an instant query's answer; ValueError when it is not one."""
    if not answer.answered:
        raise ValueError(str(answer.error))
    if answer.code != 200:
        raise ValueError(f"HTTP {answer.code}")
    try:
        document = json.loads(answer.body or b"")
        data = document["data"]
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return [float(result[1])]
        if kind == "vector":
            return [float(sample["value"][1]) for sample in result]
        if kind == "matrix":
            return [float(series["values"][-1][1]) for series in result if series["values"]]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"unexpected answer: {type(exc).__name__}: {exc}") from None
    raise ValueError(f"unsupported result type {kind!r}")


def _http_result(spec: HttpCheck, response: Response, result: Result) -> dict[str, Any]:
    """An HTTP check's entry in the row; with `number`, the number at its `baseline_number`
    JSON path when the answer has one (what the baseline comparison reads)."""
    entry: dict[str, Any] = {
        "ok": result.ok,
        "value": result.value,
        "latency_ms": round(response.latency_ms, 3),
        "detail": result.detail,
    }
    if spec.baseline_number != "latency_ms" and response.error is None:
        number = json_number(response.body, spec.baseline_number)
        if number is not None:
            entry["number"] = number
    return entry


def _row(
    repo: RepoConfig,
    settings: ProbeSettings,
    answers: dict[str, Answer],
    checks: dict[str, dict[str, Any]],
    control: list[Answer],
    tick: int,
    scheduled_ts: float,
    ts: float,
    catch_up: bool,
) -> ProbeRow:
    """Fold one tick's answers into its series row."""
    health = answers[repo.health_path]
    problem = health_problem(health, settings.health_expect)
    parts = [f"health {'ok' if problem is None else problem}"]
    codes: dict[str, int] = {}
    fivexx = 0
    for path in repo.fivexx_paths:
        answer = answers[path]
        codes[path] = answer.code
        fivexx += not answer.answered or 500 <= answer.code <= 599
        parts.append(f"{path} {answer.error if not answer.answered else answer.code}")
    for name, result in sorted(checks.items()):
        if result["ok"] is not True:
            state = "FAIL" if result["ok"] is False else "n/a"
            parts.append(f"check {name} {state}: {result['detail']}")
    row = ProbeRow(
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
        checks=checks,
    )
    if control and not control[0].answered and row.service_failed:
        detail = f"{row.detail}; control unreachable too ({control[0].error}): inconclusive"
        row = replace(row, inconclusive=True, detail=detail)
    return row


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
