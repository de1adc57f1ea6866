"""Alert delivery: a durable outbox on disk and the sinks it delivers to.

`Outbox` and `pending` are loaded on first use: the outbox brings anyio, httpx, structlog and
the metrics, and `alerts.config` (this package's submodule, which the config's models import)
must not drag them into `postdeploy arm` or `check-config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from postdeploy.alerts.format import format_telegram

if TYPE_CHECKING:
    from postdeploy.alerts.outbox import Outbox, pending

__all__ = ["Outbox", "format_telegram", "pending"]


def __getattr__(name: str) -> Any:
    """`alerts.Outbox` and `alerts.pending`, imported the first time they are asked for."""
    if name in ("Outbox", "pending"):
        from postdeploy.alerts import outbox

        return getattr(outbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
