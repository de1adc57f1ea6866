"""Through the real daemon: deploys of the verdict-quality corpus run by `postdeploy run`.

    python -m bench --only judgement-daemon --settle 0   # as part of the bench suite
    python -m bench.judgement_daemon                     # alone: prints the table

`bench/judgement.py` replays its corpus through the pure judging core. This pushes a
deterministic selection of the same deploys through the real daemon and compares each real
`done` (status, action_taken, preexisting) with the verdict the pure replay gives, under the
same judge (`+ baseline (0.99)`: k of n, and the baseline comparison):

- one daemon, one repo per deploy (`d0012` is deploy 12 of the corpus), every window at once;
- one scripted HTTP server on 127.0.0.1 (`support.http.HttpServer`) with a path prefix per
  repo: the k-th request to a repo's health path gets the window's row k (its code and body,
  after sleeping the row's latency), the k-th request to each 5xx path and to the feature
  check gets row k's answers; the control URL answers. A blind deploy's repo points at a
  bound port that does not listen (connection refused), its control URL too;
- each repo's `.baseline.jsonl` is the deploy's hour of baseline rows, written with the
  daemon's own writer (`samples.SampleFile`: the file format the contract defines). With
  `baseline_interval_s` an hour, the baseline task probes each repo once when the daemon
  starts (the server answers healthy, outside the script) and then not again during the run;
  once every repo has that first row, the file is rewritten with the corpus' rows and
  `postdeploy arm` runs for every repo at once. (Not written before the daemon starts: the
  daemon does not watch a repo directory that exists at its start with no work item in it,
  so an arm in it would be found by the rescan, up to `rescan_interval_s` late.)

Time runs 20x faster than in the corpus (a 0.5 s interval for its 10 s): the window's rows
are the same, only the latencies are real. The baseline rows keep the corpus' own times
(10 s apart), shifted to the moment the arms are expected; the rows older than the corpus'
cut (`armed_at - baseline_gap_s`) move SHIFT_SLACK_S earlier still and the gap's rows (the
deploy's own restart) SHIFT_SLACK_S later, so the daemon's cut keeps the pure replay's rows
for an arm landing within +-SHIFT_SLACK_S of that moment (checked against each `done`'s
`baseline.reference.rows`).

Which deploys: in corpus order, the first `per_kind` of each kind whose window the scripted
server can play (no answer slower than `MAX_LATENCY_MS`, no timeout; the blind kind aside)
and whose pure verdict is not borderline: the same with `JITTER_MS` of extra latency on every
answer (added at once, and drawn at random per answer). Real latency is the scripted one plus
the machine's own overhead, so a borderline deploy could differ for that reason alone; the
measured overhead is reported with the table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import judgement as J
from bench.harness import Daemon, Window, write_config
from postdeploy import baseline, samples
from postdeploy.baseline import BaselineRow
from postdeploy.series import ProbeRow
from postdeploy.store import parse_json_lines
from postdeploy.verdict import Action, Decision, Status, decide_action
from support.http import HttpServer, Reply, Request
from support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "JUDGEMENT.md"
SECTION = "## Through the real daemon"
BEGIN, END = "<!-- judgement-daemon: begin -->", "<!-- judgement-daemon: end -->"

JUDGE = "+ baseline (0.99)"  # the judge of bench/judgement.py the daemon's config mirrors
# The judge with the request-level error ratio: its repos also have a Prometheus check, which
# the scripted server answers from the rows (`python -m bench --only judgement-daemon-traffic`).
TRAFFIC_JUDGE = "+ traffic (0.999)"
PER_KIND = 2  # deploys of each kind (18 kinds: 36 deploys)
INTERVAL_S = 0.5  # the corpus' 10 s tick, 20x faster
PROBE_TIMEOUT_S = 0.45
# The first tick comes this long after the arm (the corpus' comes one interval after it): the
# daemon's first probes must not fall in the CPU burst of the arm commands themselves. Only
# the timing changes: the server answers the first tick with row 0 whenever it comes.
INITIAL_DELAY_S = 5.0
MAX_LATENCY_MS = 350.0  # a window the server plays answers within this (well under the timeout)
JITTER_MS = 10.0  # a pure verdict that changes with this much more latency is borderline
JITTER_DRAWS = 5
SHIFT_SLACK_S = 20.0  # the baseline rows keep this far off the cut on either side
ARM_LANDS_S = 3.0  # when the `armed` files are expected after the arm commands start
ITEM = "release-1"
HEALTH, CHECK_PATH, CONTROL = "/health", "/checkout", "/control"
PROMETHEUS = "/prom"  # a repo's Prometheus: its instant queries come to /prom/api/v1/query
FIVEXX = [f"/api/{i}" for i in range(J.FIVEXX_PATHS)]

# -- which deploys (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """One deploy to run, with its rows and the pure replay's verdict."""

    index: int
    deploy: J.Deploy
    base: list[BaselineRow]
    window: list[ProbeRow]
    pure: J.Outcome2

    @property
    def repo(self) -> str:
        return f"d{self.index:04d}"

    @property
    def blind(self) -> bool:
        return self.deploy.group == "blind"


def the_judge(name: str = JUDGE) -> J.Judge:
    return next(j for j in J.judges() if j.name == name)


def playable(deploy: J.Deploy, window: Sequence[ProbeRow]) -> bool:
    """Whether the scripted server can play this window: every health answer within
    MAX_LATENCY_MS and none a timeout (a blind window is played by a port that refuses)."""
    if deploy.group == "blind":
        return True
    return all(r.health_code != 0 and r.latency_ms <= MAX_LATENCY_MS for r in window)


def _slower(window: Sequence[ProbeRow], extra: Sequence[float]) -> list[ProbeRow]:
    return [replace(r, latency_ms=r.latency_ms + e) for r, e in zip(window, extra, strict=True)]


def _key(o: J.Outcome2) -> tuple[Status, bool]:
    return o.status, o.preexisting


def borderline(
    judge: J.Judge, base: Sequence[BaselineRow], window: Sequence[ProbeRow], seed: int
) -> bool:
    """Whether the pure verdict changes when every answer is up to JITTER_MS slower: by a
    constant (0.5, 1, 2, 5 ms and JITTER_MS) or by a random draw per answer (seeded)."""
    want = _key(J.judge(judge, base, window))
    rng = random.Random(seed)
    extras = [[add] * len(window) for add in (0.5, 1.0, 2.0, 5.0, JITTER_MS)]
    extras += [[rng.uniform(0, JITTER_MS) for _ in window] for _ in range(JITTER_DRAWS)]
    return any(_key(J.judge(judge, base, _slower(window, e))) != want for e in extras)


def pick(
    judge: J.Judge, per_kind: int = PER_KIND, kinds: Collection[str] | None = None
) -> list[Pick]:
    """The first `per_kind` deploys of each kind (of `kinds`: None for all), in corpus order,
    that are playable and not borderline."""
    chosen: list[Pick] = []
    taken: dict[str, int] = {}
    for index, deploy in enumerate(J.deploys()):
        if kinds is not None and deploy.kind not in kinds:
            continue
        if taken.get(deploy.kind, 0) >= per_kind:
            continue
        base, window = J.rows_of(deploy)  # what `J.corpus()` yields for this deploy
        if not playable(deploy, window):
            continue
        if borderline(judge, base, window, deploy.seed):
            continue
        taken[deploy.kind] = taken.get(deploy.kind, 0) + 1
        chosen.append(Pick(index, deploy, base, window, J.judge(judge, base, window)))
    return chosen


def pure_action(o: J.Outcome2) -> Action:
    """What the daemon does about the pure verdict (auto_rollback on, a hook that exits 0)."""
    decision = decide_action(
        o.status, self_hosting=False, auto_rollback=True, preexisting=o.preexisting
    )
    return {
        Decision.NONE: Action.NONE,
        Decision.ALERT_ONLY: Action.ALERT_ONLY,
        Decision.ROLLBACK: Action.ROLLBACK_OK,
    }[decision]


def shifted(rows: Sequence[BaselineRow], armed_at: float, gap_s: float) -> list[BaselineRow]:
    """The baseline rows moved from the corpus' ARMED_AT to `armed_at`: those the corpus' cut
    keeps (older than ARMED_AT - `gap_s`) SHIFT_SLACK_S earlier still, the gap's rows (the
    deploy's own restart) SHIFT_SLACK_S later, so that the daemon's cut keeps the same rows for
    an arm landing within +-SHIFT_SLACK_S of `armed_at`."""
    delta, cut = armed_at - J.ARMED_AT, J.ARMED_AT - gap_s
    return [
        replace(r, ts=r.ts + delta + (-SHIFT_SLACK_S if r.ts < cut else SHIFT_SLACK_S))
        for r in rows
    ]


# -- the scripted target -------------------------------------------------------------------


class Script:
    """Answers each repo's requests from its window rows, in arrival order per path, once
    `play()` was called; before that (the baseline task's first probe) every answer is a
    healthy one, and counts for nothing."""

    def __init__(self, picks: Sequence[Pick]) -> None:
        self.rows = {p.repo: p.window for p in picks}
        self.extra = 0  # requests past a window's last row (there should be none)
        self.before = 0  # requests before `play()`
        self._hits: dict[str, int] = {}
        self._playing = False
        self._lock = threading.Lock()  # the server answers in a thread per connection

    def play(self) -> None:
        with self._lock:
            self._playing = True

    def _hit(self, path: str) -> int:
        """The number of this request to `path` since `play()` (1 for the first; 0 before)."""
        with self._lock:
            if not self._playing:
                self.before += 1
                return 0
            hit = self._hits[path] = self._hits.get(path, 0) + 1
            return hit

    def answer(self, _server_hit: int, request: Request) -> Reply:
        """The k-th request to a repo's path gets row k - 1 of its window."""
        full = urlsplit(request.path).path
        repo, _, rest = full.lstrip("/").partition("/")
        path = "/" + rest
        hit = self._hit(full)
        if path == CONTROL or hit == 0:
            return Reply(200, {"status": "ok"})
        rows = self.rows.get(repo, [])
        if hit > len(rows):
            with self._lock:
                self.extra += 1
            return Reply(410, {"error": "past the scripted window"})
        row = rows[hit - 1]
        if path == HEALTH:
            body = {"status": "ok" if row.health_ok else "failing"}
            code = 200 if row.health_ok else row.health_code
            return Reply(code, body, delay_s=row.latency_ms / 1000)
        if path in FIVEXX:
            failing = FIVEXX.index(path) < row.fivexx
            return Reply(500 if failing else 200, {"ok": not failing})
        if path == CHECK_PATH:
            ok = row.checks.get(J.CHECK, {}).get("ok") is not False
            return Reply(200 if ok else 500, {"ok": ok})
        if path == PROMETHEUS + "/api/v1/query":
            value = row.checks.get(J.TRAFFIC_CHECK, {}).get("value")
            result = [] if value is None else [{"metric": {}, "value": [0, repr(value)]}]
            data = {"resultType": "vector", "result": result}
            return Reply(200, {"status": "success", "data": data})
        return Reply(404, {"error": "no such path"})


# -- the daemon's config ---------------------------------------------------------------------


def settings(judge: J.Judge, initial_delay_s: float = INITIAL_DELAY_S) -> dict[str, Any]:
    """`[defaults]`: the judge's thresholds and baseline rules, in the daemon's keys."""
    th, rules = judge.th, judge.rules
    assert rules is not None and rules.fail_threshold == th.fail_threshold
    floor = (
        {} if rules.min_samples == th.min_samples else {"baseline_min_samples": rules.min_samples}
    )
    return {
        **floor,
        "window_s": J.TICKS * INTERVAL_S,
        "interval_s": INTERVAL_S,
        "probe_timeout_s": PROBE_TIMEOUT_S,
        "initial_delay_s": initial_delay_s,
        "fail_threshold": th.fail_threshold,
        "fail_lookback": max(th.fail_lookback, th.fail_threshold),
        "fivexx_threshold": th.fivexx_threshold,
        "min_samples": th.min_samples,
        "min_judged_fraction": th.min_judged_fraction,
        "auto_rollback": True,
        "verify_ticks": 0,
        # An hour: the baseline task finds the seeded rows recent and probes nothing more.
        "baseline_interval_s": 3600.0,
        "baseline_keep_s": 2 * J.BASELINE_S,
        "baseline_gap_s": rules.gap_s,
        "latency_increase": rules.latency_increase,
        "fivexx_increase": rules.fivexx_increase,
        "baseline_confidence": rules.confidence,
    }


def windows(picks: Sequence[Pick], port: int, dead: int, judge: J.Judge) -> list[Window]:
    """One repo per deploy on the scripted server (a blind one on the port that refuses)."""
    hook = shutil.which("true") or "/bin/true"
    lookback = judge.th.lookback_for_check(J.CHECK)
    wins = []
    for p in picks:
        at = dead if p.blind else port
        check: dict[str, Any] = {"name": J.CHECK, "path": CHECK_PATH}
        checks = [check]
        if judge.sees_traffic:
            assert judge.rules is not None
            (rule,) = judge.rules.checks
            checks.append(
                {
                    "name": J.TRAFFIC_CHECK,
                    "type": "prometheus",
                    "url": f"http://127.0.0.1:{at}/{p.repo}{PROMETHEUS}",
                    "query": "sum(increase(http_5xx[10s])) / sum(increase(http_requests[10s]))",
                    "max": J.TRAFFIC_MAX,
                    "baseline_min_shift": rule.min_shift,
                }
            )
        if lookback:
            for c in checks:
                c["fail_lookback"] = lookback
        overrides = {
            "control_url": f"http://127.0.0.1:{at}/{p.repo}{CONTROL}",
            "rollback_command": [hook],
            "checks": checks,
        }
        wins.append(Window(p.repo, ITEM, at, p.repo, [HEALTH, *FIVEXX], overrides))
    return wins


# -- a run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run through the daemon gave."""

    picks: list[Pick]
    done: dict[str, dict[str, Any]]  # repo -> its `done`
    series: dict[str, list[ProbeRow]]  # repo -> the daemon's rows
    armed_at: dict[str, float]  # repo -> the window's recorded armed_at
    assumed_arm: float  # the moment the baseline shift assumed
    seconds: float
    late_ticks: int
    extra_requests: int
    error_lines: list[str]  # the daemon's log lines at error level or worse


def seed(state: Path, picks: Sequence[Pick], armed_at: float, gap_s: float) -> None:
    """Write each repo's `.baseline.jsonl` (atomically, with the daemon's own writer)."""
    for p in picks:
        samples.SampleFile(state, p.repo).rewrite(shifted(p.base, armed_at, gap_s))


def arm_all(config: Path, picks: Sequence[Pick]) -> None:
    """`postdeploy arm REPO ITEM` for every repo at once, as deploy scripts would."""
    argv = [sys.executable, "-m", "postdeploy", "arm"]
    procs = [
        subprocess.Popen(
            [*argv, p.repo, ITEM, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for p in picks
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"postdeploy arm failed: {err.decode(errors='replace')}")


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    return parse_json_lines(path.read_bytes()).rows if path.exists() else []


def run(
    d: Path, picks: list[Pick], judge: J.Judge, initial_delay_s: float = INITIAL_DELAY_S
) -> Run:
    """Every pick through one daemon in `d`; returns when every window has its `done`."""
    script = Script(picks)
    server = HttpServer(script.answer)
    dead = HttpServer(script.answer, listening=False)  # bound, not listening: refused
    state, config = d / "state", d / "config.toml"
    assert judge.rules is not None
    gap = judge.rules.gap_s
    state.mkdir(parents=True, exist_ok=True)
    wins = windows(picks, server.port, dead.port, judge)
    write_config(config, state, wins, settings(judge, initial_delay_s))
    started = time.monotonic()
    daemon = Daemon(config, d)
    try:
        daemon.wait_ready()
        # The baseline task probes each repo once at its start (the server answers healthy,
        # outside the script), then not for an hour: its row is replaced by the corpus' ones.
        files = [state / p.repo / samples.BASELINE for p in picks]
        wait_until(
            lambda: all(f.exists() for f in files),
            "the baseline task's first row of every repo",
            poll=0.05,
            daemon=daemon.process,
            while_alive=True,
        )
        assumed = time.time() + ARM_LANDS_S
        seed(state, picks, assumed, gap)
        script.play()
        arm_all(config, picks)
        deadline = initial_delay_s + J.TICKS * INTERVAL_S + 120
        items = [w.dir(state) for w in wins]
        wait_until(
            lambda: all((i / "done").exists() for i in items),
            f"every `done` of {len(items)} windows",
            deadline,
            poll=0.2,
            daemon=daemon.process,
            while_alive=True,
        )
        late = len(daemon.find("tick.late")) + len(daemon.find("tick.skipped"))
        errors = [str(line)[:300] for line in daemon.problems()]
    finally:
        daemon.stop()
        server.stop()
        dead.stop()
    done = {w.repo: json.loads((w.dir(state) / "done").read_text()) for w in wins}
    series = {
        w.repo: [
            row
            for raw in _read_json_lines(w.dir(state) / "series.jsonl")
            if (row := ProbeRow.from_dict(raw)) is not None
        ]
        for w in wins
    }
    armed = {
        w.repo: float(json.loads((w.dir(state) / "window.json").read_text())["armed_at"])
        for w in wins
    }
    took = time.monotonic() - started
    return Run(picks, done, series, armed, assumed, took, late, script.extra, errors)


# -- the comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One deploy's line of the table."""

    pick: Pick
    expected: str
    pure: str
    daemon: str
    equal: bool
    pure_tick: int | None
    daemon_tick: int | None
    note: str  # why they differ (the figures), or a setup problem


def verdict_text(status: str, action: str, preexisting: bool) -> str:
    return f"{status} / {action}" + (" (preexisting)" if preexisting else "")


def overheads(picks: Sequence[Pick], series: dict[str, list[ProbeRow]]) -> list[float]:
    """Measured minus scripted latency of every passing health answer (ms), in arrival
    order (the daemon's j-th row got the script's row j)."""
    out = []
    for p in picks:
        if p.blind:
            continue
        for real, scripted in zip(series.get(p.repo, []), p.window, strict=False):
            if real.health_ok and scripted.health_ok:
                out.append(real.latency_ms - scripted.latency_ms)
    return out


def compare(result: Run, judge: J.Judge) -> list[Row]:
    """Each deploy's pure verdict against its real `done`."""
    rows = []
    for p in result.picks:
        done = result.done[p.repo]
        pure = verdict_text(p.pure.status.value, pure_action(p.pure).value, p.pure.preexisting)
        real_pre = done.get("preexisting") is True
        real = verdict_text(str(done.get("status")), str(done.get("action_taken")), real_pre)
        equal = pure == real
        real_rows = result.series.get(p.repo, [])
        daemon_tick = real_rows[-1].tick if done.get("status") == "DEGRADED" and real_rows else None
        notes = []
        want_ref = (
            baseline.start(p.base, J.ARMED_AT, judge.rules).reference.rows if judge.rules else 0
        )
        got_ref = done.get("baseline", {}).get("reference", {}).get("rows")
        if got_ref != want_ref:
            notes.append(f"reference rows {got_ref} (pure: {want_ref}): the arm missed the shift")
        if not equal:
            replayed = J.judge(judge, p.base, real_rows)
            extra = [
                r.latency_ms - s.latency_ms
                for r, s in zip(real_rows, p.window, strict=False)
                if r.health_ok
            ]
            notes.append(
                f"pure: {p.pure.reason}; daemon: {done.get('reason')}; the daemon's own rows "
                f"replayed: {replayed.status.value}; overhead max {max(extra, default=0):.1f} ms"
            )
        rows.append(
            Row(p, p.deploy.expected, pure, real, equal, p.pure.tick, daemon_tick, "; ".join(notes))
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    """The markdown table: deploy, kind, expected, pure verdict, daemon verdict, equal?"""
    lines = [
        "| deploy | kind | expected | pure replay | real daemon | equal "
        "| DEGRADED at tick (pure / daemon) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ticks = (
            "-"
            if r.pure_tick is None and r.daemon_tick is None
            else f"{_t(r.pure_tick)} / {_t(r.daemon_tick)}"
        )
        lines.append(
            f"| {r.pick.repo} | {r.pick.deploy.name} | {r.expected} | {r.pure} | {r.daemon} "
            f"| {'yes' if r.equal else '**no**'} | {ticks} |"
        )
    return "\n".join(lines)


def _t(tick: int | None) -> str:
    return "-" if tick is None else str(tick)


def figures(result: Run, rows: Sequence[Row]) -> dict[str, Any]:
    over = overheads(result.picks, result.series)
    drift = [result.armed_at[p.repo] - result.assumed_arm for p in result.picks]
    return {
        "deploys": len(rows),
        "equal": sum(r.equal for r in rows),
        "differences": [f"{r.pick.repo} {r.pick.deploy.name}: {r.note}" for r in rows if r.note],
        "seconds": round(result.seconds, 1),
        "late_or_skipped_ticks": result.late_ticks,
        "ticks_missed": sum(int(d.get("ticks_missed") or 0) for d in result.done.values()),
        "requests_past_the_script": result.extra_requests,
        "error_lines": result.error_lines[:5],
        "overhead_ms": {
            "answers": len(over),
            "median": round(statistics.median(over), 2) if over else None,
            "p99": round(sorted(over)[math.ceil(0.99 * len(over)) - 1], 2) if over else None,
            "max": round(max(over), 2) if over else None,
            "min": round(min(over), 2) if over else None,
        },
        "arm_vs_assumed_s": [round(min(drift), 2), round(max(drift), 2)],
    }


def summary(f: dict[str, Any]) -> str:
    o = f["overhead_ms"]
    return (
        f"{f['equal']}/{f['deploys']} daemon verdicts equal to the pure replay's; run "
        f"{f['seconds']:.0f} s; measured latency minus scripted, over {o['answers']} answers: "
        f"median {o['median']} ms, p99 {o['p99']} ms, max {o['max']} ms; arms landed "
        f"{f['arm_vs_assumed_s'][0]:+.1f}..{f['arm_vs_assumed_s'][1]:+.1f} s from the assumed "
        f"moment; {f['late_or_skipped_ticks']} late or skipped ticks, {f['ticks_missed']} missed, "
        f"{f['requests_past_the_script']} requests past the script"
    )


def markers(judge: str = JUDGE) -> tuple[str, str]:
    """The markers around a judge's generated part of the section."""
    if judge == JUDGE:
        return BEGIN, END
    return BEGIN.replace(":", " traffic:"), END.replace(":", " traffic:")


def write_doc(text: str, path: Path = DOC, judge: str = JUDGE) -> None:
    """Put `text` between the judge's markers (the section and markers appended at the end
    when missing); the rest of the file is left alone."""
    doc = path.read_text()
    begin, end = markers(judge)
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        doc = f"{head}{begin}\n{text}\n{end}{tail}"
    else:
        doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n{begin}\n{text}\n{end}\n"
    path.write_text(doc)


def generated(rows: Sequence[Row], f: dict[str, Any]) -> str:
    """The section's measured part: the run's figures and the table."""
    o, arms = f["overhead_ms"], f["arm_vs_assumed_s"]
    lines = [
        f"Last run ({time.strftime('%Y-%m-%d')}): **{f['equal']} of {f['deploys']}** daemon "
        f"verdicts equal to the pure replay's; the daemon ran {f['seconds']:.0f} s.",
        "",
        f"- measured minus scripted latency, over {o['answers']} passing health answers: "
        f"median {o['median']} ms, p99 {o['p99']} ms, max {o['max']} ms;",
        f"- the arms landed {arms[0]:+.1f} to {arms[1]:+.1f} s from the moment the baseline "
        f"shift assumed (+-{SHIFT_SLACK_S:g} s allowed); {f['late_or_skipped_ticks']} ticks "
        f"late or skipped, {f['ticks_missed']} missed, {f['requests_past_the_script']} "
        "requests past a window's rows.",
        "",
        table(rows),
    ]
    if f["differences"]:
        lines += ["", "Differences and setup notes:", ""] + [f"- {d}" for d in f["differences"]]
    return "\n".join(lines)


# -- entry points ----------------------------------------------------------------------------


def measure(
    d: Path,
    per_kind: int = PER_KIND,
    kinds: Collection[str] | None = None,
    initial_delay_s: float = INITIAL_DELAY_S,
    judge_name: str = JUDGE,
) -> tuple[list[Row], dict[str, Any]]:
    """Pick the deploys, run them through the daemon in `d` under the judge named
    `judge_name`, compare: the table's rows and the run's figures."""
    judge = the_judge(judge_name)
    picks = pick(judge, per_kind, kinds)
    result = run(d, picks, judge, initial_delay_s)
    rows = compare(result, judge)
    return rows, figures(result, rows)


def run_scenario(ctx: Any, judge: str = JUDGE) -> Any:
    """The `judgement-daemon` scenario of `python -m bench` (`judgement-daemon-traffic`
    with the traffic judge)."""
    from bench.scenarios import Result

    name = "judgement-daemon" if judge == JUDGE else "judgement-daemon-traffic"
    with ctx.scratch(name) as d:
        rows, f = measure(d, judge_name=judge)
    if not ctx.quick:
        write_doc(generated(rows, f), judge=judge)
    return Result(
        name,
        summary(f),
        "every daemon verdict equal to the pure replay's",
        f["equal"] == f["deploys"],
        {**f, "table": table(rows)},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.judgement_daemon")
    parser.add_argument("--per-kind", type=int, default=PER_KIND, help="deploys of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--judge", default=JUDGE, choices=[JUDGE, TRAFFIC_JUDGE], help="the judge to mirror"
    )
    parser.add_argument(
        "--write-doc", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    d = Path(tempfile.mkdtemp(prefix="judgement-daemon-"))
    try:
        rows, f = measure(d, args.per_kind, judge_name=args.judge)
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    print(table(rows))
    for line in f["differences"]:
        print(f"  {line}")
    print(f"\n{summary(f)}")
    if args.write_doc:
        write_doc(generated(rows, f), judge=args.judge)
        print(f"wrote {DOC}")
    return 0 if f["equal"] == f["deploys"] else 1


if __name__ == "__main__":
    sys.exit(main())
