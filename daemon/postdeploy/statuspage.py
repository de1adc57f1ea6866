"""The status page (`GET /` on the metrics listener): a `status.collect()` snapshot as HTML.

Pure: a snapshot in, a page out; it reads no files and takes "now" from the snapshot, so the
same snapshot always makes the same page (the tests compare pieces of it). The page needs no
JavaScript: it refreshes itself with `<meta http-equiv="refresh">`, its pictures are inline
SVG, its styles one inline `<style>`; the listener's Content-Security-Policy forbids scripts.

Everything that comes from the state directory (names, metadata, reasons, error texts) is
data written by deploy scripts or read from disk, so every one goes through `_e` (HTML-escape,
quotes included) before it reaches the page. Links are made only from names that pass the
name rule, so a link can only ever be `/w/REPO/ITEM`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from postdeploy.layout import valid_name
from postdeploy.text import clip
from postdeploy.timeline import COLOUR

REFRESH_S = 10  # the page reloads itself this often
SPARK_TICKS = 24  # tick slots in a sparkline (status.SPARK_POINTS rows are kept)
SPARK_W, SPARK_H = 168, 28  # the sparkline's size in CSS pixels
# The timeline picture's colours: a passing tick, a failed one, a tick with no row (skipped,
# or missed while the daemon was down).
OK_COLOUR, FAILED_COLOUR, GAP_COLOUR = COLOUR["ok"], COLOUR["failed"], COLOUR["skipped"]
STATUS_CLASS = {
    "HEALTHY": "good",
    "DEGRADED": "bad",
    "ERROR": "bad",
    "MISSED": "warn",
    "INCONCLUSIVE": "warn",
    "DISABLED": "warn",
}
ACTION_CLASS = {
    "ROLLBACK_OK": "warn",
    "ALERT_ONLY": "warn",
    "ROLLBACK_FAILED": "bad",
    "ROLLBACK_UNKNOWN": "bad",
}
MAX_REASON = 400
MAX_META = 80
COMMIT_CHARS = 12

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
code{font:12px ui-monospace,monospace;background:#f3f3f3;padding:0 .2em}
.muted{color:#666}.reason{max-width:48em;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .45em;border-radius:3px;font-weight:600;
background:#e0e0e0}
.good{background:#c8e6c9;color:#1b5e20}.bad{background:#ffcdd2;color:#b71c1c}
.warn{background:#ffe0b2;color:#8a4b00}
.banner{padding:.6em 1em;background:#ffcdd2;color:#b71c1c;font-weight:600}
progress{width:8em;vertical-align:middle}
svg.spark{vertical-align:middle}
"""


def _e(value: Any) -> str:
    """`value` as HTML text, escaped (quotes too: safe inside attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _when(ts: Any) -> str:
    """An epoch time as `2026-11-27 07:05:20 UTC` (empty for anything else)."""
    value = _num(ts)
    if value is None:
        return ""
    try:
        moment = dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def window_link(repo: Any, item: Any) -> str:
    """`repo/item` linked to its window page; plain (escaped) text if a name breaks the rule."""
    text = f"{_e(repo)}/{_e(item)}"
    if isinstance(repo, str) and isinstance(item, str) and valid_name(repo) and valid_name(item):
        return f'<a href="/w/{repo}/{item}">{text}</a>'  # the name rule: nothing to escape
    return text


def badge(value: Any, classes: Mapping[str, str]) -> str:
    """A coloured label for a status or an action."""
    text = _e(value if value not in (None, "") else "?")
    kind = classes.get(str(value), "")
    return f'<span class="badge {kind}">{text}</span>'


def sparkline(probes: Sequence[Mapping[str, Any]], slots: int = SPARK_TICKS) -> str:
    """An inline SVG: one bar per tick slot of the last `slots` ticks. A passing tick is a
    green bar as high as its latency (scaled to the largest shown); a failed one is a red bar
    of the full height, whatever its latency; a tick with no row is a low amber mark."""
    by_tick: dict[int, Mapping[str, Any]] = {}
    for p in probes:
        tick = p.get("tick")
        if isinstance(tick, int) and not isinstance(tick, bool):
            by_tick[tick] = p
    if not by_tick:
        return '<span class="muted">no probes yet</span>'
    last = max(by_tick)
    first = max(min(by_tick), last - slots + 1)
    step = SPARK_W / slots
    shown = [by_tick[t] for t in range(first, last + 1) if t in by_tick]
    peak = max((_num(p.get("latency_ms")) or 0.0 for p in shown if p.get("ok")), default=0.0)
    marks: list[str] = []
    for i, tick in enumerate(range(first, last + 1)):
        x = round(i * step + 1, 1)
        width = round(max(1.0, step - 2), 1)
        probe = by_tick.get(tick)
        if probe is None:
            marks.append(
                f'<rect x="{x}" y="{SPARK_H - 3}" width="{width}" height="2" '
                f'fill="{GAP_COLOUR}"><title>tick {tick}: no probe</title></rect>'
            )
            continue
        latency = _num(probe.get("latency_ms")) or 0.0
        if probe.get("ok"):
            height = max(2.0, (latency / peak) * (SPARK_H - 2)) if peak > 0 else 2.0
            colour, what = OK_COLOUR, f"{latency:g} ms"
        else:
            height, colour, what = float(SPARK_H - 2), FAILED_COLOUR, f"failed ({latency:g} ms)"
        y = round(SPARK_H - height, 1)
        marks.append(
            f'<rect x="{x}" y="{y}" width="{width}" height="{round(height, 1)}" '
            f'fill="{colour}"><title>tick {tick}: {_e(what)}</title></rect>'
        )
    failed = sum(1 for p in shown if not p.get("ok"))
    label = f"health latency of the last {len(shown)} probes, {failed} failed"
    return (
        f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{SPARK_W}" '
        f'height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" '
        f'aria-label="{_e(label)}">{"".join(marks)}</svg>'
    )


def progress(ticks: Any, max_ticks: Any) -> str:
    """`<progress>` for ticks done of max_ticks, and the numbers."""
    done = _num(ticks)
    total = _num(max_ticks)
    shown = f"{_e(ticks)} / {_e(max_ticks) if total else '?'}"
    if done is None or not total:
        return shown
    return f'<progress value="{min(done, total):g}" max="{total:g}"></progress> {shown}'


def _rules(w: Mapping[str, Any]) -> str:
    """The verdict so far: the health streak and the 5xx ratio against their thresholds."""
    parts = []
    streak, threshold = _num(w.get("health_streak")), _num(w.get("fail_threshold"))
    if streak is not None:
        limit = f" / {threshold:g}" if threshold is not None else ""
        parts.append(f"health streak {streak:g}{limit}")
    ratio, limit_ratio = _num(w.get("fivexx_ratio")), _num(w.get("fivexx_threshold"))
    if ratio is not None and _num(w.get("fivexx_total")):
        limit = f" / {limit_ratio:g}" if limit_ratio is not None else ""
        parts.append(f"5xx {ratio:.3f}{limit}")
    failing = w.get("failing_checks")
    if isinstance(failing, Mapping):
        parts.extend(f"check {_e(name)} failing" for name in failing)
    last = w.get("last_failure")
    text = "<br>".join(parts)
    if last:
        text += f'<br><span class="muted">last failure: {_e(clip(str(last), MAX_REASON))}</span>'
    return text


def _metadata(w: Mapping[str, Any]) -> str:
    meta = w.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    commit = meta.get("commit", w.get("commit"))
    parts = []
    if commit:
        parts.append(f"<code>{_e(clip(str(commit), COMMIT_CHARS, mark=''))}</code>")
    if meta.get("deployed_by"):
        parts.append(f"by {_e(clip(str(meta['deployed_by']), MAX_META))}")
    if w.get("mode") == "shadow":
        parts.append('<span class="badge warn">shadow</span>')
    return " ".join(parts)


def _open_windows(active: Sequence[Mapping[str, Any]]) -> str:
    if not active:
        return '<p class="muted">No window is open.</p>'
    rows = []
    for w in active:
        notes = " (cancel requested)" if w.get("cancel_requested") else ""
        if not w.get("seen_by_daemon", True):
            notes += " (not yet taken up by the daemon)"
        probes = w.get("probes")
        rows.append(
            "<tr>"
            f"<td>{window_link(w.get('repo'), w.get('work_item'))}"
            f'<span class="muted">{_e(notes)}</span></td>'
            f"<td>{_metadata(w)}</td>"
            f"<td>armed {_e(_when(w.get('armed_at')))}"
            f"<br>ends {_e(_when(w.get('ends_at')) or '?')}</td>"
            f"<td>{progress(w.get('ticks'), w.get('max_ticks'))}"
            f"<br>{_e(w.get('checks_failed', 0))} failed</td>"
            f"<td>{sparkline(probes if isinstance(probes, list) else [])}</td>"
            f"<td>{_rules(w)}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>window</th><th>deploy</th><th>time</th><th>ticks</th>"
        "<th>health latency</th><th>verdict so far</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _recent(recent: Sequence[Mapping[str, Any]]) -> str:
    if not recent:
        return '<p class="muted">No window has finished yet.</p>'
    rows = []
    for r in recent:
        checks = ""
        if r.get("checks_total") is not None:
            checks = f"{_e(r.get('checks_failed'))} / {_e(r.get('checks_total'))}"
        rows.append(
            "<tr>"
            f"<td>{_e(r.get('finished_at'))}</td>"
            f"<td>{window_link(r.get('repo'), r.get('work_item'))}</td>"
            f"<td>{badge(r.get('status'), STATUS_CLASS)}</td>"
            f"<td>{badge(r.get('action_taken'), ACTION_CLASS)}</td>"
            f'<td class="reason">{_e(clip(str(r.get("reason") or ""), MAX_REASON))}</td>'
            f"<td>{_metadata(r)}</td>"
            f"<td>{checks}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>finished</th><th>window</th><th>status</th><th>action</th><th>reason</th>"
        "<th>commit</th><th>failed / probed</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _where(item: Mapping[str, Any]) -> str:
    """`repo/work_item`, or the `path` below the state directory."""
    return str(item.get("path") or f"{item.get('repo')}/{item.get('work_item')}")


def _problems(title: str, items: Sequence[Mapping[str, Any]], field: str) -> str:
    """A short table of items that are not windows (rejected sentinels, unreadable ones)."""
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{_e(_where(i))}</td>"
        f'<td class="reason">{_e(clip(str(i.get(field) or ""), MAX_REASON))}</td></tr>'
        for i in items
    )
    return f"<h2>{_e(title)}</h2><table><tbody>{rows}</tbody></table>"


def _deliveries(deliveries: Any) -> str:
    d = deliveries if isinstance(deliveries, Mapping) else {}
    if d.get("error"):
        return f'<p class="bad">Alert outbox unreadable: {_e(d["error"])}</p>'
    pending, expired = _num(d.get("pending")) or 0, _num(d.get("expired")) or 0
    if not pending and not expired:
        return '<p class="muted">Alerts: nothing waiting for delivery.</p>'
    text = f"Alerts: {pending:g} deliveries pending, {expired:g} expired (kept on disk)."
    return f'<p class="{"bad" if expired else "warn"}">{text}</p>'


def render_status_page(snapshot: Mapping[str, Any], refresh_s: int = REFRESH_S) -> str:
    """The whole page for one `status.collect()` snapshot."""
    active = snapshot.get("active") or []
    recent = snapshot.get("recent") or []
    count = len(active)
    title = f"postdeploy: {count} open window{'s' if count != 1 else ''}"
    banner = ""
    if snapshot.get("enabled") is False:
        banner = (
            '<p class="banner">Disabled (enabled = false): every open and new window '
            "finishes as DISABLED.</p>"
        )
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(snapshot.get("state_dir"))} &middot; '
        f"as of {_e(_when(snapshot.get('now')))} &middot; refreshes every {refresh_s:d} s "
        '&middot; <a href="/metrics">metrics</a></p>',
        banner,
        "<h2>Open windows</h2>",
        _open_windows(active),
        "<h2>Recent outcomes</h2>",
        _recent(recent),
        _problems("Rejected sentinels", snapshot.get("rejected") or [], "reason"),
        _problems("Unreadable work items", snapshot.get("unreadable") or [], "error"),
        _deliveries(snapshot.get("deliveries")),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{refresh_s:d}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def render_error_page(title: str, message: str) -> str:
    """A small page for a request that cannot be answered (404, 500)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
        f'<body><h1>{_e(title)}</h1><p>{_e(message)}</p><p><a href="/">status</a></p>'
        "</body></html>\n"
    )
