"""The outputs: one table row per scenario as it finishes, its JSON, results.md and the chart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.chart import ecdf_chart
from bench.harness import REPO_ROOT
from bench.scenarios import Result

HEADER = "| scenario | measured | target | verdict |\n| --- | --- | --- | --- |"
MAX_SAMPLES = 20_000  # per series in the JSON (the chart needs no more)


def verdict(passed: bool | None, error: str | None = None) -> str:
    if error:
        return "ERROR"
    return {True: "PASS", False: "FAIL", None: "info"}[passed]


def row(doc: dict[str, Any]) -> str:
    cells = [
        doc["scenario"],
        doc["headline"],
        doc["target"],
        verdict(doc["passed"], doc.get("error")),
    ]
    return "| " + " | ".join(" ".join(str(c).replace("|", "/").split()) for c in cells) + " |"


def to_doc(
    result: Result, *, mode: str, started: float, machine: dict[str, Any], command: str
) -> dict[str, Any]:
    samples = {}
    for name, values in result.samples.items():
        step = max(1, len(values) // MAX_SAMPLES)
        samples[name] = [round(v, 3) for v in sorted(values)[::step]]
    return {
        "scenario": result.scenario,
        "headline": result.headline,
        "target": result.target,
        "passed": result.passed,
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": command,
        "machine": machine,
        "details": result.details,
        "samples": samples,
    }


def error_doc(
    name: str, error: str, *, mode: str, started: float, machine: dict[str, Any], command: str
) -> dict[str, Any]:
    doc = to_doc(
        Result(name, error, "", None), mode=mode, started=started, machine=machine, command=command
    )
    doc["error"] = error
    return doc


def save(doc: dict[str, Any], out: Path) -> None:
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    name = doc["scenario"].replace(" ", "-")
    (folder / f"{name}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")


def load_all(out: Path, order: list[str]) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((out / "results").glob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except ValueError:
            continue
    rank = {name: i for i, name in enumerate(order)}
    return sorted(docs, key=lambda d: rank.get(d["scenario"].split()[0], len(rank)))


def write_outputs(out: Path, order: list[str], quick: bool) -> Path:
    """results.md and lateness.png from every scenario's latest JSON in `out/results`."""
    docs = load_all(out, order)
    series: dict[str, list[float]] = {}
    for doc in docs:
        series.update(doc.get("samples", {}))
    chart = out / "lateness.png"
    title = "TICK LATENESS: SHARE OF TICKS AT MOST THAT LATE" + (
        " (QUICK DRY RUN)" if quick else ""
    )
    chart.write_bytes(ecdf_chart(series, title))
    machine = docs[-1]["machine"] if docs else {}
    docs_link = os.path.relpath(REPO_ROOT / "docs" / "PERFORMANCE.md", out.absolute())
    modes = sorted({d["mode"] for d in docs})
    lines = [
        "# postdeploy benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); the method and what limits each figure are "
        f"in [docs/PERFORMANCE.md]({docs_link}).",
        "",
    ]
    if "quick" in modes:
        lines += [
            "> **QUICK / DRY-RUN figures**: scaled-down sizes and durations (`--quick`), run on a "
            "shared machine while other work was running. They show the harness works and the "
            "order of magnitude, not the figures to quote.",
            "",
        ]
    lines += [
        f"- Machine: {machine.get('nproc')} cores, {machine.get('cpu_model')}, "
        f"{machine.get('ram_gb')} GB RAM, Linux {machine.get('kernel')}, Python "
        f"{machine.get('python')}; load average at start {machine.get('loadavg_at_start')}",
        f"- Daemon pinned to core 0, target and harness to core 1: {machine.get('pinned')}; "
        f"nginx: {machine.get('nginx') or 'not installed (Python target)'}",
        f"- State directory filesystem: {machine.get('state_fs')}",
        "",
        HEADER,
        *[row(d) for d in docs],
        "",
        "![tick lateness distributions](lateness.png)",
        "",
        "## Details",
        "",
    ]
    for doc in docs:
        lines += [
            f"### {doc['scenario']}",
            "",
            f"{doc['mode']} run, started {doc['started_at']}, took {doc['duration_s']} s: "
            f"`{doc['command']}`",
            "",
            "```json",
            json.dumps(doc["details"], indent=1, default=str)[:12_000],
            "```",
            "",
        ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
