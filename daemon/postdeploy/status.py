"""`postdeploy status`: open windows and recent outcomes, read from the state directory.

It reads files only, so it works whether or not the daemon is running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from postdeploy import layout
from postdeploy.config import Config
from postdeploy.layout import ItemKey, open_item_dir
from postdeploy.series import replay
from postdeploy.store import ItemStore, parse_json_lines
from postdeploy.watcher import scan_state_dir

RECENT = 20


def _json(store: ItemStore, name: str) -> dict[str, Any] | None:
    try:
        data = store.read_sync(name)
        value = json.loads(data) if data is not None else None
    except (OSError, ValueError, layout.UnsafePath):
        return None
    return value if isinstance(value, dict) else None


def _active(config: Config, store: ItemStore) -> dict[str, Any]:
    key = store.key
    start = _json(store, layout.WINDOW)
    if start is not None:
        armed_at, max_ticks = start.get("armed_at"), start.get("max_ticks")
    else:  # armed, but not taken in by the daemon yet
        with open_item_dir(store.root, key) as dfd:
            armed_at = os.stat(layout.ARMED, dir_fd=dfd, follow_symlinks=False).st_mtime
        known = key.repo in config.repos
        max_ticks = config.window_settings(key.repo).max_ticks if known else None
    data = store.read_sync(layout.SERIES) or b""
    tally = replay(parse_json_lines(data).rows)
    failing = [r.detail for r in tally.recent if r.failed][-1:]
    return {
        "repo": key.repo,
        "work_item": key.work_item,
        "armed_at": armed_at,
        "ticks": tally.checks_total,
        "max_ticks": max_ticks,
        "checks_failed": tally.checks_failed,
        "health_streak": tally.streak,
        "fivexx_ratio": round(tally.fivexx_ratio, 4),
        "last_failure": failing[0] if failing else None,
        "seen_by_daemon": start is not None,
    }


def collect(config: Config) -> dict[str, Any]:
    """The `status --json` object."""
    root: Path = config.state_path
    active: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    items: list[ItemKey] = scan_state_dir(root).items if root.is_dir() else []
    for key in sorted(items):
        store = ItemStore(root, key)
        try:
            with open_item_dir(root, key) as dfd:
                kinds = {
                    n: layout.lstat_kind(dfd, n)
                    for n in (layout.ARMED, layout.DONE, layout.REJECTED)
                }
            if kinds[layout.DONE]:
                done = _json(store, layout.DONE) or {"status": "?", "action_taken": "?"}
                recent.append(
                    {
                        "repo": key.repo,
                        "work_item": key.work_item,
                        "status": done.get("status"),
                        "action_taken": done.get("action_taken"),
                        "finished_at": done.get("finished_at"),
                        "reason": done.get("reason"),
                    }
                )
            elif kinds[layout.REJECTED]:
                reason = (store.read_sync(layout.REJECTED, limit=4096) or b"").decode(
                    errors="replace"
                )
                rejected.append(
                    {"repo": key.repo, "work_item": key.work_item, "reason": reason.strip()}
                )
            elif kinds[layout.ARMED] == "file":
                active.append(_active(config, store))
        except (OSError, layout.UnsafePath):
            continue
    recent.sort(key=lambda r: str(r.get("finished_at") or ""), reverse=True)
    active.sort(key=lambda a: float(a.get("armed_at") or 0.0))
    return {
        "enabled": config.enabled,
        "state_dir": str(root),
        "active": active,
        "active_count": len(active),
        "recent": recent[:RECENT],
        "rejected": rejected[:RECENT],
    }
