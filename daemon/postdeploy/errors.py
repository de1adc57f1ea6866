"""What went wrong with an HTTP request, in a few words.

`error_text` is the one map from a failed request's exception to the words a person reads:
a probe row's `detail` (and so `series.jsonl`, the report and alerts), and a sink's failed
delivery. (`text.clip` is the one way a text is cut to a length.)
"""

from __future__ import annotations

import os
import socket
import ssl

import httpx

from postdeploy.text import clip

ERROR_TEXT_LIMIT = 120  # the longest error message kept after the kind (see `error_text`)

# What a person is told for each kind of failed request; another exception shows its class.
ERROR_KINDS: dict[type[BaseException], str] = {
    httpx.ConnectTimeout: "connect timed out",
    httpx.ConnectError: "connection failed",
    httpx.ReadTimeout: "read timed out",
    httpx.WriteTimeout: "write timed out",
    httpx.PoolTimeout: "no free connection",
    httpx.RemoteProtocolError: "protocol error",
    httpx.ReadError: "read error",
    httpx.WriteError: "write error",
}


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (httpx wraps the socket error several times)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def error_text(exc: BaseException) -> str:
    """A short description of a failed request, never its URL: `<kind>: <message>`.

    The message is the root cause's where there is one: a name that does not resolve is
    "name resolution failed: ..." (getaddrinfo's words), an OS error its errno's text
    ("Connection refused", "Connection reset by peer"); else the exception's own text. The
    message is cut by `short`."""
    kind = ERROR_KINDS.get(type(exc), type(exc).__name__)
    text = str(exc).strip()
    root = root_cause(exc)
    if isinstance(root, socket.gaierror):  # its errno is getaddrinfo's, not an OS error number
        return f"name resolution failed: {short(root.strerror or str(root))}"
    if isinstance(root, OSError) and not isinstance(root, ssl.SSLError) and root.errno:
        text = os.strerror(root.errno)  # "Connection reset by peer", "Connection refused"
    return f"{kind}: {short(text)}" if text else kind


def short(text: str) -> str:
    """A message cut to ERROR_TEXT_LIMIT characters, as probe rows' details always were."""
    return clip(text, ERROR_TEXT_LIMIT, mark="...")
