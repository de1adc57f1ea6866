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

import threading
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
from prometheus_client.exposition import generate_latest, start_http_server

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
PROBES = Counter(
    "postdeploy_probes",
    "Probes (one per tick) by repo and result (ok, failed).",
    ["repo", "result"],
    registry=REGISTRY,
)
PROBE_LATENCY = Histogram(
    "postdeploy_probe_latency_seconds",
    "Latency of the health request of each probe.",
    ["repo"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TICK_LATENESS = Histogram(
    "postdeploy_tick_lateness_seconds",
    "How long after its scheduled time each probe started.",
    ["repo"],
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
    PROBES.labels(repo=repo, result=_result(ok)).inc()
    PROBE_LATENCY.labels(repo=repo).observe(max(0.0, latency_s))
    # A probe can start a hair before its scheduled wall time (clock rounding): that is 0 late.
    TICK_LATENESS.labels(repo=repo).observe(max(0.0, lateness_s))


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
