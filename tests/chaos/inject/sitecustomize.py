"""Fault injection for the chaos suite, loaded into the daemon process through PYTHONPATH.

Python imports `sitecustomize` at start-up; the chaos harness puts this directory on the
daemon's PYTHONPATH only for runs that want a fault. Nothing happens unless one of these is set:

- `CHAOS_CRASH=after-write:NAME:N`: SIGKILL the daemon right after its N-th atomic write of a
  file called NAME (`window.json`, `report.md`, `done`, `rollback.intent`, ...) is durable.
- `CHAOS_CRASH=before-write:NAME:N`: SIGKILL it just before the N-th atomic write of NAME.
- `CHAOS_CRASH=torn:N`: on the N-th append to a JSON Lines file, write only the first half of
  the bytes, fsync them, then SIGKILL: a torn last line, exactly as a power cut would leave it.
- `CHAOS_DISK_FAULT=PATH`: while the file PATH exists, every write below the state directory
  fails (the fallback when the test cannot mount a small tmpfs): with EROFS if PATH holds
  "ro"; else with ENOSPC, an append first writing half of its bytes, as a full disk does.
- `CHAOS_HOLD=PATH`: the intake's group commit of `window.json` (new windows' starts) creates
  `PATH.held`, then waits until PATH exists before it writes: the test does something (a
  reload, say) in exactly the moment between judging a new window and starting it.
- `CHAOS_BUG=NAME:N`: the N-th group commit of NAME by the intake raises RuntimeError, as a
  bug in the daemon would: an exception nobody planned for.
- `CHAOS_IO_FAULT=SEED:RATE:LOG`: every write below the state directory (atomic writes, series
  appends, the intake's group commits, the outbox's event and mark writes) fails with
  probability RATE, with ENOSPC, EROFS or EIO picked at random (seeded by SEED); each injected
  error appends one line to the file LOG, so the harness can count them.

These are real crashes (SIGKILL of the real process) at precise points, which a timer-based
kill from outside would only hit by luck.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from typing import Any


def _install() -> None:
    crash = os.environ.get("CHAOS_CRASH", "")
    fault = os.environ.get("CHAOS_DISK_FAULT", "")
    hold = os.environ.get("CHAOS_HOLD", "")
    bug_name, _, bug_n = os.environ.get("CHAOS_BUG", "").partition(":")
    io_fault = os.environ.get("CHAOS_IO_FAULT", "")
    if not crash and not fault and not hold and not bug_name and not io_fault:
        return
    import random

    from postdeploy import intake, store
    from postdeploy.alerts import spool

    lock = threading.Lock()
    counts: dict[str, int] = {}

    def hit(name: str) -> int:
        with lock:
            counts[name] = counts.get(name, 0) + 1
            return counts[name]

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def disk_fault() -> str | None:
        """None while the disk is fine, else "ro" or "full"."""
        try:
            with open(fault) as f:
                return "ro" if f.read().strip() == "ro" else "full"
        except (FileNotFoundError, ValueError):
            return None

    io_seed, _, io_rest = io_fault.partition(":")
    io_rate, _, io_log = io_rest.partition(":")
    io_rng = random.Random(int(io_seed or 0))
    io_errnos = [errno.ENOSPC, errno.EROFS, errno.EIO]

    def io_error(where: str) -> None:
        """With CHAOS_IO_FAULT, fail this write at random (and count it)."""
        if not io_fault:
            return
        with lock:
            hit_now = io_rng.random() < float(io_rate or 0)
            code = io_rng.choice(io_errnos)
        if not hit_now:
            return
        with open(io_log, "a") as f:
            f.write(f"{where} {errno.errorcode[code]}\n")
        raise OSError(code, f"{os.strerror(code)} (injected at {where})")

    def disk_refuses(where: str = "write") -> None:
        io_error(where)
        kind = disk_fault() if fault else None
        if kind == "ro":
            raise OSError(errno.EROFS, "Read-only file system (injected)")
        if kind == "full":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    mode, _, rest = crash.partition(":")
    target, _, number = rest.rpartition(":")
    n = int(number) if number.isdigit() else 0
    if mode == "torn":
        n = int(rest) if rest.isdigit() else 0

    original_write = store.ItemStore.write_atomic_sync
    original_append = store.ItemStore.append_lines
    original_opener = store.ItemStore.opener

    def write_atomic_sync(self: Any, name: str, data: bytes, **kwargs: Any) -> None:
        disk_refuses(name)
        if mode == "before-write" and name == target and hit(name) == n:
            die()
        original_write(self, name, data, **kwargs)
        if mode == "after-write" and name == target and hit(name) == n:
            die()

    async def append_lines(self: Any, name: str, lines: list[bytes]) -> None:
        if fault and disk_fault() == "full":
            # A full disk takes what fits in the file's last block, then says ENOSPC.
            data = b"".join(lines)
            fd = original_opener(self, os.O_WRONLY | os.O_APPEND | os.O_CREAT)(name, 0)
            try:
                os.write(fd, data[: max(1, len(data) // 2)])
            finally:
                os.close(fd)
        disk_refuses(name)
        if mode == "torn" and hit("append") == n:
            data = b"".join(lines)
            cut = max(1, len(data) // 2)
            fd = self.opener(os.O_WRONLY | os.O_APPEND | os.O_CREAT)(name, 0)
            os.write(fd, data[:cut])
            os.fsync(fd)
            die()
        await original_append(self, name, lines)

    def opener(self: Any, flags: int) -> Any:
        inner = original_opener(self, flags)

        def checked(name: str, mode: int) -> int:
            disk_refuses()
            return int(inner(name, mode))

        return checked

    original_write_all = intake.write_all

    def held(name: str) -> None:
        """With CHAOS_HOLD, wait (in the worker thread) until the test releases the write."""
        if not hold or name != "window.json":
            return
        with open(hold + ".held", "w"):
            pass
        for _ in range(6000):  # at most 60 s: a test that forgot to release fails, not hangs
            if os.path.exists(hold):
                return
            time.sleep(0.01)

    def write_all(name: str, items: Any) -> list[Exception | None]:
        """The intake's group commit: the same crash points, counted per file."""
        held(name)
        if name == bug_name and hit("bug") == int(bug_n or 1):
            intake.drop_spares([spare for _, _, spare in items if spare is not None])
            raise RuntimeError(f"injected bug in the group commit of {name}")
        try:
            disk_refuses(f"group commit of {name}")
        except OSError as exc:
            intake.drop_spares([spare for _, _, spare in items if spare is not None])
            return [exc] * len(items)
        if mode == "before-write" and name == target:
            for _ in items:
                if hit(name) == n:
                    die()
        errors = original_write_all(name, items)
        if mode == "after-write" and name == target:
            for error in errors:
                if error is None and hit(name) == n:
                    die()
        return errors

    original_write_event = spool.Spool.write_event
    original_write_state = spool.Spool.write_state

    def write_event(self: Any, event_id: str, record: Any) -> bool:
        io_error("outbox event")
        return bool(original_write_event(self, event_id, record))

    def write_state(self: Any, event_id: str, sink: str, state: Any) -> None:
        io_error("outbox mark")
        original_write_state(self, event_id, sink, state)

    if io_fault:
        spool.Spool.write_event = write_event  # type: ignore[method-assign]
        spool.Spool.write_state = write_state  # type: ignore[method-assign]
    store.ItemStore.write_atomic_sync = write_atomic_sync  # type: ignore[method-assign]
    intake.write_all = write_all
    store.ItemStore.append_lines = append_lines  # type: ignore[method-assign]
    if fault:
        store.ItemStore.opener = opener  # type: ignore[method-assign]


_install()
