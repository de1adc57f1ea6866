"""Reading a py-spy profile of the daemon: where the event loop's time goes.

`py-spy record --format raw --threads` (without `--idle`) writes collapsed stacks of the
samples in which a thread was running, one line each:
`thread (0x..);outer (file.py:12);...;leaf (file.py:34) COUNT`. The event loop's thread is the
one running `asyncio`'s `run_forever`; its samples over the samples taken (rate x duration)
is the share of time the loop was busy: that is what limits the ceiling.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _idle(leaf: str) -> bool:
    """A sample caught waiting in the selector (py-spy may still call it active)."""
    return "selectors.py" in leaf and "select" in leaf


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _short(frame: str) -> str:
    """`func (…/site-packages/httpx/_client.py:123)` -> `func (httpx/_client.py)`."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/daemon/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(raw: str, taken: int, top: int = 30) -> dict[str, Any]:
    """Busy share of the event loop (of `taken` samples), and its top functions by self and
    by inclusive time."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread ", "process ")) else "?"
        body = [f for f in frames if not f.startswith(("thread ", "process "))]
        threads[thread].append((body, int(count)))
    loop_thread = max(
        threads,
        key=lambda t: sum(c for s, c in threads[t] if any("run_forever" in f for f in s)),
        default=None,
    )
    total_all = sum(c for stacks in threads.values() for _, c in stacks)
    if loop_thread is None:
        return {"samples": total_all, "error": "no event loop thread found"}
    loop = threads[loop_thread]
    total = sum(c for _, c in loop)
    busy = [(s, c) for s, c in loop if s and not _idle(s[-1])]
    busy_total = sum(c for _, c in busy)
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in busy:
        self_time[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += n
    other_threads = {
        t: sum(c for s, c in stacks if s and not _idle(s[-1]))
        for t, stacks in threads.items()
        if t != loop_thread
    }

    def share(n: int) -> float:
        return round(100 * n / busy_total, 1) if busy_total else 0.0

    return {
        "samples": total_all,
        "loop_samples": total,
        "samples_taken": taken,
        "loop_busy_percent": round(100 * busy_total / taken, 1) if taken else 0.0,
        "other_threads_busy_percent": round(100 * sum(other_threads.values()) / taken, 1)
        if taken
        else 0.0,
        "top_self": [(f, share(n)) for f, n in self_time.most_common(top)],
        "top_inclusive": [
            (f, share(n))
            for f, n in inclusive.most_common(top * 3)
            if not f.startswith(("<module>", "_run_module_as_main", "_run_code", "run ("))
        ][: top * 2],
    }


def markdown(report: dict[str, Any], windows: int, cpu_percent: float) -> str:
    """The profile as a page: shares are of the event loop's busy samples."""
    out = [
        f"# Profile: {windows} windows at a 1 s interval (3 requests a tick)",
        "",
        f"Daemon CPU {cpu_percent:.0f}% of one core (from /proc); py-spy saw the event loop "
        f"busy {report.get('loop_busy_percent')}% of the time and the other threads (file I/O "
        f"workers, watchfiles) {report.get('other_threads_busy_percent')}%.",
        "",
        "Shares below are percentages of the event loop's busy samples.",
        "",
        "## Self time (leaf functions)",
        "",
        "| % | function |",
        "| ---: | --- |",
        *[f"| {p} | `{f}` |" for f, p in report.get("top_self", [])],
        "",
        "## Inclusive time",
        "",
        "| % | function |",
        "| ---: | --- |",
        *[f"| {p} | `{f}` |" for f, p in report.get("top_inclusive", [])],
        "",
    ]
    return "\n".join(out)
