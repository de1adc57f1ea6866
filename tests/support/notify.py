"""A fake systemd: the `$NOTIFY_SOCKET` a test or a benchmark binds for the daemon.

`NotifySocket(directory)` binds a unix datagram socket and collects what the daemon tells
"systemd" (`READY=1`, `WATCHDOG=1`, `STATUS=...`), each message with its arrival time; pass
`socket.path` as the daemon's `$NOTIFY_SOCKET`.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.wait import DEADLINE_S, WaitTimeout

_names = itertools.count()


@dataclass(frozen=True)
class Message:
    """One datagram: its `KEY=VALUE` fields and when it arrived (both clocks of this process:
    monotonic to order and time things here, wall-clock to compare with the daemon's times)."""

    fields: dict[str, str]
    monotonic: float
    wall: float


class NotifySocket:
    """A bound unix datagram socket collecting the daemon's `KEY=VALUE` messages."""

    def __init__(self, directory: Path) -> None:
        path = directory / f"notify-{next(_names)}.sock"
        self._own_dir: Path | None = None
        if len(str(path)) > 100:  # sun_path holds 108 bytes
            self._own_dir = Path(tempfile.mkdtemp(prefix="pdn-", dir="/tmp"))
            path = self._own_dir / "notify.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)  # the receiver looks at `_closed` this often
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self._cond:
                self.messages.append(Message(fields, time.monotonic(), time.time()))
                self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[dict[str, str]], bool],
        after: int = 0,
        timeout: float = DEADLINE_S,
    ) -> int:
        """The index of the first message from `after` on whose fields match; waits for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if predicate(self.messages[i].fields):
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"no matching notify message within {timeout:g}s; got {self.fields()}"
                    )
                self._cond.wait(remaining)

    def fields(self) -> list[dict[str, str]]:
        """Every message so far, as its fields."""
        with self._cond:
            return [m.fields for m in self.messages]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.join(5)
        self.sock.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)
