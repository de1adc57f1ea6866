"""`postdeploy status`: open windows and recent outcomes, read from the state directory.

It reads files only, so it works whether or not the daemon is running, and it never writes.
A window's state is the fold of its `series.jsonl` (the same `series.fold` the daemon uses);
the file is streamed line by line, so memory stays bounded however long the window is, and
only the last `SPARK_POINTS` rows are kept for the sparkline.

The contract's keys (`enabled`, `active` [{repo, work_item, armed_at, ticks, max_ticks,
checks_failed}], `active_count`, `recent` [{repo, work_item, status, action_taken,
finished_at}]) are always there; the other keys are extras for the terminal view.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postdeploy import alerts, history, layout
from postdeploy.config import Config, WindowSettings
from postdeploy.layout import ItemKey, open_item_dir
from postdeploy.series import ProbeRow, Tally, fold
from postdeploy.store import ItemStore
from postdeploy.window import Schedule

RECENT = 20  # finished windows listed, newest first
SPARK_POINTS = 24  # probe rows kept per open window for the sparkline


def read_json(store: ItemStore, name: str) -> dict[str, Any] | None:
    """The JSON object in `name`, or None if it is missing, unreadable or not an object."""
    try:
        data = store.read_sync(name, limit=1024 * 1024)
        value = json.loads(data) if data is not None else None
    except (OSError, ValueError, layout.UnsafePath):
        return None
    return value if isinstance(value, dict) else None


def series_rows(store: ItemStore) -> Iterator[ProbeRow]:
    """The valid rows of `series.jsonl`, streamed; a torn last line and bad lines are skipped."""
    opener = store.opener(os.O_RDONLY)
    try:
        f = open(layout.SERIES, "rb", opener=opener)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a torn last line (the daemon is mid-append, or crashed mid-append)
            try:
                raw = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            row = ProbeRow.from_dict(raw) if isinstance(raw, dict) else None
            if row is not None:
                yield row


@dataclass
class SeriesView:
    """A window's tally, and the last rows it accepted (at most `keep`, or all with None)."""

    tally: Tally
    rows: list[ProbeRow]
    accepted: int  # how many rows the tally accepted (rows may hold only the last ones)


def fold_series(store: ItemStore, keep: int | None) -> SeriesView:
    """Fold the series into a tally with `series.fold`, keeping the last `keep` rows."""
    tally = Tally()
    kept: deque[ProbeRow] = deque(maxlen=keep)
    accepted = 0
    for row in series_rows(store):
        before = tally.last_tick
        tally = fold(tally, row)
        if tally.last_tick != before:  # fold ignores a row that does not move the tick on
            kept.append(row)
            accepted += 1
    return SeriesView(tally, list(kept), accepted)


def metadata_of(store: ItemStore, start: dict[str, Any] | None) -> dict[str, str]:
    """The deploy's metadata: from `window.json` once the daemon recorded it, else parsed
    from `armed` (which may be invalid, or mid-write: then none)."""
    if start is not None and isinstance(start.get("metadata"), dict):
        return {str(k): str(v) for k, v in start["metadata"].items()}
    try:
        data = store.read_sync(layout.ARMED, limit=layout.MAX_ARMED_BYTES + 1)
        return layout.parse_armed(data or b"")
    except (OSError, layout.UnsafePath, layout.ArmedError):
        return {}


def shadow_mode(settings: WindowSettings | None, metadata: dict[str, str]) -> bool:
    """Whether the window runs in shadow mode (judges, runs nothing), as the daemon decides."""
    configured = settings is not None and settings.mode == "shadow"
    return configured or metadata.get("mode") == "shadow"


def _schedule(store: ItemStore, settings: WindowSettings | None) -> tuple[dict[str, Any], bool]:
    """The window's schedule (armed_at, initial_delay_s, interval_s, max_ticks) and whether
    the daemon has recorded it; before that it is predicted from the sentinel and config."""
    start = read_json(store, layout.WINDOW)
    if start is not None:
        return start, True
    with open_item_dir(store.root, store.key) as dfd:
        armed_at = os.stat(layout.ARMED, dir_fd=dfd, follow_symlinks=False).st_mtime
    predicted: dict[str, Any] = {"armed_at": armed_at}
    if settings is not None:
        predicted.update(
            initial_delay_s=settings.effective_initial_delay_s,
            interval_s=settings.interval_s,
            max_ticks=settings.max_ticks,
        )
    return predicted, False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def window_state(
    store: ItemStore, settings: WindowSettings | None, *, keep: int | None = SPARK_POINTS
) -> dict[str, Any]:
    """One open window as the status view shows it."""
    key = store.key
    start, seen = _schedule(store, settings)
    metadata = metadata_of(store, start if seen else None)
    series = fold_series(store, keep)
    tally = series.tally
    failing = [r.detail for r in series.rows if r.failed][-1:]
    armed_at = _number(start.get("armed_at"))
    delay, interval = _number(start.get("initial_delay_s")), _number(start.get("interval_s"))
    max_ticks = start.get("max_ticks") if isinstance(start.get("max_ticks"), int) else None
    ends_at = None
    if armed_at is not None and delay is not None and interval is not None and max_ticks:
        ends_at = Schedule(armed_at, delay, interval, max_ticks).end  # as the daemon counts it
    state: dict[str, Any] = {
        "repo": key.repo,
        "work_item": key.work_item,
        "armed_at": armed_at,
        "ticks": tally.checks_total,
        "max_ticks": max_ticks,
        "checks_failed": tally.checks_failed,
        "last_tick": tally.last_tick,
        "interval_s": interval,
        "ends_at": ends_at,
        "health_streak": tally.streak,
        "fivexx": tally.sum_fivexx,
        "fivexx_total": tally.sum_total,
        "fivexx_ratio": round(tally.fivexx_ratio, 4),
        "last_failure": failing[0] if failing else None,
        # Feature checks failing right now: name -> consecutive failures and what they said.
        "failing_checks": {
            name: {"streak": check.streak, "detail": check.detail}
            for name, check in sorted(tally.checks.items())
            if check.streak > 0
        },
        "seen_by_daemon": seen,
        "commit": metadata.get("commit"),
        "mode": "shadow" if shadow_mode(settings, metadata) else "act",
        "metadata": metadata,
        "cancel_requested": store.exists_sync(layout.CANCEL),
        "probes": [
            {
                "tick": r.tick,
                "latency_ms": round(r.latency_ms, 1),
                "ok": not r.failed,
                "catch_up": r.catch_up,
            }
            for r in series.rows
        ],
    }
    if settings is not None:
        state.update(
            fail_threshold=settings.fail_threshold,
            fivexx_threshold=settings.fivexx_threshold,
            min_samples=settings.min_samples,
        )
    return state


def _recent(key: ItemKey, done: dict[str, Any] | None) -> dict[str, Any]:
    done = done or {"status": "?", "action_taken": "?"}
    return {
        "repo": key.repo,
        "work_item": key.work_item,
        "status": done.get("status"),
        "action_taken": done.get("action_taken"),
        "finished_at": done.get("finished_at"),
        "reason": done.get("reason"),
        "checks_total": done.get("checks_total"),
        "checks_failed": done.get("checks_failed"),
    }


def _rejected(store: ItemStore) -> dict[str, Any]:
    reason = (store.read_sync(layout.REJECTED, limit=4096) or b"").decode(errors="replace")
    return {"repo": store.key.repo, "work_item": store.key.work_item, "reason": reason.strip()}


def settings_for(config: Config, repo: str) -> WindowSettings | None:
    """The repo's effective window settings, or None if the config does not know it."""
    return config.window_settings(repo) if repo in config.repos else None


def collect(config: Config, now: float | None = None) -> dict[str, Any]:
    """The `status --json` object.

    A finished window the daemon has indexed (`history`) is not opened while its directory
    is still the one indexed: its journal line says when it finished, and only the `done`
    fields of the RECENT windows shown are parsed. Every other directory is opened."""
    root: Path = config.state_path
    active: list[dict[str, Any]] = []
    # (sort key, item, its record if indexed, else its `done` as read)
    finished: list[tuple[str, ItemKey, history.Record | None, dict[str, Any] | None]] = []
    rejected: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []  # item directories that could not be read
    items: list[ItemKey] = []
    if root.is_dir():
        index = {repo: j.records for repo, j in history.read_journals(root).items()}
        scanned = history.scan(root, {}, index)
        for path, problem in scanned.problems:  # symlinks, files, bad names: never followed
            unreadable.append({"path": os.path.relpath(path, root), "error": problem})
        for repo in scanned.repos:
            listing = repo.listing
            records = index.get(repo.repo, {})
            for name in repo.seen:
                key = ItemKey(repo.repo, name)
                if listing is not None and name not in listing.live and name in records:
                    finished.append((records[name].sort_key, key, records[name], None))
                else:
                    items.append(key)
    for key in sorted(items):
        store = ItemStore(root, key)
        try:
            with open_item_dir(root, key) as dfd:
                kinds = {
                    n: layout.lstat_kind(dfd, n)
                    for n in (layout.ARMED, layout.DONE, layout.REJECTED)
                }
            if kinds[layout.DONE]:
                done = read_json(store, layout.DONE)
                finished.append((str((done or {}).get("finished_at") or ""), key, None, done))
            elif kinds[layout.REJECTED]:
                rejected.append(_rejected(store))
            elif kinds[layout.ARMED] == "file":
                active.append(window_state(store, settings_for(config, key.repo)))
        except FileNotFoundError:
            continue  # removed while we looked: the next run will see it
        except (OSError, layout.UnsafePath) as exc:  # a symlink, no permission, a file...
            unreadable.append({"path": str(key), "error": str(exc)})
    # Newest first; the same finishing time in name order. Only the windows that can be
    # among the RECENT shown are sorted (a sort of 20,000 took longer than the rest).
    if len(finished) > RECENT:
        cut = heapq.nlargest(RECENT, (f[0] for f in finished))[-1]
        finished = [f for f in finished if f[0] >= cut]
    finished.sort(key=lambda f: (f[1].repo, f[1].work_item))
    finished.sort(key=lambda f: f[0], reverse=True)
    recent = [
        _recent(key, _done(root, key, record, done)) for _, key, record, done in finished[:RECENT]
    ]
    for r in recent:  # the deploy's commit, for the listed ones only
        start = read_json(ItemStore(root, ItemKey(r["repo"], r["work_item"])), layout.WINDOW)
        meta = start.get("metadata") if start is not None else None
        r["commit"] = meta.get("commit") if isinstance(meta, dict) else None
    active.sort(key=lambda a: (a.get("armed_at") or 0.0, a["repo"], a["work_item"]))
    return {
        "enabled": config.enabled,
        "state_dir": str(root),
        "now": time.time() if now is None else now,
        "active": active,
        "active_count": len(active),
        "recent": recent,
        "rejected": rejected[:RECENT],
        "unreadable": unreadable[:RECENT],
        "deliveries": _deliveries(root),
    }


def _done(
    root: Path, key: ItemKey, record: history.Record | None, done: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A finished window's `done`: from its journal record, or from the file if the record's
    column is unreadable (a damaged journal)."""
    if record is None:
        return done
    if record.done_json is not None and record.done is not None:
        return record.done
    return read_json(ItemStore(root, key), layout.DONE)


def _deliveries(root: Path) -> dict[str, Any]:
    """Alert deliveries still pending in the outbox (expired ones included: never dropped)."""
    try:
        items = alerts.pending(root)
    except OSError as exc:
        return {"pending": None, "expired": None, "error": str(exc), "items": []}
    expired = sum(1 for item in items if item.get("expired"))
    return {"pending": len(items) - expired, "expired": expired, "items": items[:RECENT]}


def _series_summary(store: ItemStore) -> dict[str, Any]:
    """What `show --json` says of the series: counts, the rules' inputs, latencies."""
    view = fold_series(store, None)
    tally = view.tally
    latencies = sorted(r.latency_ms for r in view.rows if r.health_ok)
    summary: dict[str, Any] = {
        "rows": view.accepted,
        "checks_total": tally.checks_total,
        "checks_failed": tally.checks_failed,
        "last_tick": tally.last_tick,
        "health_streak": tally.streak,
        "fivexx": tally.sum_fivexx,
        "fivexx_total": tally.sum_total,
        "fivexx_ratio": round(tally.fivexx_ratio, 4),
        "first_ts": view.rows[0].ts if view.rows else None,
        "last_ts": view.rows[-1].ts if view.rows else None,
        "latency_ms": None,
        "failed_ticks": [r.tick for r in view.rows if r.failed],
    }
    if latencies:
        summary["latency_ms"] = {
            "min": round(latencies[0], 1),
            "median": round(latencies[len(latencies) // 2], 1),
            "max": round(latencies[-1], 1),
        }
    return summary


def item_json(root: Path, key: ItemKey, config: Config | None = None) -> dict[str, Any]:
    """`show --json`: one work item. `state` is finished, open, rejected, not-armed, missing
    or unreadable; `done` and `window` are those files' objects (or null), `series` a summary
    of `series.jsonl`, `metadata` the deploy's."""
    store = ItemStore(root, key)
    out: dict[str, Any] = {"repo": key.repo, "work_item": key.work_item, "path": str(store.path)}
    try:
        with open_item_dir(root, key) as dfd:
            kinds = {n: layout.lstat_kind(dfd, n) for n in (layout.ARMED, layout.DONE)}
            kinds[layout.REJECTED] = layout.lstat_kind(dfd, layout.REJECTED)
    except FileNotFoundError:
        return {**out, "state": "missing"}
    except (OSError, layout.UnsafePath) as exc:
        return {**out, "state": "unreadable", "error": str(exc)}
    done = read_json(store, layout.DONE) if kinds[layout.DONE] else None
    window = read_json(store, layout.WINDOW)
    rejected = _rejected(store)["reason"] if kinds[layout.REJECTED] else None
    if kinds[layout.DONE]:
        state = "finished"
    elif rejected is not None:
        state = "rejected"
    elif kinds[layout.ARMED]:
        state = "open"
    else:
        state = "not-armed"
    settings = settings_for(config, key.repo) if config is not None else None
    metadata = metadata_of(store, window) if kinds[layout.ARMED] or window else {}
    return {
        **out,
        "state": state,
        "done": done,
        "rejected": rejected,
        "window": window,
        "metadata": metadata,
        "mode": "shadow" if shadow_mode(settings, metadata) else "act",
        "series": _series_summary(store),
        "rollback": read_json(store, layout.ROLLBACK_RESULT),
    }
