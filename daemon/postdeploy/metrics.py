"""Prometheus metrics: what the daemon is doing, for dashboards and alerting rules.

Everything lives in this module's own `REGISTRY` (not prometheus-client's global default), so
only postdeploy's families are exported and tests can read them without side effects. The
recording functions are what the rest of the daemon calls; they are cheap (a lock and an
add) and never raise. `serve()` starts prometheus-client's HTTP server in a daemon thread.

Label values are bounded: `repo` comes from the config's `[repos.NAME]` tables, `sink` from
the `[[alerts]]` tables, `status` and `action` from fixed enums. Work item names are never
labels (one per deploy: they would grow without limit).
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterator
from typing import Any

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
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from postdeploy import __version__

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


def serve(address: tuple[str, int]) -> None:
    """Start the HTTP endpoint serving /metrics on `address` (host, port) in a thread.

    A failure to bind (port taken, address not on this host) is logged as an error and the
    daemon goes on: watching deploys matters more than exporting numbers about it.
    """
    global _server
    host, port = address
    with _server_lock:
        if _server is not None:
            return
        try:
            _server, _ = start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            log.error("metrics.serve_failed", listen=f"{host}:{port}", error=str(exc))
            return
    port = _server.server_address[1]  # the real port when `listen` asked for port 0
    shown = f"[{host}]" if ":" in host else host
    log.info("metrics.serving", listen=f"{shown}:{port}", path="/metrics")
