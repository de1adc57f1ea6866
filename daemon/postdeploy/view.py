"""The terminal views: `postdeploy status` (rich tables) and `postdeploy show REPO ITEM`.

`render()` draws a `status.collect()` snapshot and nothing else: it reads no files and takes
"now" from the snapshot, so the same snapshot always draws the same screen (the tests keep
one as a fixed-width text file). `render_show()` reads one work item's files.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from postdeploy import layout
from postdeploy.config import Config
from postdeploy.layout import ItemKey, open_item_dir
from postdeploy.status import fold_series, read_json, settings_for, window_state
from postdeploy.store import ItemStore

STATUS_STYLE = {
    "HEALTHY": "green",
    "DEGRADED": "bold red",
    "ERROR": "bold red",
    "MISSED": "yellow",
    "INCONCLUSIVE": "yellow",
    "SUPERSEDED": "dim",
    "CANCELLED": "dim",
    "DISABLED": "yellow",
}
ACTION_STYLE = {
    "ROLLBACK_OK": "yellow",
    "ROLLBACK_FAILED": "bold red",
    "ROLLBACK_UNKNOWN": "bold red",
    "ALERT_ONLY": "yellow",
}
BLOCKS = "▁▂▃▄▅▆▇█"
FAILED_MARK = "✗"
GAP_MARK = "·"  # a tick number that has no row: skipped (too late) or missed while down
SPARK_WIDTH = 20
SHOW_MAX_ROWS = 500
BAR_WIDTH = 16
# Names never break mid-word: a name too long for its column is cut with an ellipsis (the
# whole name is in `status --json` and `show`). At least 18 columns, even at 80 wide.
NAME_COLUMN: dict[str, Any] = {"overflow": "ellipsis", "no_wrap": True, "min_width": 18}
NARROW = 100  # below this many columns, the status view makes room for the names
COMMIT_CHARS = 10  # a commit is shown this long (a short hash)


# -- small formatters ---------------------------------------------------------------------


def ago(ts: float | None, now: float) -> str:
    """`ts` relative to `now`, compactly ("5s ago", "3m ago", "2h ago", "4d ago")."""
    if ts is None:
        return "?"
    seconds = now - ts
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _epoch(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def clock(ts: float) -> str:
    """Epoch seconds as `HH:MM:SS.mmm` UTC."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def styled(value: Any, styles: dict[str, str]) -> Text:
    text = str(value)
    return Text(text, style=styles.get(text, ""))


# -- status -------------------------------------------------------------------------------


def sparkline(probes: Sequence[dict[str, Any]], width: int = SPARK_WIDTH) -> Text:
    """Latency bars (scaled to the largest shown), `✗` for failed ticks, `·` for gaps."""
    if not probes:
        return Text("no probes yet", style="dim")
    by_tick = {int(p["tick"]): p for p in probes}
    last = max(by_tick)
    first = max(min(by_tick), last - width + 1)
    shown = [by_tick[t] for t in range(first, last + 1) if t in by_tick]
    peak = max((float(p["latency_ms"]) for p in shown if p["ok"]), default=0.0)
    text = Text()
    for tick in range(first, last + 1):
        probe = by_tick.get(tick)
        if probe is None:
            text.append(GAP_MARK, style="dim")
        elif not probe["ok"]:
            text.append(FAILED_MARK, style="bold red")
        else:
            level = float(probe["latency_ms"]) / peak if peak > 0 else 0.0
            text.append(BLOCKS[min(len(BLOCKS) - 1, int(level * len(BLOCKS)))], style="green")
    oks = [float(p["latency_ms"]) for p in shown if p["ok"]]
    failed = sum(1 for p in shown if not p["ok"])
    low, high = (f"{min(oks):.0f}", f"{max(oks):.0f}") if oks else ("", "")
    summary = [f"{low} ms" if low == high else f"{low}-{high} ms"] if oks else []
    summary += [f"{failed} failed"] if failed else []
    if summary:
        text.append("\n" + ", ".join(summary), style="dim")
    return text


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    """A plain-text progress bar: `█` done, `░` to go (readable without colours)."""
    done = round(min(1.0, max(0.0, fraction)) * width)
    return Text("█" * done, style="cyan") + Text("░" * (width - done), style="dim")


def _progress(w: dict[str, Any], now: float, width: int = BAR_WIDTH) -> Text:
    """A bar for the time elapsed toward the window's end, then ticks done and time."""
    ticks = f"tick {w['ticks']}/{w['max_ticks'] if w['max_ticks'] is not None else '?'}"
    armed, ends = w.get("armed_at"), w.get("ends_at")
    if armed is None or ends is None or ends <= armed:
        return Text(ticks)
    total = ends - armed
    elapsed = min(max(0.0, now - armed), total)
    return bar(elapsed / total, width) + Text(
        f"\n{ticks}\n{duration(elapsed)} of {duration(total)}"
    )


def _verdict_so_far(w: dict[str, Any]) -> Text:
    """The rules' inputs so far against their thresholds."""
    text = Text()
    streak, limit = w.get("health_streak", 0), w.get("fail_threshold")
    style = "bold red" if limit and streak >= limit else ("yellow" if streak else "green")
    text.append(f"health streak {streak}" + (f"/{limit}" if limit else ""), style=style)
    fivexx, total = w.get("fivexx", 0), w.get("fivexx_total", 0)
    ratio, threshold = w.get("fivexx_ratio", 0.0), w.get("fivexx_threshold")
    min_samples = w.get("min_samples")
    text.append("\n")
    if total == 0:
        text.append("5xx: no samples yet", style="dim")
    else:
        over = threshold is not None and ratio > threshold
        judged = min_samples is None or total >= min_samples
        style = ("bold red" if judged else "yellow") if over else ("yellow" if fivexx else "green")
        limit_text = f" (limit {threshold:g})" if threshold is not None else ""
        text.append(f"5xx {fivexx}/{total} = {ratio:.2f}{limit_text}", style=style)
        if not judged:
            text.append(f"\njudged from {min_samples} requests", style="dim")
    for name, check in (w.get("failing_checks") or {}).items():
        text.append(f'\ncheck "{name}" failing {check["streak"]}x: {check["detail"]}', style="red")
    if w.get("last_failure"):
        text.append(f"\nlast failure: {w['last_failure']}", style="red")
    return text


def _open_windows(snapshot: dict[str, Any], now: float, width: int = 100) -> Table:
    # Below 100 columns the bar and the sparkline give up room to the names.
    bar_width, spark_width = (BAR_WIDTH, SPARK_WIDTH) if width >= NARROW else (10, 12)
    table = Table(
        title=f"Open windows ({snapshot['active_count']})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        expand=True,
    )
    table.add_column("repo / work item", ratio=2, **NAME_COLUMN)
    table.add_column("window", width=bar_width + 2)
    table.add_column("probes (latency)", width=spark_width + 1)
    table.add_column("verdict so far", ratio=3, overflow="fold")
    for w in snapshot["active"]:
        who = Text(f"{w['repo']}\n{w['work_item']}\narmed {ago(w.get('armed_at'), now)}")
        if w.get("commit"):
            who.append(f"\ncommit {str(w['commit'])[:COMMIT_CHARS]}", style="dim")
        if w.get("mode") == "shadow":
            who.append("\nshadow mode", style="magenta")
        if not w.get("seen_by_daemon", True):
            who.append("\nnot yet taken up", style="yellow")
        if w.get("cancel_requested"):
            who.append("\ncancel requested", style="yellow")
        table.add_row(
            who,
            _progress(w, now, bar_width),
            sparkline(w.get("probes", []), spark_width),
            _verdict_so_far(w),
        )
    if not snapshot["active"]:
        table.add_row(Text("none", style="dim"), "", "", "")
    return table


def _recent(snapshot: dict[str, Any], now: float, width: int = 100) -> Table:
    table = Table(title="Recent outcomes", title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    # rich shares out ratio columns without minding min_width: a bigger share when narrow.
    table.add_column("repo / work item", ratio=2 if width >= NARROW else 3, **NAME_COLUMN)
    table.add_column("outcome", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    table.add_column("reason", ratio=5, overflow="fold")
    for r in snapshot["recent"]:
        total, failed = r.get("checks_total"), r.get("checks_failed")
        outcome = styled(r["status"], STATUS_STYLE) + "\n" + styled(r["action_taken"], ACTION_STYLE)
        checks = f"\n{failed}/{total} ticks failed" if total is not None else ""
        who = Text(f"{r['repo']}/{r['work_item']}")
        if r.get("commit"):
            who.append(f"\ncommit {str(r['commit'])[:COMMIT_CHARS]}", style="dim")
        table.add_row(
            who,
            outcome,
            ago(_epoch(r.get("finished_at")), now),
            Text(str(r.get("reason") or "")) + Text(checks, style="dim"),
        )
    if not snapshot["recent"]:
        table.add_row(Text("none", style="dim"), "", "", "")
    return table


def _rejected(snapshot: dict[str, Any]) -> Table:
    table = Table(
        title="Rejected sentinels", title_justify="left", box=box.SIMPLE_HEAD, expand=True
    )
    table.add_column("repo / work item", ratio=2, **NAME_COLUMN)
    table.add_column("reason", ratio=5, overflow="fold")
    for r in snapshot["rejected"]:
        table.add_row(f"{r['repo']}/{r['work_item']}", Text(r["reason"], style="yellow"))
    return table


def render(snapshot: dict[str, Any], console: Console) -> None:
    """Draw a `status.collect()` snapshot."""
    now = float(snapshot.get("now") or time.time())
    header = Text("postdeploy: ", style="bold")
    if snapshot["enabled"]:
        header.append("enabled", style="green")
    else:
        header.append("DISABLED (kill switch: enabled = false)", style="bold red")
    header.append(f", state dir {snapshot.get('state_dir', '?')}, ")
    header.append(f"{snapshot['active_count']} open windows", style="bold")
    console.print(header)
    console.print(_open_windows(snapshot, now, console.width))
    console.print(_recent(snapshot, now, console.width))
    if snapshot.get("rejected"):
        console.print(_rejected(snapshot))
    deliveries = snapshot.get("deliveries") or {}
    if deliveries.get("items") or deliveries.get("error"):
        console.print(_deliveries(deliveries, now))


def _deliveries(deliveries: dict[str, Any], now: float) -> Table:
    title = (
        f"Alert deliveries pending: {deliveries.get('pending')}, "
        f"expired (kept on disk): {deliveries.get('expired')}"
    )
    if deliveries.get("error"):
        title += f" (outbox unreadable: {deliveries['error']})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    for column in ("event", "sink", "attempts", "age", "last error"):
        table.add_column(column, overflow="fold")
    for item in deliveries.get("items", []):
        style = "red" if item.get("expired") else "yellow"
        table.add_row(
            f"{item.get('kind')} {item.get('repo')}/{item.get('work_item')}",
            str(item.get("sink")),
            str(item.get("attempts")),
            f"{float(item.get('age_s') or 0):.0f}s",
            Text(str(item.get("last_error") or ""), style=style),
        )
    return table


def print_status(snapshot: dict[str, Any]) -> None:
    render(snapshot, Console())


# -- show ---------------------------------------------------------------------------------


def _timeline(store: ItemStore) -> tuple[Table, int]:
    """The probe rows (the last SHOW_MAX_ROWS) as a table; also how many rows there were."""
    series = fold_series(store, SHOW_MAX_ROWS)
    table = Table(title="Probes (times in UTC)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("tick", justify="right")
    table.add_column("scheduled")
    table.add_column("late ms", justify="right")
    table.add_column("health")
    table.add_column("5xx", justify="right")
    table.add_column("latency ms", justify="right")
    table.add_column("detail", overflow="fold")
    for row in series.rows:
        health = Text(
            f"{row.health_code} {'ok' if row.health_ok else 'FAIL'}",
            style="green" if row.health_ok else "bold red",
        )
        tick = f"{row.tick}{' catch-up' if row.catch_up else ''}"
        table.add_row(
            tick,
            clock(row.scheduled_ts),
            f"{max(0.0, row.ts - row.scheduled_ts) * 1000:.0f}",
            health,
            Text(f"{row.fivexx}/{row.total}", style="red" if row.fivexx else ""),
            f"{row.latency_ms:.1f}",
            Text(row.detail),
        )
    return table, series.accepted


def _report_summary(text: str) -> str:
    """`report.md` without its probe table (the timeline above shows the same rows)."""
    head, sep, _ = text.partition("\n## Probes")
    return head.rstrip() + "\n" if sep else text


def _open_state(store: ItemStore, config: Config | None, console: Console) -> None:
    settings = settings_for(config, store.key.repo) if config is not None else None
    w = window_state(store, settings, keep=SPARK_WIDTH)
    now = time.time()
    console.print(Text(f"{store.key}: OPEN, armed {ago(w.get('armed_at'), now)}", style="bold"))
    console.print(_progress(w, now))
    console.print(sparkline(w["probes"]))
    console.print(_verdict_so_far(w))


def render_show(root: Path, key: ItemKey, console: Console, config: Config | None = None) -> int:
    """One window's timeline and its report (or its state so far); returns the exit code."""
    store = ItemStore(root, key)
    try:
        with open_item_dir(root, key) as dfd:
            kinds = {n: layout.lstat_kind(dfd, n) for n in (layout.ARMED, layout.DONE)}
            kinds[layout.REJECTED] = layout.lstat_kind(dfd, layout.REJECTED)
    except FileNotFoundError:
        console.print(f"{key}: no such work item in {root}", markup=False)
        return 1
    except (OSError, layout.UnsafePath) as exc:
        console.print(f"{key}: cannot be read: {exc}", markup=False)
        return 1
    if kinds[layout.REJECTED] and not kinds[layout.DONE]:
        reason = (store.read_sync(layout.REJECTED, limit=4096) or b"").decode(errors="replace")
        console.print(Text(f"{key}: REJECTED: {reason.strip()}", style="yellow"))
        return 0
    if not kinds[layout.ARMED] and not kinds[layout.DONE]:
        console.print(f"{key}: not armed", markup=False)
        return 1
    timeline, count = _timeline(store)
    if count > SHOW_MAX_ROWS:
        timeline.caption = f"the last {SHOW_MAX_ROWS} of {count} probes; all are in series.jsonl"
    console.print(timeline)
    rollback = read_json(store, layout.ROLLBACK_RESULT)
    if rollback is not None:
        console.print(
            Text(
                f"rollback: exit code {rollback.get('exit_code')}, {rollback.get('detail')}; "
                f"output in {store.path / layout.ROLLBACK_LOG}"
            )
        )
    if kinds[layout.DONE]:
        try:
            report = (store.read_sync(layout.REPORT) or b"").decode("utf-8", errors="replace")
        except (OSError, layout.UnsafePath):
            report = ""
        if report:
            # soft_wrap: the terminal wraps long lines; rich must not cut the YAML in two.
            console.print(_report_summary(report), markup=False, highlight=False, soft_wrap=True)
        else:
            done = read_json(store, layout.DONE) or {}
            console.print(f"{key}: {done.get('status')} ({done.get('reason')})", markup=False)
    else:
        _open_state(store, config, console)
    return 0


def print_show(root: Path, key: ItemKey, config: Config | None = None) -> int:
    """Print one window's timeline and report; returns the exit code."""
    return render_show(root, key, Console(), config)
