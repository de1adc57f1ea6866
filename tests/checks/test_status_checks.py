"""`postdeploy status` shows which feature checks are failing in an open window."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def row(tick: int, ok: bool) -> dict[str, object]:
    detail = "ok" if ok else "$.items length 0, expected length > 0"
    return {
        "tick": tick,
        "scheduled_ts": 1.0 + tick,
        "ts": 1.0 + tick,
        "health_ok": True,
        "health_code": 200,
        "total": 0,
        "fivexx": 0,
        "latency_ms": 1.0,
        "detail": "health ok",
        "checks": {"catalog": {"ok": ok, "value": None, "detail": detail}},
    }


def test_status_names_the_failing_check(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('state_dir = "state"\n[repos.shop]\nbase_url = "http://127.0.0.1:9"\n')
    item = tmp_path / "state" / "shop" / "r1"
    item.mkdir(parents=True)
    (item / "armed").write_text("")
    rows = [row(0, True), row(1, False), row(2, False)]
    (item / "series.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def status(*extra: str) -> str:
        command = [sys.executable, "-m", "postdeploy", "status", "--config", str(config), *extra]
        result = subprocess.run(
            command, capture_output=True, text=True, check=True, env={"COLUMNS": "200"}
        )
        return result.stdout

    [window] = json.loads(status("--json"))["active"]
    assert window["failing_checks"] == {
        "catalog": {"streak": 2, "detail": "$.items length 0, expected length > 0"}
    }
    assert 'check "catalog" failing 2x: $.items length 0' in status()
