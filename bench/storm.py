"""A supersede storm: 2,000 windows of one repo armed in the same instant, beside a bystander.

    python -m bench.storm [--windows 2000] [--runs 3]

What it shows: the real daemon (pinned to core 0, as in every scenario) with two repos: `storm`,
whose 2,000 work items appear at once (each directory renamed into place with `armed` inside,
every `armed` with the same mtime, so the last by name is current), and `bystander`, one window
armed a few seconds before. Printed per run:

- `window.superseded` log lines per superseded window (must be 1: before, the daemon logged
  one for every window still open at each step, quadratic in the storm);
- every other log line of the storm, per window;
- the bystander window's tick lateness (when each tick's probe started after its planned
  time, from its `series.jsonl`): median, p99 and max over its ticks during the storm;
- how long the storm took to settle (all 1,999 `done` files written).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import DAEMON_ENV, Daemon, PyTarget, Window, wait_until, write_config


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_once(n: int, workdir: Path, target: PyTarget) -> dict[str, Any]:
    state = workdir / "state"
    state.mkdir()
    port = target.ports[0]
    storm = Window("storm", "x", port, "storm", overrides={"window_s": 20.0})
    bystander = Window("bystander", "release-1", port, "bystander")
    config = workdir / "config.toml"
    write_config(
        config,
        state,
        [storm, bystander],
        {"window_s": 30.0, "interval_s": 0.5, "initial_delay_s": 0.5, "probe_timeout_s": 0.4},
    )
    daemon = Daemon(config, workdir)
    try:
        daemon.wait_ready()
        bystander_dir = bystander.dir(state)
        bystander_dir.mkdir(parents=True)
        (bystander_dir / "armed").touch()
        wait_until(lambda: (bystander_dir / "series.jsonl").exists(), 30, "the bystander's tick")
        time.sleep(2.0)  # a few quiet ticks of the bystander before the storm
        staging = workdir / "staging"
        names = [f"w{i:05d}" for i in range(n)]
        instant = time.time()
        for name in names:
            (staging / name).mkdir(parents=True)
            (staging / name / "armed").touch()
            os.utime(staging / name / "armed", (instant, instant))
        (state / "storm").mkdir()
        storm_at = time.time()
        for name in names:
            (staging / name).rename(state / "storm" / name)
        superseded = names[:-1]
        wait_until(
            lambda: all((state / "storm" / s / "done").exists() for s in superseded[-50:]),
            300,
            "the last superseded windows",
        )
        wait_until(
            lambda: (
                sum((state / "storm" / s / "done").exists() for s in superseded) == len(superseded)
            ),
            300,
            "every superseded window",
        )
        settled_s = time.time() - storm_at
        time.sleep(2.0)  # the bystander's ticks right after the storm count too
        rows = [
            json.loads(line)
            for line in (bystander_dir / "series.jsonl").read_text().splitlines()
            if line.strip()
        ]
        during = [r for r in rows if r["scheduled_ts"] >= storm_at - 0.5]
        late_ms = [(r["ts"] - r["scheduled_ts"]) * 1000 for r in during]
        expected_ticks = int((rows[-1]["scheduled_ts"] - rows[0]["scheduled_ts"]) / 0.5) + 1
        lines = [ln for ln in daemon.lines if ln.get("repo") == "storm"]
        per_event = Counter(ln.get("event") for ln in lines)
        per_window = Counter(
            ln.get("work_item") for ln in lines if ln.get("event") == "window.superseded"
        )
        return {
            "windows": n,
            "superseded_lines": per_event["window.superseded"],
            "superseded_lines_per_window_max": max(per_window.values()) if per_window else 0,
            "storm_lines_per_window": round(len(lines) / n, 2),
            "storm_lines_by_event": dict(per_event.most_common(8)),
            "settled_s": round(settled_s, 2),
            "bystander_ticks_during": len(during),
            "bystander_ticks_skipped": expected_ticks - len(rows),
            "bystander_late_ms_median": round(statistics.median(late_ms), 1) if late_ms else None,
            "bystander_late_ms_p99": round(_quantile(late_ms, 0.99), 1),
            "bystander_late_ms_max": round(max(late_ms), 1) if late_ms else None,
            "errors": len(daemon.problems()),
        }
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--pythonpath", help="run the daemon from another checkout's daemon/ (an A/B baseline)"
    )
    args = parser.parse_args()
    if args.pythonpath:
        DAEMON_ENV["PYTHONPATH"] = args.pythonpath
    target = PyTarget(ports=1)
    results = []
    try:
        for i in range(args.runs):
            workdir = Path(tempfile.mkdtemp(prefix="pd-storm-"))
            try:
                result = run_once(args.windows, workdir, target)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            results.append(result)
            print(f"run {i + 1}: {json.dumps(result)}", flush=True)
    finally:
        target.stop()
    for key in ("settled_s", "bystander_late_ms_median", "bystander_late_ms_p99"):
        values = [r[key] for r in results if r[key] is not None]
        print(f"median {key}: {statistics.median(values) if values else None}")


if __name__ == "__main__":
    main()
