"""systemd's notify protocol (READY, WATCHDOG, RELOADING, STOPPING) in plain Python.

A datagram to the unix socket named by `$NOTIFY_SOCKET` (a leading `@` is the abstract
namespace). Without that variable every call is a no-op, so the daemon runs the same way in
a terminal, in tests and under systemd.

Read from the process environment, `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` are
then removed from it (as `sd_notify(unset_environment=1)` does), so commands the daemon
starts (rollback hooks, alert commands) do not inherit them and cannot speak for it.
"""

from __future__ import annotations

import os
import socket
import time

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if environ is None else environ
        if environ is None:
            for name in _VARIABLES:
                os.environ.pop(name, None)
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_ok = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # Ping at half the period systemd allows, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watchdog_ok else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields; False if there is no socket or the send failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", _status(status or "ready"))

    def reloading(self) -> bool:
        # systemd (v253+) wants the monotonic time with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before systemd's start/stop timeout (e.g. a long rollback)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def status(self, text: str) -> bool:
        return self.send(_status(text))


def _status(text: str) -> str:
    """A STATUS= field; the protocol is newline-separated, so the text must be one line."""
    return "STATUS=" + " ".join(text.split())
