"""The durable outbox (stub: events are logged; delivery comes with the alerts issue)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from postdeploy.alerts.config import OutboxSettings, SinkConfig
from postdeploy.events import Event

log = structlog.get_logger("postdeploy.alerts")


class Outbox:
    def __init__(self, root: Path, sinks: Sequence[SinkConfig], settings: OutboxSettings) -> None:
        self.root = root
        self.sinks = list(sinks)
        self.settings = settings

    def reconfigure(self, sinks: Sequence[SinkConfig], settings: OutboxSettings) -> None:
        self.sinks, self.settings = list(sinks), settings

    async def emit(self, event: Event) -> None:
        """Record `event` durably, then let the delivery loop send it to every sink."""
        log.info("event", event_id=event.id, kind=event.kind, severity=str(event.severity))

    async def run(self) -> None:
        """Deliver pending events until cancelled."""
