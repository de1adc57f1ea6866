"""Alert delivery: a durable outbox on disk and the sinks it delivers to."""

from postdeploy.alerts.outbox import Outbox

__all__ = ["Outbox"]
