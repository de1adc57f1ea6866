"""The baseline: windows watched the way the seed module did it, written fresh for comparison.

    python -m bench.reference SPEC.json

The seed ran each tick as one job of a single worker: probe `/health`, then each 5xx path,
one after another, each a blocking `urllib` request with a 5 s timeout; read the whole
series file, append, rewrite it; classify; then either react (run the rollback command and
wait for it) or queue the next tick. One job at a time: while one tick waits on a slow
service, every other window's tick waits too.

Kept from the seed: the single worker, sequential blocking probes with their 5 s timeout, a
new connection per request, the read-modify-write series, `classify` and the reaction in the
worker. Made generous to it: ticks are queued on the same fixed grid as the daemon's
(`armed_at + initial_delay_s + k * interval_s`; the seed re-queued each tick `interval_s`
after the previous one ran, so it drifted), and a scanner thread finds sentinels within 50 ms
(the seed was handed its first job by the pipeline). So its lateness is a lower bound.

For the measurements it also writes `window.json` and `series.jsonl` rows in the daemon's
format, prints JSON log lines (`window.degraded`, `rollback.started`) with an ISO `ts`, and
sends READY=1 to `$NOTIFY_SOCKET` like the daemon.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEALTHY, DEGRADED = "HEALTHY", "DEGRADED"
# The machine has no proxy, but urlopen would honour one from the environment: never here.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(event: str, **fields: Any) -> None:
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    print(json.dumps({"event": event, "ts": ts, **fields}), flush=True)


def http_status(url: str, timeout: float) -> tuple[int, str]:
    """The seed's `_http_status`: (code, body), (0, "") on any network trouble."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        try:
            body = e.read(4096).decode("utf-8", "replace")
        except Exception:
            body = ""
        return int(e.code), body
    except Exception:
        return 0, ""


def probe_signals(base: str, paths: list[str], timeout: float) -> dict[str, Any]:
    """The seed's `probe_signals`: health first, then each 5xx path, sequentially."""
    code, body = http_status(base + paths[0], timeout)
    health_ok = False
    if code == 200:
        try:
            health_ok = json.loads(body).get("status") == "ok"
        except Exception:
            health_ok = False
    total = fivexx = 0
    for path in paths[1:]:
        total += 1
        ep_code, _ = http_status(base + path, timeout)
        if ep_code == 0 or 500 <= ep_code <= 599:
            fivexx += 1
    return {
        "health_ok": health_ok,
        "health_code": code,
        "total": total,
        "fivexx": fivexx,
        "detail": f"health={code} 5xx={fivexx}/{total}",
    }


def classify(series: list[dict[str, Any]], fail_threshold: int, fivexx_threshold: float) -> str:
    """The seed's `classify` (no `min_samples`: it had none)."""
    streak = best = total = fivexx = 0
    for row in series:
        total += int(row.get("total") or 0)
        fivexx += int(row.get("fivexx") or 0)
        streak = 0 if row.get("health_ok") else streak + 1
        best = max(best, streak)
    if best >= fail_threshold:
        return DEGRADED
    if total > 0 and fivexx / total > fivexx_threshold:
        return DEGRADED
    return HEALTHY


@dataclass(order=True)
class Job:
    due: float
    repo: str = field(compare=False)
    item: str = field(compare=False)
    tick: int = field(compare=False)
    armed_at: float = field(compare=False)


class Reference:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.state = Path(spec["state_dir"])
        self.timeout = float(spec.get("timeout_s", 5))
        self.repos: dict[str, dict[str, Any]] = spec["repos"]
        self.jobs: list[Job] = []
        self.cond = threading.Condition()
        self.seen: set[tuple[str, str]] = set()

    # -- the pipeline's side: arming queues tick 0 --------------------------------------

    def scan(self) -> None:
        while True:
            for repo, cfg in self.repos.items():
                try:
                    items = os.listdir(self.state / repo)
                except FileNotFoundError:
                    continue
                for item in items:
                    d = self.state / repo / item
                    if (repo, item) in self.seen or not (d / "armed").exists():
                        continue
                    self.seen.add((repo, item))
                    armed_at = min((d / "armed").stat().st_mtime, time.time())
                    (d / "window.json").write_text(
                        json.dumps(
                            {
                                "armed_at": armed_at,
                                "initial_delay_s": cfg["initial_delay_s"],
                                "interval_s": cfg["interval_s"],
                                "max_ticks": cfg["max_ticks"],
                            }
                        )
                    )
                    self.push(Job(armed_at + cfg["initial_delay_s"], repo, item, 0, armed_at))
            time.sleep(0.05)

    def push(self, job: Job) -> None:
        with self.cond:
            heapq.heappush(self.jobs, job)
            self.cond.notify()

    # -- the single worker --------------------------------------------------------------

    def work(self) -> None:
        while True:
            with self.cond:
                while not self.jobs or self.jobs[0].due > time.time():
                    wait = self.jobs[0].due - time.time() if self.jobs else None
                    self.cond.wait(wait)
                job = heapq.heappop(self.jobs)
            self.run_tick(job)

    def run_tick(self, job: Job) -> None:
        cfg = self.repos[job.repo]
        d = self.state / job.repo / job.item
        ts = time.time()
        result = probe_signals(cfg["base_url"], cfg["paths"], self.timeout)
        row = {"tick": job.tick, "scheduled_ts": job.due, "ts": ts, **result}
        # The seed's append_probe: read the whole JSON list, append, write it all back.
        try:
            series = json.loads((d / "series").read_text())
        except (FileNotFoundError, ValueError):
            series = []
        series.append(row)
        (d / "series").write_text(json.dumps(series))
        with (d / "series.jsonl").open("a") as f:  # for the measurements only
            f.write(json.dumps(row) + "\n")
        verdict = classify(series, cfg["fail_threshold"], cfg["fivexx_threshold"])
        if verdict == DEGRADED:
            log("window.degraded", repo=job.repo, work_item=job.item)
            if cfg.get("auto_rollback") and cfg.get("rollback_command"):
                log("rollback.started", repo=job.repo, work_item=job.item)
                env = {
                    **os.environ,
                    **cfg.get("rollback_env", {}),
                    "POSTDEPLOY_REPO": job.repo,
                    "POSTDEPLOY_WORK_ITEM": job.item,
                }
                subprocess.run(cfg["rollback_command"], env=env, timeout=60, check=False)
            (d / "done").write_text(json.dumps({"status": DEGRADED}))
            log("window.finished", repo=job.repo, work_item=job.item, status=DEGRADED)
        elif job.tick + 1 < cfg["max_ticks"]:
            due = job.armed_at + cfg["initial_delay_s"] + (job.tick + 1) * cfg["interval_s"]
            self.push(Job(due, job.repo, job.item, job.tick + 1, job.armed_at))
        else:
            (d / "done").write_text(json.dumps({"status": HEALTHY}))
            log("window.finished", repo=job.repo, work_item=job.item, status=HEALTHY)


def _notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    ref = Reference(spec)
    threading.Thread(target=ref.scan, daemon=True).start()
    log("daemon.ready")
    _notify_ready()
    ref.work()


if __name__ == "__main__":
    main()
