"""Prometheus metrics (stub: filled in by the operations issue). Calls are cheap no-ops."""

from __future__ import annotations


def probe_recorded(repo: str, ok: bool, latency_s: float, lateness_s: float) -> None:
    """A tick's probe was made: its result, its health latency, its lateness vs schedule."""


def window_finished(repo: str, status: str, action: str) -> None:
    """A window ended with `status` and `action`."""


def rollback_finished(repo: str, action: str) -> None:
    """A rollback command ended (ROLLBACK_OK / ROLLBACK_FAILED / ROLLBACK_UNKNOWN)."""


def open_windows(count: int) -> None:
    """How many windows are open now."""


def serve(address: tuple[str, int]) -> None:
    """Start the HTTP endpoint serving /metrics on `address` (host, port) in a thread."""


def outbox_backlog(count: int) -> None:
    """How many (event, sink) deliveries are pending."""


def alert_delivered(sink: str, ok: bool) -> None:
    """One delivery attempt to `sink` ended."""
