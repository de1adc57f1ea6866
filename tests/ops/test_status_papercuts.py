"""`postdeploy status` on an 80-column terminal: long names are cut with an ellipsis, never
broken mid-word, and each window shows its deploy's commit and whether it is in shadow mode.
The real CLI, on a state directory written by hand (status reads files only)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from support.env import child_env

REPO = "payments-gateway-internal"
ITEM = "release-2026-11-27-hotfix-for-the-long-running-migration"
COMMIT = "9ab03d1e5f3498273498aa"
CONFIG = f"""\
state_dir = "state"
[defaults]
window_s = 60
interval_s = 2
probe_timeout_s = 1
[repos.{REPO}]
base_url = "http://127.0.0.1:1"
[repos.shadowed]
base_url = "http://127.0.0.1:1"
mode = "shadow"
"""


def _item(root: Path, repo: str, item: str, armed: str = "") -> Path:
    path = root / repo / item
    path.mkdir(parents=True)
    (path / "armed").write_text(armed)
    return path


def _window(path: Path, metadata: dict[str, str]) -> None:
    now = time.time()
    window = {"armed_at": now - 10, "initial_delay_s": 2.0, "interval_s": 2.0, "max_ticks": 30}
    (path / "window.json").write_text(
        json.dumps({**window, "first_seen_at": now - 10, "metadata": metadata})
    )


def _status(tmp_path: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = child_env({"COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1"})
    return subprocess.run(
        [sys.executable, "-m", "postdeploy", "status", *args, "--config", "config.toml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def _state(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(CONFIG)
    root = tmp_path / "state"
    # Seen by the daemon: the metadata comes from window.json (shadow asked for by the deploy).
    _window(_item(root, REPO, ITEM), {"commit": COMMIT, "mode": "shadow"})
    # Not yet seen: the metadata comes from `armed` itself; shadow from the repo's config.
    _item(root, "shadowed", "w1", json.dumps({"commit": "c0ffee"}))
    # Finished: its commit from window.json.
    done = _item(root, REPO, ITEM + "-previous")
    _window(done, {"commit": "feedbeef"})
    (done / "done").write_text(
        json.dumps(
            {
                "status": "HEALTHY",
                "action_taken": "NONE",
                "reason": "30 ticks passed the rules",
                "checks_total": 30,
                "checks_failed": 0,
                "finished_at": "2026-11-27T07:00:00+00:00",
            }
        )
    )
    return root


def test_status_at_80_columns_cuts_names_and_shows_commit_and_shadow(tmp_path: Path) -> None:
    _state(tmp_path)
    result = _status(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    text = result.stdout
    # A name that does not fit is cut at its end with an ellipsis ...
    assert ITEM not in text
    assert any(line.strip().startswith(ITEM[:12]) and "…" in line for line in lines), text
    # ... and never broken: no line starts with a later part of a name.
    for name in (REPO, ITEM):
        for cut in range(4, len(name) - 3):
            tail = name[cut:]
            assert not any(line.strip().startswith(tail) for line in lines), (tail, text)
    # The deploy's commit (short) and shadow mode, for windows open and finished.
    assert f"commit {COMMIT[:10]}" in text
    assert "commit c0ffee" in text
    assert "commit feedbeef" in text
    assert text.count("shadow mode") == 2, text


def test_status_json_carries_commit_and_mode(tmp_path: Path) -> None:
    _state(tmp_path)
    result = _status(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    active = {a["work_item"]: a for a in snap["active"]}
    assert (active[ITEM]["commit"], active[ITEM]["mode"]) == (COMMIT, "shadow")
    assert (active["w1"]["commit"], active["w1"]["mode"]) == ("c0ffee", "shadow")
    assert [r["commit"] for r in snap["recent"]] == ["feedbeef"]
