"""One window as a self-contained HTML page: `postdeploy show REPO ITEM --html` and the
status page's `/w/REPO/ITEM`.

It reads what `show --json` reads (`status.item_json`, the series, the rollback's files), so it
works for open and finished windows and after a restart, and draws the timeline from those
files every time: a window finished before pictures existed has one too, and no file of the
state directory (untrusted input) is ever pasted into the page. Inline CSS, no JavaScript, no
external resource; every piece of text from the files is escaped.

Stable hooks: `#verdict` (the status), `#reason`, `#evidence`, `#metadata`, `#probes` (rows
`tr.ok`, `tr.failed`, `tr.inconclusive`), `#verification`, and the picture's own hooks with
the `tl-` prefix (`#tl-verdict`, `.tick.failed`, ...; see `timeline`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from postdeploy import layout, status, timeline
from postdeploy.config import Config
from postdeploy.layout import ItemKey
from postdeploy.series import ProbeRow
from postdeploy.store import ItemStore, parse_json_lines
from postdeploy.timeline import esc
from postdeploy.window import Schedule

PAGE_ROWS = 500  # the probe table shows the last this many (the picture shows them all)
MAX_VERIFY_BYTES = 4 * 1024 * 1024

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#202124}
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:24px 0 8px}
.status{padding:2px 8px;border-radius:4px;color:#fff;background:#5f6368}
.status.HEALTHY{background:#1e8e3e}.status.DEGRADED,.status.ERROR{background:#d93025}
.status.INCONCLUSIVE{background:#80868b}.status.OPEN{background:#1a73e8}
.status.REJECTED{background:#f9ab00;color:#202124}
#reason{font-size:15px;max-width:70em;overflow-wrap:anywhere}
.picture{overflow-x:auto}.picture svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #e8eaed;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere;max-width:60em}th{color:#5f6368;font-weight:600}
tr.failed td{color:#d93025}tr.inconclusive td{color:#80868b}
.dim{color:#5f6368;font-size:12px}
"""


def _utc(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return "" if value is None else str(value)


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _table(table_id: str, rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table id="{table_id}">{cells}</table>'


def _probe_table(table_id: str, rows: Sequence[ProbeRow]) -> str:
    shown = rows[-PAGE_ROWS:]
    head = (
        "<tr><th>tick</th><th>scheduled (UTC)</th><th>late ms</th><th>health</th><th>5xx</th>"
        "<th>latency ms</th><th>checks</th><th>detail</th></tr>"
    )
    body = []
    for r in shown:
        checks = ", ".join(
            f"{name} {'ok' if c.get('ok') is True else 'FAIL' if c.get('ok') is False else '?'}"
            for name, c in sorted(r.checks.items())
        )
        tick = f"{r.tick}{' catch-up' if r.catch_up else ''}"
        cells = (
            tick,
            _utc(r.scheduled_ts)[11:],
            f"{max(0.0, r.ts - r.scheduled_ts) * 1000:.0f}",
            f"{r.health_code} {'ok' if r.health_ok else 'FAIL'}",
            f"{r.fivexx}/{r.total}",
            f"{r.latency_ms:.1f}",
            checks,
            r.detail,
        )
        tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
        body.append(f'<tr class="{timeline.tick_state(r)}">{tds}</tr>')
    note = ""
    if len(rows) > len(shown):
        note = f'<p class="dim">the last {len(shown)} of {len(rows)} probes</p>'
    return f'{note}<table id="{table_id}">{head}{"".join(body)}</table>'


def _verification(store: ItemStore) -> list[ProbeRow]:
    try:
        data = store.read_sync(layout.VERIFY, limit=MAX_VERIFY_BYTES) or b""
    except (OSError, layout.UnsafePath):
        return []
    rows = (ProbeRow.from_dict(raw) for raw in parse_json_lines(data).rows)
    return [r for r in rows if r is not None]


def _span(window: dict[str, Any] | None, rows: Sequence[ProbeRow]) -> Schedule | None:
    """The schedule from `window.json`; without it (not taken up yet, or damaged), guessed
    from the rows; None when there is nothing to draw."""
    try:
        return Schedule.from_dict(window or {})
    except (KeyError, TypeError, ValueError):
        pass
    if not rows:
        return None
    gaps = [b.scheduled_ts - a.scheduled_ts for a, b in itertools.pairwise(rows)]
    interval = min((g for g in gaps if g > 0), default=1.0)
    return Schedule(rows[0].scheduled_ts, 0.0, interval, rows[-1].tick + 1)


def picture(
    root: Path,
    key: ItemKey,
    shown: dict[str, Any],
    rows: Sequence[ProbeRow],
    checked: Sequence[ProbeRow],
    config: Config | None,
) -> str:
    """The window's timeline drawn from its files ("" when there is nothing to draw yet):
    `shown` is its `status.item_json`, `rows` its series, `checked` the verification probes."""
    store = ItemStore(root, key)
    span = _span(shown.get("window"), rows)
    if span is None:
        return ""
    done = shown.get("done") or {}
    state = str(done.get("status") or "")
    action = str(done.get("action_taken") or "")
    at, tick = timeline.verdict_moment(state, rows, _epoch(done.get("finished_at")))
    intent = status.read_json(store, layout.ROLLBACK_INTENT) or {}
    started = intent.get("started_at")
    rollback = timeline.rollback_of(
        action, shown.get("rollback"), float(started) if isinstance(started, int | float) else None
    )
    settings = status.settings_for(config, key.repo) if config is not None else None
    drawn = timeline.Timeline(
        repo=key.repo,
        work_item=key.work_item,
        span=span,
        rows=rows,
        status=state,
        action=action,
        reason=str(done.get("reason") or ""),
        verdict_at=at,
        verdict_tick=tick,
        limits=timeline.limits_of(settings),
        rollback=rollback,
        verification=checked if rollback is not None else (),
        band=timeline.band_of(
            done.get("baseline"), settings.latency_increase if settings is not None else None
        ),
        metadata=shown.get("metadata") or {},
    )
    return timeline.render(drawn, id_prefix="tl-")


def _evidence(shown: dict[str, Any]) -> list[tuple[str, Any]]:
    done, series = shown.get("done") or {}, shown.get("series") or {}
    window = shown.get("window") or {}
    facts: list[tuple[str, Any]] = [("state", shown.get("state")), ("mode", shown.get("mode"))]
    if window.get("armed_at") is not None:
        facts.append(("armed at (UTC)", _utc(window.get("armed_at"))))
    if done:
        facts += [
            ("action taken", done.get("action_taken")),
            ("finished at", done.get("finished_at")),
            ("ticks probed", done.get("checks_total")),
            ("ticks failed", done.get("checks_failed")),
            ("ticks not probed", done.get("ticks_missed")),
            ("window (s)", done.get("window_s")),
        ]
    else:
        max_ticks = window.get("max_ticks", "?")
        facts.append(("ticks so far", f"{series.get('checks_total')} of {max_ticks}"))
    facts += [
        ("health failures in a row at the last probe", series.get("health_streak")),
        ("5xx", f"{series.get('fivexx')}/{series.get('fivexx_total')}"),
        ("5xx ratio", series.get("fivexx_ratio")),
    ]
    latency = series.get("latency_ms")
    if isinstance(latency, dict):
        facts.append(
            ("health latency ms (min/median/max)", "{min} / {median} / {max}".format(**latency))
        )
    rollback = shown.get("rollback")
    if isinstance(rollback, dict):
        facts.append(("rollback", json.dumps(rollback, ensure_ascii=False, sort_keys=True)))
    verified = (done.get("rollback") or {}).get("verification")
    if isinstance(verified, dict):
        facts.append(("after the rollback", verified.get("reason")))
    for name in ("manual_rollback", "baseline", "preexisting"):
        if done.get(name) is not None:
            facts.append((name, json.dumps(done[name], ensure_ascii=False, sort_keys=True)))
    return [(k, "" if v is None else v) for k, v in facts]


def render_window_page(root: Path, key: ItemKey, config: Config | None = None) -> str:
    """One window's page: verdict, reason, evidence, metadata, timeline and probe table."""
    return window_page(root, key, config)[1]


def window_page(root: Path, key: ItemKey, config: Config | None = None) -> tuple[str, str]:
    """The window's state as `show --json` names it (finished, open, rejected, not-armed,
    missing, unreadable) and its page."""
    shown = status.item_json(root, key, config)
    state = shown["state"]
    done = shown.get("done") or {}
    if state == "finished":
        verdict, reason = str(done.get("status")), str(done.get("reason") or "")
    elif state == "open":
        verdict, reason = "OPEN", "the window is still open: no verdict yet"
    elif state == "rejected":
        verdict, reason = "REJECTED", str(shown.get("rejected") or "")
    else:
        verdict = state.upper()
        reason = str(shown.get("error") or f"no window {key} in the state directory")
    rows = (
        status.fold_series(ItemStore(root, key), None).rows if state in ("finished", "open") else []
    )
    checked = _verification(ItemStore(root, key)) if shown.get("rollback") else []
    drawn = picture(root, key, shown, rows, checked, config) if rows or state == "finished" else ""
    action = (
        f' <span class="dim">{esc(done["action_taken"])}</span>' if done.get("action_taken") else ""
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(key)}: {esc(verdict)} · postdeploy</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(key.repo)} / {esc(key.work_item)} "
        f'<span id="verdict" class="status {esc(verdict)}">{esc(verdict)}</span>{action}</h1>',
        f'<p id="reason">{esc(reason)}</p>',
    ]
    if drawn:
        parts.append(f'<div class="picture">{drawn}</div>')
    if state in ("finished", "open"):
        parts += ["<h2>Evidence</h2>", _table("evidence", _evidence(shown))]
    metadata = shown.get("metadata") or {}
    if metadata:
        parts += ["<h2>Deploy</h2>", _table("metadata", sorted(metadata.items()))]
    if rows:
        parts += ["<h2>Probes</h2>", _probe_table("probes", rows)]
    if checked:
        parts += ["<h2>After the rollback</h2>", _probe_table("verification", checked)]
    parts.append(f'<p class="dim">{esc(shown.get("path", ""))}</p></body></html>')
    return state, "\n".join(parts) + "\n"
