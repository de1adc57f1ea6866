"""The one map from a failed request to its text (`errors.error_text`), and `errors.clip`.

The table holds the exceptions as the probe's transport and httpx's own client raise them
(chained to the socket error that caused them). The probe's texts are what series rows and
reports hold, so they are pinned here to the letter. The last tests make real failed
requests on 127.0.0.1 and check that a probe and an alert sink tell the same failure in the
same words.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

import httpx
import pytest

from postdeploy.alerts.config import WebhookSink
from postdeploy.alerts.sinks import WebhookSender
from postdeploy.errors import ERROR_TEXT_LIMIT, error_text, root_cause
from postdeploy.probe import Prober
from postdeploy.text import clip


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    """`outer` raised `from cause`, as httpx and the transport wrap socket errors."""
    outer.__cause__ = cause
    return outer


def refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 9)")


ERROR_TEXTS = [
    # Timeouts: the kind alone when the exception has no text.
    (httpx.ConnectTimeout(""), "connect timed out"),
    (httpx.ReadTimeout("timed out"), "read timed out: timed out"),
    (httpx.WriteTimeout(""), "write timed out"),
    (httpx.PoolTimeout(""), "no free connection"),
    # A refused connection: the errno's words, not the socket's "[Errno 111] ..." text, and
    # the same however deep the chain (httpx's client wraps it twice, the transport once).
    (
        chained(httpx.ConnectError("[Errno 111] Connect call failed"), refused()),
        "connection failed: Connection refused",
    ),
    (
        chained(
            httpx.ConnectError("All connection attempts failed"),
            chained(OSError("All connection attempts failed"), refused()),
        ),
        "connection failed: Connection refused",
    ),
    (
        chained(httpx.ReadError(""), ConnectionResetError(errno.ECONNRESET, "reset")),
        "read error: Connection reset by peer",
    ),
    (
        httpx.WriteError("connection closed by the server"),
        "write error: connection closed by the server",
    ),
    (
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        "protocol error: Server disconnected without sending a response.",
    ),
    # The transport's DNS failures: getaddrinfo's words, whatever wraps them.
    (
        chained(
            httpx.ConnectError("[Errno -2] Name or service not known"),
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        ),
        "name resolution failed: Name or service not known",
    ),
    (
        chained(
            httpx.ConnectError("[Errno -3] Temporary failure in name resolution"),
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        ),
        "name resolution failed: Temporary failure in name resolution",
    ),
    # A TLS error's errno is OpenSSL's, not the OS's: its own text stays.
    (
        chained(
            httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate"),
        ),
        "connection failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
    ),
    # No errno (the transport's own OSError): the text; an unknown class: its name.
    (
        chained(
            httpx.ConnectError("the name resolved to no address"),
            OSError("the name resolved to no address"),
        ),
        "connection failed: the name resolved to no address",
    ),
    (
        httpx.UnsupportedProtocol("unsupported URL scheme 'ftp'"),
        "UnsupportedProtocol: unsupported URL scheme 'ftp'",
    ),
    (OSError(errno.ENETUNREACH, "unreachable"), "OSError: Network is unreachable"),
    # A long text is cut to ERROR_TEXT_LIMIT characters, ending "..." (as rows always had).
    (
        httpx.RemoteProtocolError("x" * 500),
        "protocol error: " + "x" * (ERROR_TEXT_LIMIT - 3) + "...",
    ),
    (httpx.ReadError("  padded  "), "read error: padded"),
]


@pytest.mark.parametrize(("exc", "expected"), ERROR_TEXTS, ids=lambda v: type(v).__name__)
def test_error_text(exc: BaseException, expected: str) -> None:
    assert error_text(exc) == expected


def test_root_cause_survives_a_cycle() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__context__ = b, a
    assert root_cause(a) is b


@pytest.mark.parametrize(
    ("text", "limit", "options", "expected"),
    [
        ("short", 10, {}, "short"),
        ("exactly10!", 10, {}, "exactly10!"),
        ("eleven chars", 10, {}, "eleven ch\u2026"),
        ("eleven chars", 10, {"mark": "..."}, "eleven ..."),
        ("a\n b\t\tc", 10, {}, "a\n b\t\tc"),
        ("a\n b\t\tc", 10, {"fold": True}, "a b c"),
        (
            "  <html>\n  <body>oops</body>\n</html>  ",
            20,
            {"fold": True},
            "<html> <body>oops</\u2026",
        ),
        ("", 5, {"fold": True}, ""),
    ],
)
def test_clip(text: str, limit: int, options: dict[str, Any], expected: str) -> None:
    assert clip(text, limit, **options) == expected
    assert len(clip(text, limit, **options)) <= limit


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def both(url: str) -> tuple[str | None, str]:
    """What a probe of `url` and a webhook delivery to it say went wrong."""
    prober = Prober()
    sink = WebhookSender("hook", WebhookSink.model_validate({"type": "webhook", "url": url}), {})
    try:
        answer = await prober.get(url, 5, read_body=True)
        result = await sink.deliver({"id": "0" * 16, "kind": "window.degraded"})
    finally:
        await prober.aclose()
        await sink.aclose()
    assert not result.ok
    return answer.error, result.detail


async def test_a_probe_and_a_sink_tell_a_refused_connection_alike() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    assert await both(url) == ("connection failed: Connection refused",) * 2


async def test_a_probe_and_a_sink_tell_a_missing_name_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "nxdomain.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = f"http://nxdomain.test:{free_port()}/health"
    assert await both(url) == ("name resolution failed: Name or service not known",) * 2
