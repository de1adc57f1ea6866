"""Alert delivery: a durable outbox on disk and the sinks it delivers to."""

from postdeploy.alerts.format import format_telegram
from postdeploy.alerts.outbox import Outbox, pending

__all__ = ["Outbox", "format_telegram", "pending"]
