"""Joining what the target saw with what the daemon wrote, and summarising it.

A tick's lateness is measured at the target: the arrival of its health request minus the
tick's `scheduled_ts` (from its `series.jsonl` row). Each window has its own path prefix, so
its requests are found by (port, path); a row's request is the first one that arrived after
the probe started (`ts`) and before its timeout ran out. Ticks are a fixed grid, so the ticks
a window owed by some time are known from `window.json`: one without a row (skipped) or
whose row has no request at the target is lost.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Request, Window

SLACK_S = 0.002  # the daemon's `ts` and the target's arrival come from the same clock


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, median, p90, p99, p99.9, max and mean of `values` (rounded to 0.01)."""
    if not values:
        return {"n": 0}
    out = {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "p99_9": percentile(values, 99.9),
        "max": max(values),
        "mean": sum(values) / len(values),
    }
    return {k: (v if k == "n" else round(v, 2)) for k, v in out.items()}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(percentile(values, 50), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def json_objects(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """Each line that is a JSON object; any other line (torn, foreign) is skipped."""
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(json_objects(text.splitlines()))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Arrivals:
    """The target's requests indexed by (port, path), in arrival order."""

    def __init__(self, records: Iterable[Request] = ()) -> None:
        self.requests: dict[tuple[int, str], list[Request]] = {}
        self.times: dict[tuple[int, str], list[float]] = {}
        self.add(records)

    def add(self, records: Iterable[Request]) -> None:
        """Take in more records (e.g. a target's `new_records()`)."""
        by: dict[tuple[int, str], list[Request]] = defaultdict(list)
        for r in records:
            by[(r.port, r.path)].append(r)
        for key, new in by.items():
            merged = sorted(self.requests.get(key, []) + new, key=lambda r: r.arrival)
            self.requests[key] = merged
            self.times[key] = [r.arrival for r in merged]

    def first_after(self, port: int, path: str, start: float, within: float) -> Request | None:
        times = self.times.get((port, path))
        if not times:
            return None
        j = bisect.bisect_left(times, start - SLACK_S)
        if j < len(times) and times[j] <= start + within:
            return self.requests[(port, path)][j]
        return None

    def of(self, port: int, path: str) -> list[Request]:
        return self.requests.get((port, path), [])

    def count_between(self, start: float, end: float) -> int:
        return sum(
            bisect.bisect_right(t, end) - bisect.bisect_left(t, start) for t in self.times.values()
        )


@dataclass(frozen=True)
class Tick:
    """One tick of one window, as measured."""

    repo: str
    tick: int
    scheduled: float
    started: float  # the probe's `ts` (daemon side); for a censored tick, the censor time
    arrival: float  # its health request at the target
    last_arrival: float  # the latest of its requests at the target
    censored: bool = False  # never ran before the end: its lateness is a lower bound

    @property
    def lateness_ms(self) -> float:
        return (self.arrival - self.scheduled) * 1000

    @property
    def last_lateness_ms(self) -> float:
        return (self.last_arrival - self.scheduled) * 1000

    @property
    def daemon_lateness_ms(self) -> float:
        return (self.started - self.scheduled) * 1000


@dataclass
class Joined:
    ticks: list[Tick]
    lost: list[tuple[str, int, str]]  # (repo, tick, why)
    expected: int

    def lateness(self, repos: set[str] | None = None) -> list[float]:
        return [t.lateness_ms for t in self.ticks if repos is None or t.repo in repos]


def schedule_times(window_json: dict[str, Any]) -> tuple[float, float, float, int]:
    return (
        float(window_json["armed_at"]),
        float(window_json["initial_delay_s"]),
        float(window_json["interval_s"]),
        int(window_json["max_ticks"]),
    )


def join(
    state: Path,
    wins: Iterable[Window],
    arrivals: Arrivals,
    *,
    horizon: float,
    within_s: float,
    censor_at: float | None = None,
    since: float | None = None,
    rows: dict[str, list[dict[str, Any]]] | None = None,
) -> Joined:
    """Every tick due by `horizon` (and, with `since`, not before it) of every window.

    With `censor_at`, a due tick that never ran is kept with `censor_at` as its arrival (a
    lower bound of its lateness) instead of only being counted as lost. `rows` (repo -> its
    series rows, e.g. from a `SeriesReader`) saves reading every series file again.
    """
    ticks: list[Tick] = []
    lost: list[tuple[str, int, str]] = []
    expected = 0
    for w in wins:
        d = w.dir(state)
        start = read_json(d / "window.json")
        if start is None:
            lost.append((w.repo, -1, "window never started"))
            continue
        armed_at, delay, interval, max_ticks = schedule_times(start)
        due = {
            k
            for k in range(max_ticks)
            if armed_at + delay + k * interval <= horizon
            and (since is None or armed_at + delay + k * interval >= since)
        }
        expected += len(due)
        seen: set[int] = set()
        unanswered: set[int] = set()
        series = rows.get(w.repo, []) if rows is not None else read_jsonl(d / "series.jsonl")
        for row in series:
            k, scheduled, ts = int(row["tick"]), float(row["scheduled_ts"]), float(row["ts"])
            if k not in due:
                continue
            hits = [arrivals.first_after(w.port, f"/{w.prefix}{p}", ts, within_s) for p in w.paths]
            if hits[0] is None:
                lost.append((w.repo, k, "probed, but the request never reached the target"))
                unanswered.add(k)
                continue
            seen.add(k)
            last = max(h.arrival for h in hits if h is not None)
            ticks.append(Tick(w.repo, k, scheduled, ts, hits[0].arrival, last))
        for k in sorted(due - seen - unanswered):
            scheduled = armed_at + delay + k * interval
            if censor_at is not None:
                ticks.append(Tick(w.repo, k, scheduled, censor_at, censor_at, censor_at, True))
            lost.append((w.repo, k, "no probe (skipped, or never ran)"))
    return Joined(ticks, lost, expected)


class SeriesReader:
    """Reads only what was appended to each window's `series.jsonl` since the last call."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def update(self, state: Path, wins: Iterable[Window]) -> None:
        for w in wins:
            offset = self.offsets.get(w.repo, 0)
            try:
                with (w.dir(state) / "series.jsonl").open("rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[w.repo] = offset + len(complete)
            self.rows[w.repo].extend(json_objects(complete.splitlines()))
