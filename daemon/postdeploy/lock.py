"""One daemon per state directory: an exclusive `flock` on `<state_dir>/.lock`.

Two daemons on one state directory would both take up every window: both would probe, both
would judge, and both would run a rollback hook. The second daemon therefore refuses to start,
at once, naming the process that holds the lock (its pid is written into the file). It does
not wait as a hot standby: systemd already restarts a daemon that dies, and a standby that
takes over on its own is one more thing that can go wrong in exactly the moment it matters.

The lock belongs to the open file, so it is released by the kernel whenever the holder
exits, even by SIGKILL: a stale `.lock` file never blocks a start. It is never inherited by
the rollback hook or any other child (the descriptor is close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class LockHeld(Exception):
    """Another process holds the state directory."""


class StateLock:
    """The exclusive lock on a state directory, held from `acquire` until `release`."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; LockHeld names the holder's pid."""
        # Read-only: a file held open for writing would make a read-only remount of the
        # state directory's file system fail (EBUSY). flock works on any descriptor.
        flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockHeld(f"{self.path} is a symlink; it is never followed") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise LockHeld(
                f"another postdeploy daemon ({who}) holds {self.path}: one daemon per "
                "state directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:  # the holder's pid, for the message a second daemon prints
            out = os.open(self.path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(out, f"{os.getpid()}\n".encode())
            finally:
                os.close(out)
        except OSError:
            pass  # the lock holds all the same; the message then names no pid

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
