"""The processes a benchmark drives: the real daemon, the targets, and how they are measured.

- `Daemon`: `postdeploy run` in its own process, pinned to core 0 (so "one core" is literal),
  its JSON log lines collected by a thread, READY read from a `$NOTIFY_SOCKET` we bind.
- `PyTarget` (`bench.target`, always available) and `NginxTarget` (when `nginx` is on PATH):
  the services the windows probe, pinned to core 1 with the harness, both recording the
  arrival time of every request so lateness is measured where the request lands.
- `Proc`: CPU seconds and RSS of any of them, read from /proc.
- `Window` and `write_config`: one window per repo (a repo has only one current window), each
  with its own path prefix through `base_url`, so the target's records join to the windows.

The daemon process, the notify socket, `child_env`, `wait_until` and the TOML writer are the
tests' kit (`tests/support`, importable here through `bench/__init__.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from support.daemon import DaemonProcess
from support.env import child_env as kit_child_env
from support.http import free_port
from support.notify import NotifySocket
from support.toml import render_toml
from support.wait import wait_until as kit_wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent
DAEMON_CORE = 0
HARNESS_CORE = 1
# Extra environment for the daemon, e.g. PYTHONPATH of a patched copy to compare (--pythonpath).
DAEMON_ENV: dict[str, str] = {}
HEALTH = "/health"
FIVEXX = ["/status", "/queue"]  # as the seed probes: /health, then /status and /queue


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")


PIN = can_pin()


def pin_self(core: int) -> None:
    if PIN:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


def _preexec(core: int) -> Callable[[], None]:
    def run() -> None:
        pin_self(core)
        # Thousands of windows mean many open descriptors at times: allow all we may.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return run


def child_env(**extra: str) -> dict[str, str]:
    """Our environment for a child, filtered as the tests filter it (`support.env`)."""
    return kit_child_env(extra)


def log_ts(line: dict[str, Any]) -> float:
    """The epoch time of a daemon log line (`ts` is ISO 8601, UTC)."""
    return datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00")).timestamp()


# -- /proc ------------------------------------------------------------------------------------


class Proc:
    """CPU and memory of one running process (all its threads)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def times(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far (10 ms resolution)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        return sum(self.times())

    def status(self, key: str) -> int:
        """A `kB` value of /proc/PID/status (VmRSS, VmHWM), in kB; 0 if gone."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 1024

    def hwm_mb(self) -> float:
        return self.status("VmHWM") / 1024

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def threads(self) -> int:
        return self.status("Threads")


class CpuMeter:
    """CPU share of a process between `start()` and `stop()` (percent of one core)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.t0 = self.u0 = self.s0 = 0.0
        self.seconds = self.user = self.system = 0.0

    def start(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.u0, self.s0 = self.proc.times()
        return self

    def stop(self) -> CpuMeter:
        self.seconds = time.monotonic() - self.t0
        u1, s1 = self.proc.times()
        self.user, self.system = u1 - self.u0, s1 - self.s0
        return self

    @property
    def cpu(self) -> float:
        return self.user + self.system

    @property
    def system_share(self) -> float:
        """The kernel's part of the CPU used (syscalls, fsync, sockets)."""
        return self.system / self.cpu if self.cpu > 0 else float("nan")

    @property
    def percent(self) -> float:
        return 100 * self.cpu / self.seconds if self.seconds > 0 else float("nan")


# -- windows and config ---------------------------------------------------------------------


@dataclass
class Window:
    """One window: its own repo (one current window per repo), prefix and origin."""

    repo: str
    item: str
    port: int
    prefix: str
    paths: list[str] = field(default_factory=lambda: [HEALTH, *FIVEXX])
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.prefix}"

    def dir(self, state: Path) -> Path:
        return state / self.repo / self.item

    def repo_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {
            "base_url": self.base_url,
            "health_path": self.paths[0],
            "fivexx_paths": self.paths[1:],
        }
        table.update(self.overrides)
        return table


def windows(
    n: int, ports: list[int], *, tag: str = "w", paths: list[str] | None = None
) -> list[Window]:
    """`n` windows named `<tag>0000...`, spread round-robin over `ports`."""
    return [
        Window(
            f"{tag}{i:04d}",
            "release-1",
            ports[i % len(ports)],
            f"{tag}{i:04d}",
            list(paths) if paths is not None else [HEALTH, *FIVEXX],
        )
        for i in range(n)
    ]


def write_config(
    path: Path,
    state: Path,
    wins: Iterable[Window],
    defaults: dict[str, Any],
    daemon: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the daemon's config; returns it as a dict (for the results)."""
    config: dict[str, Any] = {
        "state_dir": str(state),
        "defaults": dict(defaults),
        "daemon": {"log_level": "info", **(daemon or {})},
        "repos": {w.repo: w.repo_table() for w in wins},
    }
    path.write_text(render_toml(config))
    return config


def arm(state: Path, w: Window, mtime: float | None = None) -> float:
    """`mkdir -p DIR && touch DIR/armed`, as a deploy script does; returns when it was done."""
    d = w.dir(state)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "armed", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    if mtime is not None:
        os.utime(d / "armed", (mtime, mtime))
    return time.time()


def arm_spread(
    state: Path, wins: list[Window], over_s: float, start: float | None = None
) -> dict[str, float]:
    """Arm `wins` evenly over `over_s` seconds; returns each repo's touch time."""
    start = time.time() if start is None else start
    touched: dict[str, float] = {}
    n = len(wins)
    for i, w in enumerate(wins):
        at = start + over_s * i / n
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        touched[w.repo] = arm(state, w)
    return touched


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    """The kit's `wait_until` (`support.wait`) in the benchmarks' argument order; raises a
    `TimeoutError` when `timeout` passes."""
    kit_wait_until(predicate, what, timeout, poll=poll)


def count_files(state: Path, wins: Iterable[Window], name: str) -> int:
    return sum((w.dir(state) / name).exists() for w in wins)


class FileAppearances:
    """When a file of a given name appeared (was created or renamed into place) in each of
    some directories, timestamped as inotify reports it: raw inotify through ctypes, no
    batching, so the time is within a scheduling delay of the kernel's event."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, name: str, directories: Iterable[Path]) -> None:
        self.name = name
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, Path] = {}
        for d in directories:
            wd = libc.inotify_add_watch(self.fd, str(d).encode(), self.IN_CREATE | self.IN_MOVED_TO)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
            self.dirs[wd] = d
        self.seen: dict[Path, float] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            now = time.time()
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                raw = data[offset + 16 : offset + 16 + size].rstrip(b"\0")
                offset += 16 + size
                if raw.decode(errors="replace") == self.name and wd in self.dirs:
                    with self._cond:
                        self.seen.setdefault(self.dirs[wd], now)
                        self._cond.notify_all()

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.seen) < len(self.dirs):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.seen)}/{len(self.dirs)} {self.name} appeared")
                self._cond.wait(remaining)

    def close(self) -> None:
        os.close(self.fd)


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """`postdeploy run --config PATH` (or `argv`) in its own process, pinned to core 0, with
    READY read from a `$NOTIFY_SOCKET` of our own: a `support.daemon.DaemonProcess` (its log
    lines collected by a thread) and a `support.notify.NotifySocket`."""

    def __init__(
        self,
        config_path: Path,
        workdir: Path,
        *,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.notify = NotifySocket(workdir)
        self.started_at = time.time()
        extra = {
            "NOTIFY_SOCKET": str(self.notify.path),
            **((env or {}) if argv else {**DAEMON_ENV, **(env or {})}),
        }
        self.process = DaemonProcess(
            config_path,
            workdir / "daemon.stderr",
            extra,
            argv=argv,
            cwd=workdir,
            preexec_fn=_preexec(DAEMON_CORE),
        )
        self.proc = self.process.proc
        self.lines = self.process.lines
        self.meter = Proc(self.proc.pid)

    def find(self, event: str) -> list[dict[str, Any]]:
        return self.process.find(event)

    def wait_ready(self, timeout: float = 120) -> float:
        """When READY=1 arrived on the notify socket (wall clock)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                index = self.notify.wait_for(lambda m: m.get("READY") == "1", timeout=0.5)
                return self.notify.messages[index].wall
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not get ready: {self.tail()}") from None

    def wait_count(self, event: str, n: int, timeout: float) -> None:
        self.process.wait_count(event, n, timeout)

    def problems(self) -> list[dict[str, Any]]:
        """Log lines at error level or worse (they should be none)."""
        return [
            line
            for line in list(self.lines)
            if line.get("level") in ("error", "critical", "exception")
            and line.get("event") not in ("window.degraded",)
        ]

    def tail(self, n: int = 20) -> str:
        return self.process.tail(n, width=300)

    def stop(self, timeout: float = 60) -> int:
        code = self.process.close(signal.SIGTERM, timeout)
        self.notify.close()
        return code


# -- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request the target saw; `sent` is 0.0 when it was never answered."""

    arrival: float
    sent: float
    status: int
    port: int
    path: str


class PyTarget:
    """`bench.target` in its own process (pinned with the harness)."""

    kind = "python"

    def __init__(self, ports: int = 1, hang_ports: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.target",
                "--ports",
                str(ports),
                "--hang-ports",
                str(hang_ports),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=child_env(),
            preexec_fn=_preexec(HARNESS_CORE),
        )
        assert self.proc.stdout is not None
        first = json.loads(self.proc.stdout.readline())
        self.ports: list[int] = first["ports"]
        self.hang_ports: list[int] = first["hang_ports"]
        self.meter = Proc(self.proc.pid)
        self._lock = threading.Lock()
        self._taken = 0  # records already handed out by new_records()

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline().strip()
        if not reply.startswith("ok"):
            raise RuntimeError(f"target: {line!r}: {reply!r}")
        return reply

    def mode(self, prefix: str, mode: str) -> None:
        self.command(f"mode {prefix} {mode}")

    def stats(self) -> tuple[int, int]:
        """(requests, connections) accepted so far."""
        _, requests, connections = self.command("stats").split()
        return int(requests), int(connections)

    def records(self, start: int = 0) -> list[Request]:
        with tempfile.NamedTemporaryFile("r", suffix=".tsv") as f:
            self.command(f"dump {f.name} {start}")
            return list(_parse_tsv(f.name))

    def new_records(self) -> list[Request]:
        """The records since the previous call."""
        new = self.records(self._taken)
        self._taken += len(new)
        return new

    def stop(self) -> list[Request]:
        """Stop and return everything it recorded."""
        records = self.records()
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return records


def _parse_tsv(path: str) -> Iterable[Request]:
    with open(path) as f:
        for line in f:
            arrival, sent, status, port, p = line.rstrip("\n").split("\t", 4)
            yield Request(float(arrival), float(sent), int(status), int(port), p)


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    log_format bench '$msec $request_time $status $server_port $request_uri';
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    server {{
{listen}
        access_log {dir}/access.log bench buffer=256k flush=1s;
        default_type application/json;
        location / {{ return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""


class NginxTarget:
    """nginx (one process, `master_process off`) answering 200 {"status":"ok"} everywhere.

    Arrival = `$msec - $request_time` of its access log (millisecond resolution).
    """

    kind = "nginx"

    def __init__(self, ports: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.ports = [free_port() for _ in range(ports)]
        self.hang_ports: list[int] = []
        listen = "\n".join(f"        listen 127.0.0.1:{p} backlog=4096;" for p in self.ports)
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, listen=listen))
        self.proc = subprocess.Popen(
            [nginx_path() or "nginx", "-p", str(self.dir), "-c", str(conf), "-e", "stderr"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr").open("wb"),
            env=child_env(),
            preexec_fn=_preexec(HARNESS_CORE),
        )
        self.meter = Proc(self.proc.pid)
        self._offset = 0  # bytes of the access log already handed out by new_records()
        for port in self.ports:
            try:
                wait_until(partial(_accepts, port), 10, f"nginx on port {port}")
            except TimeoutError as exc:
                self.stop()  # e.g. a port taken between free_port() and nginx's bind()
                raise NginxStartError(str(exc)) from None

    @staticmethod
    def _parse(text: str) -> list[Request]:
        records = []
        for line in text.splitlines():
            msec, rtime, status, port, path = line.split(" ", 4)
            sent = float(msec)
            records.append(Request(sent - float(rtime), sent, int(status), int(port), path))
        return records

    def new_records(self) -> list[Request]:
        """The records logged since the previous call (the log is flushed every second)."""
        try:
            with (self.dir / "access.log").open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return self._parse(complete.decode())

    def stop(self) -> list[Request]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: flushes the log buffer
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log = self.dir / "access.log"
        records = self._parse(log.read_text()) if log.exists() else []
        shutil.rmtree(self.dir, ignore_errors=True)
        return records


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


class NginxStartError(TimeoutError):
    """nginx did not listen on one of its ports."""


def load_target(kind: str, ports: int = 1) -> PyTarget | NginxTarget:
    """The target for pure-load scenarios: nginx when asked for or found, else Python.

    With many ports, one of them can be taken between picking it and nginx binding it (the
    previous scenario leaves thousands of client sockets behind on loopback): nginx then
    does not start at all, and is tried again with fresh ports."""
    if kind == "nginx" or (kind == "auto" and nginx_path()):
        for attempt in range(3):
            try:
                return NginxTarget(ports)
            except NginxStartError:
                if attempt == 2:
                    raise
    return PyTarget(ports)


# -- misc -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What this machine is, for the results."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_at_start": [round(x, 2) for x in load],
        "pinned": PIN,
        "nginx": _nginx_version(),
    }


def _nginx_version() -> str | None:
    path = nginx_path()
    if not path:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return match.group(1) if match else "unknown"
