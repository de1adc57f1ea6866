"""`postdeploy status` shows the deliveries still waiting in the outbox."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from postdeploy.alerts import Outbox


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_lists_pending_deliveries(tmp_path: Path, kit: Any) -> None:
    down = f"http://127.0.0.1:{closed_port()}/hook"  # nothing listens: delivery must wait
    (tmp_path / "state").mkdir()  # the daemon makes it at start-up
    outbox = Outbox(tmp_path / "state", kit.sinks({"type": "webhook", "url": down}), kit.settings())
    async with kit.running(outbox):
        await outbox.emit(kit.event())
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "state"\n[[alerts]]\ntype = "webhook"\nurl = "{down}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "postdeploy", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    deliveries = json.loads(result.stdout)["deliveries"]
    assert (deliveries["pending"], deliveries["expired"]) == (1, 0)
    [item] = deliveries["items"]
    assert (item["kind"], item["repo"], item["work_item"]) == (
        "window.degraded",
        "shop",
        "release-1",
    )
    text = subprocess.run(
        [sys.executable, "-m", "postdeploy", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "Alert deliveries pending: 1" in text and "window.degraded shop/release-1" in text
