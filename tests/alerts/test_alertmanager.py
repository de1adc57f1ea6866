"""The alertmanager sink against a real Alertmanager (Debian's prometheus-alertmanager)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from postdeploy.alerts import Outbox, pending
from support.http import free_port

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
MINIMAL = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a loopback port; its URL."""
    if BINARY is None:
        pytest.skip("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    home = tmp_path / "am"
    home.mkdir()
    (home / "minimal.yml").write_text(MINIMAL)
    port = free_port()
    process = subprocess.Popen(
        [
            BINARY,
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={home / 'data'}",
            f"--config.file={home / 'minimal.yml'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(home / "stderr.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 30 s, ending as soon as it is ready
            if process.poll() is not None:
                pytest.fail(f"alertmanager exited: {(home / 'stderr.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)  # a short pause that ends early if it exits
        else:
            pytest.fail("alertmanager did not become ready within 30 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_event_becomes_an_alert_in_alertmanager(
    tmp_path: Path, kit: Any, alertmanager: str
) -> None:
    outbox = Outbox(
        tmp_path,
        kit.sinks({"type": "alertmanager", "url": alertmanager, "labels": {"env": "test"}}),
        kit.settings(),
        environ={},
    )
    event = kit.event(metadata={"commit": "9ab03d1", "url": "https://shop.example/deploys/1"})
    async with kit.running(outbox):
        await outbox.emit(event)
        await kit.wait_for(
            lambda: (tmp_path / ".outbox" / "delivered" / event.id).exists(), "the delivery"
        )
    assert pending(tmp_path) == []
    async with httpx.AsyncClient() as client:
        alerts = (await client.get(f"{alertmanager}/api/v2/alerts")).json()
    ours = [a for a in alerts if a["labels"].get("alertname") == "postdeploy"]
    assert len(ours) == 1
    [alert] = ours
    assert alert["labels"] == {
        "alertname": "postdeploy",
        "env": "test",
        "repo": "shop",
        "work_item": "release-1",
        "kind": "window.degraded",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"] == "shop/release-1: DEGRADED"
    assert alert["annotations"]["event_id"] == event.id
    assert alert["annotations"]["commit"] == "9ab03d1"
    assert alert["generatorURL"] == "https://shop.example/deploys/1"
    assert alert["status"]["state"] == "active"
