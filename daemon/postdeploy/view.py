"""The terminal view of `postdeploy status` (rich tables)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postdeploy.layout import ItemKey

_STYLE = {"HEALTHY": "green", "DEGRADED": "bold red", "ERROR": "bold red", "MISSED": "yellow"}


def _ago(ts: float | None) -> str:
    if ts is None:
        return "?"
    seconds = max(0.0, time.time() - float(ts))
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render(snapshot: dict[str, Any], console: Console) -> None:
    state = "enabled" if snapshot["enabled"] else "[bold red]DISABLED (kill switch)[/]"
    console.print(f"postdeploy: {state}, state dir {snapshot.get('state_dir', '?')}")
    active = Table(title=f"Open windows ({snapshot['active_count']})", title_justify="left")
    for column in ("repo", "work item", "armed", "ticks", "failed", "last failure"):
        active.add_column(column)
    for w in snapshot["active"]:
        ticks = f"{w['ticks']}/{w['max_ticks'] if w['max_ticks'] is not None else '?'}"
        failed = str(w["checks_failed"])
        active.add_row(
            w["repo"],
            w["work_item"],
            _ago(w["armed_at"]),
            ticks,
            f"[red]{failed}[/]" if w["checks_failed"] else failed,
            w.get("last_failure") or "",
        )
    console.print(active)
    recent = Table(title="Recent outcomes", title_justify="left")
    for column in ("repo", "work item", "status", "action", "finished"):
        recent.add_column(column)
    for r in snapshot["recent"]:
        style = _STYLE.get(str(r["status"]), "")
        status = f"[{style}]{r['status']}[/]" if style else str(r["status"])
        recent.add_row(
            r["repo"],
            r["work_item"],
            status,
            str(r["action_taken"]),
            str(r.get("finished_at") or ""),
        )
    console.print(recent)
    for r in snapshot.get("rejected", []):
        console.print(f"[yellow]rejected[/] {r['repo']}/{r['work_item']}: {escape(r['reason'])}")


def print_status(snapshot: dict[str, Any]) -> None:
    render(snapshot, Console())


def print_show(root: Path, key: ItemKey) -> int:
    """Print one window's timeline and report; returns the exit code."""
    report = root / key.repo / key.work_item / "report.md"
    if report.is_file() and not report.is_symlink():
        Console().print(report.read_text(encoding="utf-8"), markup=False, highlight=False)
        return 0
    Console().print(f"{key}: no report yet", markup=False)
    return 1
