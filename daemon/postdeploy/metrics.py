"""Prometheus metrics: what the daemon is doing, for dashboards and alerting rules.

Everything lives in this module's own `REGISTRY` (not prometheus-client's global default), so
only postdeploy's families are exported and tests can read them without side effects. The
recording functions are what the rest of the daemon calls; they are cheap (a lock and an
add) and never raise. `serve()` starts prometheus-client's HTTP server in a daemon thread.

Label values are bounded: `repo` comes from the config's `[repos.NAME]` tables, `sink` from
the `[[alerts]]` tables, `status` and `action` from fixed enums. Work item names are never
labels (one per deploy: they would grow without limit).

The same listener serves the pages a person looks at: `/` is the status page (`statuspage`,
made from what `postdeploy status` reads) and `/w/REPO/ITEM` one window's page
(`windowpage`). They are made in the listener's request threads, never on the event loop, from
the files in the state directory only, so they work the same after a restart. Every other path
is prometheus-client's (`/metrics`).
"""

from __future__ import annotations

import bisect
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest, make_wsgi_app
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from postdeploy import __version__
from postdeploy.layout import ItemKey, UnsafePath, open_item_dir, valid_name
from postdeploy.statuspage import render_error_page, render_status_page

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from postdeploy.config import Config

log = structlog.get_logger("postdeploy.metrics")

# No `*_created` series: they double the series count and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (memory, CPU, open file descriptors: one task and a few sockets per window) and
# python_info, from /proc/self; they read /proc/stat too, so the unit keeps ProcSubset=all.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Probe latency: a service's health path, from a few ms to the probe timeout (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Tick lateness: how long after its scheduled time a probe started. Normally a millisecond or
# two; tens of ms means a busy event loop; seconds means the host was starved or asleep.
LATENESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)

INFO = Info("postdeploy", "The running postdeploy's version.", registry=REGISTRY)
INFO.info({"version": __version__})

OPEN_WINDOWS = Gauge(
    "postdeploy_open_windows", "Windows being watched right now.", registry=REGISTRY
)


class _ProbeFamilies(Collector):
    """`postdeploy_probes_total{repo,result}` and `postdeploy_probe_latency_seconds{repo}`.

    Recorded on every tick of every window, so kept lean: one flat list of numbers per repo
    ([ok, failed, latency sum, one count per bucket]), rendered into the two families only
    when scraped. prometheus-client's own labelled children keep a lock and a value object
    per bucket: ~40 objects per repo that every full collection of the cyclic GC walks, and
    a locked `labels()` lookup per call.
    """

    def __init__(self) -> None:
        self._repos: dict[str, list[float]] = {}

    def record(self, repo: str, ok: bool, latency_s: float) -> None:
        counts = self._repos.get(repo)
        if counts is None:
            counts = self._repos[repo] = [0.0] * (3 + len(LATENCY_BUCKETS) + 1)
        counts[0 if ok else 1] += 1
        counts[2] += latency_s
        # Bucket i counts values <= LATENCY_BUCKETS[i]; the last one is +Inf only.
        counts[3 + bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1

    def collect(self) -> Iterator[Metric]:
        probes = CounterMetricFamily(
            "postdeploy_probes",
            "Probes (one per tick) by repo and result (ok, failed).",
            labels=["repo", "result"],
        )
        latency = HistogramMetricFamily(
            "postdeploy_probe_latency_seconds",
            "Latency of the health request of each probe.",
            labels=["repo"],
        )
        for repo, counts in sorted(self._repos.items()):
            ok, failed, total_s, *buckets = list(counts)  # a snapshot: the loop keeps counting
            probes.add_metric([repo, "ok"], ok)
            probes.add_metric([repo, "failed"], failed)
            bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
            latency.add_metric(
                [repo],
                buckets=list(zip(bounds, itertools.accumulate(buckets), strict=True)),
                sum_value=total_s,
            )
        yield probes
        yield latency


_PROBES = _ProbeFamilies()
REGISTRY.register(_PROBES)
# One histogram for the daemon, not one per repo: lateness measures the daemon's scheduler,
# and a labelled histogram costs ~60 tracked objects per repo that every full collection of
# the cyclic GC walks.
TICK_LATENESS = Histogram(
    "postdeploy_tick_lateness_seconds",
    "How long after its scheduled time each probe started.",
    buckets=LATENESS_BUCKETS,
    registry=REGISTRY,
)
WINDOWS_FINISHED = Counter(
    "postdeploy_windows_finished",
    "Finished windows by repo, verdict (status) and action taken.",
    ["repo", "status", "action"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "postdeploy_rollbacks",
    "Rollback commands by repo and result (ROLLBACK_OK, ROLLBACK_FAILED, ROLLBACK_UNKNOWN).",
    ["repo", "result"],
    registry=REGISTRY,
)
ALERT_DELIVERIES = Counter(
    "postdeploy_alert_deliveries",
    "Alert delivery attempts by sink and result (ok, failed).",
    ["sink", "result"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "postdeploy_outbox_backlog",
    "Alert deliveries (event, sink) written to disk and not yet delivered.",
    registry=REGISTRY,
)

_server_lock = threading.Lock()
_server: Any = None  # the running HTTP server, so a second serve() does not bind twice


def _result(ok: bool) -> str:
    return "ok" if ok else "failed"


def probe_recorded(repo: str, ok: bool, latency_s: float, lateness_s: float) -> None:
    """A tick's probe was made: its result, its health latency, its lateness vs schedule."""
    _PROBES.record(repo, ok, max(0.0, latency_s))
    # A probe can start a hair before its scheduled wall time (clock rounding): that is 0 late.
    TICK_LATENESS.observe(max(0.0, lateness_s))


def window_finished(repo: str, status: str, action: str) -> None:
    """A window ended with `status` and `action`."""
    WINDOWS_FINISHED.labels(repo=repo, status=status, action=action).inc()


def rollback_finished(repo: str, action: str) -> None:
    """A rollback command ended (ROLLBACK_OK / ROLLBACK_FAILED / ROLLBACK_UNKNOWN)."""
    ROLLBACKS.labels(repo=repo, result=action).inc()


def open_windows(count: int) -> None:
    """How many windows are open now."""
    OPEN_WINDOWS.set(count)


def outbox_backlog(count: int) -> None:
    """How many (event, sink) deliveries are pending."""
    OUTBOX_BACKLOG.set(count)


def alert_delivered(sink: str, ok: bool) -> None:
    """One delivery attempt to `sink` ended."""
    ALERT_DELIVERIES.labels(sink=sink, result=_result(ok)).inc()


def render() -> str:
    """The exposition text, as `/metrics` serves it (for tests and debugging)."""
    return generate_latest(REGISTRY).decode()


# Defence in depth for the pages: no script, no frame, no form, no outside resource may run
# or load, whatever a page holds (every value in it is escaped already).
PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
# Requests this close together share one status page (one read of the state directory). A
# page costs ~160 ms of interpreter time with 2,000 finished windows, taken from the event loop
# (tick lateness: 90.8 % of ticks within 5 ms with a fresh page every second, 98-99.9 % with
# none): at most one page per 5 s bounds that, and the page refreshes itself every 10 s.
SNAPSHOT_REUSE_S = 5.0


class Pages:
    """The WSGI application of the listener: the pages, and Prometheus for every other path.

    `config` returns the daemon's current config (it changes on reload). One status page is
    made at a time, and reused for requests less than SNAPSHOT_REUSE_S apart, so a storm of
    refreshes costs one read of the state directory and one page, not one per request: the
    pages' threads share the interpreter with the event loop, and take turns with it.
    """

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._metrics = make_wsgi_app(REGISTRY)
        self._lock = threading.Lock()
        self._page: tuple[float, str] | None = None

    def page(self) -> str:
        """The status page made from what `postdeploy status --json` prints, read now or
        less than SNAPSHOT_REUSE_S ago."""
        from postdeploy import status

        with self._lock:
            now = time.monotonic()
            if self._page is None or now - self._page[0] >= SNAPSHOT_REUSE_S:
                self._page = (now, render_status_page(status.collect(self._config())))
            return self._page[1]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path != "/" and not path.startswith("/w/"):
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            code, page = "405 Method Not Allowed", render_error_page("405", "GET or HEAD only")
        elif path == "/":
            code, page = self.status_page()
        else:
            code, page = self.window_page(path.removeprefix("/w/"))
        body = page.encode()
        headers = [*PAGE_HEADERS, ("Content-Length", str(len(body)))]
        if code.startswith("405"):
            headers.append(("Allow", "GET, HEAD"))
        start_response(code, headers)
        return [b"" if method == "HEAD" else body]

    def status_page(self) -> tuple[str, str]:
        try:
            return "200 OK", self.page()
        except Exception as exc:  # the page must not take the listener down
            log.exception("page.failed", page="/")
            return "500 Internal Server Error", render_error_page(
                "The status could not be read", f"{type(exc).__name__}: {exc}"
            )

    def window_page(self, rest: str) -> tuple[str, str]:
        """`/w/REPO/ITEM`: both names checked by the name rule before anything is opened, and
        the item directory opened without following a symlink at any level."""
        repo, _, item = rest.partition("/")
        if not (valid_name(repo) and valid_name(item)):
            return "404 Not Found", render_error_page("404", "No such window.")
        key = ItemKey(repo, item)
        config = self._config()
        try:
            with open_item_dir(config.state_path, key):
                pass
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            return "404 Not Found", render_error_page("404", f"No window {key}.")
        except OSError as exc:
            return "500 Internal Server Error", render_error_page(f"{key} is unreadable", str(exc))
        # Loaded when first asked for: the daemon pays for it only if a person looks.
        from postdeploy.windowpage import render_window_page

        try:
            page = render_window_page(config.state_path, key, config)
        except Exception as exc:
            log.exception("page.failed", page="/w", repo=key.repo, work_item=key.work_item)
            return "500 Internal Server Error", render_error_page(
                f"{key} could not be shown", f"{type(exc).__name__}: {exc}"
            )
        return "200 OK", page


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the daemon's log is for the deploys."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(address: tuple[str, int], config: Callable[[], Config] | None = None) -> None:
    """Start the HTTP listener on `address` (host, port) in a thread: /metrics, and with
    `config` (the daemon's current config) the pages.

    A failure to bind (port taken, address not on this host) is logged as an error and the
    daemon goes on: watching deploys matters more than exporting numbers about it.
    """
    global _server
    host, port = address
    with _server_lock:
        if _server is not None:
            return
        app = Pages(config) if config is not None else make_wsgi_app(REGISTRY)

        class Server(ThreadingWSGIServer):  # one request thread each; IPv6 hosts too
            pass

        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            Server.address_family = info[0][0]
            _server = make_server(str(info[0][4][0]), port, app, Server, _QuietHandler)
        except OSError as exc:
            log.error("metrics.serve_failed", listen=f"{host}:{port}", error=str(exc))
            return
        threading.Thread(target=_server.serve_forever, name="metrics", daemon=True).start()
    port = _server.server_address[1]  # the real port when `listen` asked for port 0
    shown = f"[{host}]" if ":" in host else host
    log.info("metrics.serving", listen=f"{shown}:{port}", path="/metrics")
