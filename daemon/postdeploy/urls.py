"""URLs in the config file: one validator that every URL key uses.

`base_url`, `control_url`, the Prometheus checks' `url`, the alert sinks' `url` and `api_base`
all go through `check_http_url`, so they all follow the same rule: an `http://` or `https://`
URL with a host, a valid port, no whitespace, and no credentials. Credentials in a URL
(`http://alice:pw@host`) would not be sent by the probe and would end up in log lines,
alerts and the outbox on disk; secrets belong in `headers_env` or a systemd credential.
"""

from __future__ import annotations

import urllib.parse

CREDENTIALS_MESSAGE = (
    "credentials in a URL are not allowed (they would be logged); "
    "use headers_env or a systemd credential"
)


def _authority(value: str) -> str:
    """The `user:pw@host:port` part of `scheme://authority/path`, found without a parser, so
    that no parser's error message can echo the credentials in it."""
    rest = value.split("://", 1)[1]
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return rest


def check_http_url(value: str) -> str:
    """`value` if it is a usable http(s) URL; ValueError saying why not.

    No message ever repeats the URL: a refused URL may hold a password."""
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL with a host")
    if "@" in _authority(value):
        raise ValueError(CREDENTIALS_MESSAGE)
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError as exc:  # "Invalid IPv6 URL", ...
        raise ValueError(f"is not a URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - parsing the port is the check ("Port out of range", ...)
    except ValueError:
        raise ValueError("has an invalid port: must be a number from 0 to 65535") from None
    return value
