"""End to end: the real daemon (a subprocess) watching a real service, alerting real receivers."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postdeploy.alerts import pending
from postdeploy.demo_service import DemoService
from support.daemon import DaemonPool
from support.toml import render_toml

SECRET = "e2e-webhook-secret-value"
TOKEN = "987654:e2e-telegram-token-value"
METADATA = {"commit": "9ab03d1", "image": "shop:42", "url": "https://ci.example/runs/42"}


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonPool]:
    """`postdeploy run` processes (`support.daemon`), every stdout line kept for `text()`."""
    pool = DaemonPool(tmp_path, keep_raw=True)
    yield pool
    pool.close()


def webhook(url: str, **keys: str) -> dict[str, str]:
    """An `[[alerts]]` table of type webhook (`keys`: name, secret_env, min_severity...)."""
    return {"type": "webhook", "url": url, **keys}


def write_config(tmp_path: Path, service: DemoService, alerts: list[dict[str, str]]) -> Path:
    """The daemon's config against `service`, with these `[[alerts]]` tables."""
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
state_dir = "state"

[defaults]
window_s = 30.0          # long enough never to be MISSED on a loaded machine; the
interval_s = 0.2         # DEGRADED verdict ends each window after two failed probes
initial_delay_s = 0.1
probe_timeout_s = 0.15
fail_threshold = 2

[daemon]
rescan_interval_s = 0.2

[outbox]
retry_initial_s = 0.05
retry_max_s = 0.2

[repos.shop]
base_url = "{service.url}"
fivexx_paths = ["/status"]

{render_toml({"alerts": alerts})}
"""
    )
    return config


def arm(state: Path, item: str, metadata: dict[str, str]) -> Path:
    directory = state / "shop" / item
    directory.mkdir(parents=True)
    tmp = directory / ".armed.tmp"
    tmp.write_text(json.dumps(metadata))
    tmp.rename(directory / "armed")
    return directory


def bodies(receiver: Any) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.snapshot()]


def test_degraded_window_alerts_with_evidence_and_metadata(
    tmp_path: Path, kit: Any, receivers: Any, service: DemoService, daemons: DaemonPool
) -> None:
    hook = receivers()
    telegram = receivers(
        responder=lambda _: (200, {"Content-Type": "application/json"}, b'{"ok": true}')
    )
    config = write_config(
        tmp_path,
        service,
        [
            webhook(
                f"{hook.url}/events", name="hook", secret_env="PD_E2E_SECRET", min_severity="info"
            ),
            {
                "type": "telegram",
                "name": "phone",
                "bot_token_env": "PD_E2E_TOKEN",
                "chat_id": "42",
                "api_base": telegram.url,
                "min_severity": "critical",
            },
            webhook(f"{hook.url}/never", name="unsigned", secret_env="PD_E2E_MISSING"),
        ],
    )
    service.set(health="fail")
    daemon = daemons.start(config, {"PD_E2E_SECRET": SECRET, "PD_E2E_TOKEN": TOKEN})
    try:
        item = arm(tmp_path / "state", "r1", METADATA)
        kit.wait_until(
            lambda: any(b["kind"] == "window.degraded" for b in bodies(hook)), "window.degraded"
        )
        kit.wait_until(lambda: telegram.snapshot(), "the Telegram message")
        kit.wait_until((item / "done").exists, "the window to finish")
        kit.wait_until(
            lambda: {r["sink"] for r in pending(tmp_path / "state")} == {"unsigned"},
            "every delivery but the unconfigured sink's",
        )
        assert daemon.alive  # a missing secret does not stop the daemon
    finally:
        code = daemon.stop()
    assert code == 0

    requests = {r.json()["kind"]: r for r in hook.snapshot()}
    # (A loaded machine may add probe.unavailable: a probe that timed out on every path.)
    assert set(requests) - {"probe.unavailable"} == {"window.armed", "window.degraded"}
    degraded = requests["window.degraded"]
    expected = hmac.new(SECRET.encode(), degraded.body, hashlib.sha256).hexdigest()
    assert degraded.headers["x-postdeploy-signature"] == f"sha256={expected}"
    event = degraded.json()
    assert degraded.headers["idempotency-key"] == event["id"]
    assert (event["repo"], event["work_item"], event["severity"]) == ("shop", "r1", "critical")
    assert event["status"] == "DEGRADED"
    assert event["metadata"] == METADATA
    evidence = event["evidence"]
    assert evidence["decision"] == "ALERT_ONLY"
    assert evidence["health_streak"] >= 2 and evidence["fail_threshold"] == 2
    assert evidence["last_probes"] and evidence["last_probes"][-1]["health_code"] == 503
    assert "health failed" in event["reason"]
    assert requests["window.armed"].json()["metadata"] == METADATA

    [message] = telegram.snapshot()  # critical only: the armed event is not sent there
    assert message.path == f"/bot{TOKEN}/sendMessage"
    text = message.json()["text"]
    assert "<b>shop/r1</b>: DEGRADED" in text and "commit <code>9ab03d1</code>" in text

    [unavailable] = daemon.find("alert.sink_unavailable")
    assert unavailable["level"] == "error" and unavailable["sink"] == "unsigned"
    assert "PD_E2E_MISSING" in unavailable["problem"]
    output = daemon.text()
    assert TOKEN not in output and SECRET not in output
    rows = {r["kind"]: r for r in pending(tmp_path / "state")}
    assert set(rows) - {"probe.unavailable"} == {"window.degraded"}
    assert rows["window.degraded"]["attempts"] == 0


def test_sigkill_while_the_receiver_is_down_then_restart_delivers_each_once(
    tmp_path: Path, kit: Any, receivers: Any, service: DemoService, daemons: DaemonPool
) -> None:
    down = receivers(listening=False)  # refuses connections until up()
    mirror = receivers()  # up all along: it must get nothing twice
    config = write_config(
        tmp_path,
        service,
        [
            webhook(down.url, name="down", min_severity="info"),
            webhook(mirror.url, name="mirror", min_severity="info"),
        ],
    )
    state = tmp_path / "state"
    service.set(health="fail")
    daemon = daemons.start(config)
    try:
        arm(state, "r1", METADATA)
        kit.wait_until(
            lambda: {b["kind"] for b in bodies(mirror)} >= {"window.armed", "window.degraded"},
            "both events at the mirror",
        )

        # On disk: the mirror's delivery marks, and failed attempts at the receiver that is
        # down. (A kill before a mark is written would re-send that one: at-least-once.)
        def settled() -> bool:
            rows = pending(state)
            kinds = {r["kind"] for r in rows}
            return (
                kinds >= {"window.armed", "window.degraded"}
                and all(r["sink"] == "down" and r["attempts"] >= 1 for r in rows)
                and {b["kind"] for b in bodies(mirror)} == kinds
            )

        kit.wait_until(settled, "the mirror's marks and failed attempts at the one that is down")
    finally:
        daemon.kill()
    assert down.snapshot() == []
    down.up()

    restarted = daemons.start(config, ready=False)
    try:
        kit.wait_until((state / "shop" / "r1" / "done").exists, "the window to finish")
        kit.wait_until(lambda: not pending(state), "every pending delivery")
    finally:
        code = restarted.stop()
    assert code == 0
    # Every event reached both receivers, and none of them twice.
    assert set(down.by_key()) == set(mirror.by_key())
    assert {b["kind"] for b in bodies(down)} >= {"window.armed", "window.degraded"}
    assert all(count == 1 for count in down.by_key().values()), down.by_key()
    assert all(count == 1 for count in mirror.by_key().values()), mirror.by_key()
    loaded = restarted.find("outbox.loaded")
    assert loaded and loaded[0]["pending_deliveries"] >= 2


def test_outbox_writes_are_not_reported_as_bad_sentinels(
    tmp_path: Path, kit: Any, receivers: Any, service: DemoService, daemons: DaemonPool
) -> None:
    """`.outbox` lives in the state directory; the watcher must skip it like the scanner."""
    hook = receivers()
    config = write_config(
        tmp_path,
        service,
        [webhook(hook.url, min_severity="info")],
    )
    service.set(health="fail")
    daemon = daemons.start(config)
    try:
        item = arm(tmp_path / "state", "r1", {})
        kit.wait_until((item / "done").exists, "the window to finish")
        kit.wait_until(lambda: len(hook.snapshot()) >= 2, "the armed and degraded events")
        # The outbox makes `pending/` and `delivered/` right after `.outbox/`, sometimes
        # before inotify watches `.outbox/`; a change made now is seen for sure.
        (tmp_path / "state" / ".outbox" / "later").mkdir()
        # Then a directory with an invalid name: once inotify's report of it is logged,
        # every earlier change has been through the watcher too.
        (tmp_path / "state" / "shop" / "bad name").mkdir()
        kit.wait_until(
            lambda: any(
                e["path"].endswith("bad name") and e["problem"] == "invalid name"
                for e in daemon.find("sentinel.ignored")
            ),
            "the watcher's report of the later change",
        )
    finally:
        daemon.stop()
    ignored = [e for e in daemon.find("sentinel.ignored") if ".outbox" in e.get("path", "")]
    assert ignored == []
