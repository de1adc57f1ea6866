"""Logging set-up: one JSON object per line on stdout for journald, colours on a terminal.

Context (`repo`, `work_item`) is bound with structlog's contextvars by each window's task, so
every line about a window carries it without passing it around. Standard-library loggers
(httpx, watchfiles) are rendered through the same processors.

Under systemd (`JOURNAL_STREAM` set) each line is prefixed with `<N>`, the syslog priority,
which journald strips and stores, so `journalctl -p warning` shows warnings and worse while
`journalctl -o cat` still prints pure JSON. Known secret values are masked in every line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRETS: set[str] = set()
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def register_secret(value: str) -> None:
    """Mask `value` wherever it would appear in a log line (ignored if too short to matter)."""
    if len(value) >= 6:
        _SECRETS.add(value)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _SECRETS:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def mask_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if not _SECRETS:
        return event
    return {k: _mask(v) for k, v in event.items()}


class _JournalPrefix:
    """Wrap a renderer to put journald's `<N>` priority prefix before each line."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        priority = _PRIORITY.get(str(event.get("level", "info")), 6)
        line = self._renderer(logger, name, event)
        return f"<{priority}>{line if isinstance(line, str) else str(line)}"


def configure(
    level: str = "info", *, stream: TextIO | None = None, force_json: bool = False
) -> None:
    """Configure structlog and the standard library's logging once, at start-up."""
    out = stream or sys.stdout
    tty = out.isatty() and not force_json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.StackInfoRenderer(),
        mask_secrets,
    ]
    renderer: Processor
    if tty:
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        if os.environ.get("JOURNAL_STREAM"):
            renderer = _JournalPrefix(renderer)
    # Tracebacks as data, without local variables: they are long and may hold secrets.
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    final: list[Processor] = [] if tty else [tracebacks]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *final, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *final,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries speak only when it matters


def get(name: str = "postdeploy") -> Any:
    """A structlog logger."""
    return structlog.get_logger(name)


def context(**values: Any) -> None:
    """Bind values to every log line of the current task (and tasks it starts)."""
    structlog.contextvars.bind_contextvars(**values)
