"""Logging set-up: one JSON object per line on stdout for journald, colours on a terminal.

Context (`repo`, `work_item`) is bound with structlog's contextvars by each window's task, so
every line about a window carries it without passing it around. Standard-library loggers
(httpx, anyio) are rendered through the same processors, and both write through one
locked writer, so lines from threads never interleave.

Under systemd, when stdout *is* the journal stream (`$JOURNAL_STREAM` names its device and
inode, as systemd.exec(5) describes), each line is prefixed with `<N>`, the syslog priority,
which journald strips and stores: `journalctl -p warning` shows warnings and worse while
`journalctl -o cat` still prints pure JSON. A child that inherited the variable but writes
elsewhere gets no prefix.

Secrets: a value registered with `register_secret` is replaced by `***` in every line, both
in the event's values and in the rendered text (so a secret inside an exception message or
an object's repr is caught too). `configure()` registers, on its own, the values of
environment variables whose names look secret (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`,
`*API_KEY*`, ...) and of systemd credentials (`$CREDENTIALS_DIRECTORY`);
`register_config_secrets()` adds those the config names (`secret_env`, `bot_token_env`,
`headers_env`).

structlog is imported by `configure()` and `get()` only: the config imports this module for
its secrets, and `postdeploy arm` must not pay for a logging library it never uses.
`import structlog` also imports rich (below), which only the terminal's colours need.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words all over the logs
MAX_CREDENTIAL_BYTES = 64 * 1024
SECRET_NAME_RE = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|PRIVATE_?KEY|AUTHORIZATION|COOKIE",
    re.IGNORECASE,
)

# Every spelling of a secret that may reach a rendered line: as is, JSON-escaped, repr-escaped.
_SECRETS: set[str] = set()
_secrets_lock = threading.Lock()
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def register_secret(value: str) -> None:
    """Mask `value` wherever it would appear in a log line (ignored if too short to matter)."""
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    spellings = {value, json.dumps(value)[1:-1], repr(value)[1:-1]}
    with _secrets_lock:
        _SECRETS.update(s for s in spellings if len(s) >= MIN_SECRET_LENGTH)


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    with _secrets_lock:
        _SECRETS.clear()


def secret_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret called `name`: the environment variable, else the systemd credential file
    `$CREDENTIALS_DIRECTORY/<name>` (unit option `LoadCredential=<name>:<path>`)."""
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory or "/" in name or name in ("", ".", ".."):
        return None
    try:
        with Path(directory, name).open("rb") as f:
            data = f.read(MAX_CREDENTIAL_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace").strip() or None


def register_environment_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Register secret-looking environment values and every systemd credential."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if SECRET_NAME_RE.search(name):
            register_secret(value)
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        try:
            names = [p.name for p in Path(directory).iterdir()]
        except OSError:
            names = []
        for name in names:
            credential = secret_value(name, {"CREDENTIALS_DIRECTORY": directory})
            if credential:
                register_secret(credential)


def register_config_secrets(config: Any, environ: Mapping[str, str] | None = None) -> None:
    """Register the secrets a config refers to by name, wherever they are: each `*_env` key
    (`secret_env`, `bot_token_env`: one variable; `headers_env`: a table of them), its value
    read from the environment or a systemd credential. `rollback_env` holds literal values,
    not names, and is skipped."""
    tree = config.model_dump() if hasattr(config, "model_dump") else {}
    for name in _env_names(tree):
        value = secret_value(name, environ)
        if value:
            register_secret(value)


def _env_names(node: Any) -> list[str]:
    """Every environment variable name held by an `*_env` key in a dumped config."""
    names: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.endswith("_env") and key != "rollback_env":
                if isinstance(value, str):
                    names.append(value)
                elif isinstance(value, dict):
                    names += [v for v in value.values() if isinstance(v, str)]
            else:
                names += _env_names(value)
    elif isinstance(node, list | tuple):
        for item in node:
            names += _env_names(item)
    return names


def mask_text(text: str) -> str:
    """`text` with every registered secret replaced by `***` (longest first)."""
    if not _SECRETS:
        return text
    with _secrets_lock:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def mask_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Processor: mask secrets in the event's values (nested dicts and lists too)."""
    if not _SECRETS:
        return event
    return {k: _mask(v) for k, v in event.items()}


class _Finish:
    """Wrap the renderer: mask secrets in the rendered line, add the journal prefix."""

    def __init__(self, renderer: Processor, journal: bool) -> None:
        self._renderer = renderer
        self._journal = journal

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        rendered = self._renderer(logger, name, event)
        line = mask_text(rendered if isinstance(rendered, str) else str(rendered))
        if not self._journal:
            return line
        priority = _PRIORITY.get(str(event.get("level", "info")), 6)
        return f"<{priority}>{line}"


class _Writer:
    """Writes whole lines to one stream under one lock, for structlog and stdlib alike.

    A write that fails (stdout closed, the journal gone) is dropped: a daemon that dies
    because it cannot log would stop watching deploys.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg


class _WriterHandler(logging.Handler):
    """The standard library's handler, writing through the same `_Writer`."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal connection named by `$JOURNAL_STREAM` (`dev:ino`)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    force_json: bool = False,
    journal: bool | None = None,
) -> None:
    """Configure structlog and the standard library's logging once, at start-up.

    `journal` forces the `<N>` prefix on or off; by default it is on when `stream` is the
    journal stream.
    """
    import structlog
    import structlog.tracebacks

    out = stream or sys.stdout
    tty = out.isatty() and not force_json
    if journal is None:
        journal = not tty and is_journal_stream(out)
    register_environment_secrets()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if tty:
        # No local variables in tracebacks: they are long and may hold secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=True,
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
        final: list[Processor] = [mask_secrets]
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final = [tracebacks, mask_secrets]
    finish = _Finish(renderer, journal)
    writer = _Writer(out)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *final, finish],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    handler = _WriterHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *final,
                finish,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries speak only when it matters


def get(name: str = "postdeploy") -> Any:
    """A structlog logger."""
    import structlog

    return structlog.get_logger(name)


def keep_rich_out() -> None:
    """Make `import rich` fail in this process, so that structlog, imported next, goes without.

    `import structlog` imports `structlog.dev`, which tries `import rich` for its console
    renderer's tracebacks, and `structlog.tracebacks` tries `rich.pretty`, whether or not a
    console renderer is ever used; both fall back quietly when rich is missing. A daemon that
    logs JSON lines renders nothing with rich, and saves its import: about 4 MB of memory
    and a tenth of a second at start-up (docs/PERFORMANCE.md). Only for a process that will
    never draw on a terminal (`postdeploy run` with stdout not a terminal); does nothing once
    structlog or rich is imported.
    """
    if "structlog" not in sys.modules and "rich" not in sys.modules:
        # A None entry is the import system's documented way to make an import fail.
        sys.modules["rich"] = None  # type: ignore[assignment]
