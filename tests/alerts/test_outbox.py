"""The outbox with real sinks: local HTTP receivers, real subprocesses, real files.

Every wait is on something observable (a request arriving, a log entry, a file); the
deadlines are only reached when a test fails.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from postdeploy.alerts import Outbox, pending

SECRET = "s3cr3t-hmac-key-for-tests"


@pytest.fixture
def new_outbox(tmp_path: Path, kit: Any) -> Callable[..., Outbox]:
    """Make outboxes below `tmp_path` (or `root`) delivering to the sinks of `tables`
    (validated as the config file's `[[alerts]]` tables are), with the test settings changed
    by `settings`, in an empty environment unless `environ` is given."""

    def make(
        *tables: dict[str, Any],
        root: Path | None = None,
        environ: dict[str, str] | None = None,
        **settings: float,
    ) -> Outbox:
        return Outbox(
            tmp_path if root is None else root,
            kit.sinks(*tables),
            kit.settings(**settings),
            environ={} if environ is None else environ,
        )

    return make


def spool_pending(root: Path) -> Path:
    return root / ".outbox" / "pending"


async def test_webhook_delivery_headers_signature_and_body(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers()
    env = {"HOOK_SECRET": SECRET, "HOOK_TOKEN": "Bearer tok-123456"}
    outbox = new_outbox(
        {
            "type": "webhook",
            "url": receiver.url + "/hook",
            "secret_env": "HOOK_SECRET",
            "headers": {"X-Team": "shop"},
            "headers_env": {"Authorization": "HOOK_TOKEN"},
        },
        environ=env,
    )
    event = kit.event()
    archived = tmp_path / ".outbox" / "delivered" / event.id
    async with kit.running(outbox):
        await outbox.emit(event)
        await kit.wait_for(lambda: receiver.snapshot(), "the webhook request")
        await kit.wait_for(archived.exists, "the event to be archived")
    assert not pending(tmp_path)
    [request] = receiver.snapshot()
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == event.id
    assert request.headers["x-team"] == "shop"
    assert request.headers["authorization"] == "Bearer tok-123456"
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-postdeploy-signature"] == f"sha256={expected}"
    assert request.json() == event.to_dict()
    # Archived, not lost: the event and its delivery mark are kept in delivered/.
    mark = json.loads((archived / "sink.webhook-0.json").read_text())
    assert mark["attempts"] == 1 and mark["delivered_at"] is not None
    assert json.loads((archived / "event.json").read_text())["event"] == event.to_dict()


async def test_webhook_body_template_for_a_tracker(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers()
    outbox = new_outbox(
        {
            "type": "webhook",
            "name": "plane",
            "url": receiver.url + "/api/v1/workspaces/acme/projects/p1/work-items/",
            "secret_env": "HOOK_SECRET",
            "headers_env": {"X-API-Key": "PLANE_KEY"},
            "body": {
                "name": "postdeploy: {title}",
                "description_html": "{details_html}",
                "priority": "urgent",
            },
        },
        environ={"HOOK_SECRET": SECRET, "PLANE_KEY": "plane-api-key-1"},
    )
    event = kit.event(reason="5xx <ratio> & co")
    async with kit.running(outbox):
        await outbox.emit(event)
        await kit.wait_for(lambda: receiver.snapshot(), "the tracker request")
    [request] = receiver.snapshot()
    body = request.json()
    assert body["name"] == "postdeploy: shop/release-1: DEGRADED"
    assert body["priority"] == "urgent"
    assert "<p>5xx &lt;ratio&gt; &amp; co</p>" in body["description_html"]
    assert request.headers["x-api-key"] == "plane-api-key-1"
    assert request.headers["idempotency-key"] == event.id
    # The signature covers the exact bytes sent, the rendered body.
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-postdeploy-signature"] == f"sha256={expected}"


async def test_failing_sink_is_retried_with_backoff_and_delivered_once(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    answers = iter([503, 503, 200])
    receiver = receivers(responder=lambda _: (next(answers, 200), {}, b"{}"))
    outbox = new_outbox(
        {"type": "webhook", "url": receiver.url},
        retry_initial_s=0.1,
        retry_max_s=0.4,
    )
    event = kit.event()
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: kit.logged(logs, "alert.delivered"), "the delivery")
            await kit.wait_for(lambda: not pending(tmp_path), "the delivery mark")
    requests = receiver.snapshot()
    assert receiver.by_key() == {event.id: 3}
    failures = kit.logged(logs, "alert.delivery_failed", event_id=event.id)
    assert [f["attempt"] for f in failures] == [1, 2]
    assert all(f["error"].startswith("HTTP 503") for f in failures)
    # Backoff: each retry waits at least half its exponential step (the rest is jitter).
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps
    [delivered] = kit.logged(logs, "alert.delivered")
    assert delivered["attempts"] == 3


async def test_receiver_down_then_up_gets_each_event_exactly_once(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers(listening=False)  # connections refused
    outbox = new_outbox(
        {"type": "webhook", "url": receiver.url, "name": "hook", "min_severity": "info"},
        retry_initial_s=0.05,
        retry_max_s=0.1,
    )
    events = [kit.event("window.armed", seq=str(i)) for i in range(3)]
    with capture_logs() as logs:
        async with kit.running(outbox):
            for item in events:
                await outbox.emit(item)
            # Every event has failed at least twice before the receiver comes up.
            await kit.wait_for(
                lambda: all(
                    len(kit.logged(logs, "alert.delivery_failed", event_id=e.id)) >= 2
                    for e in events
                ),
                "failed attempts for every event",
            )
            assert "connection failed" in kit.logged(logs, "alert.delivery_failed")[0]["error"]
            rows = pending(tmp_path)
            assert {r["event_id"] for r in rows} == {e.id for e in events}
            assert all(r["attempts"] >= 2 and r["next_attempt_at"] for r in rows)
            receiver.up()
            await kit.wait_for(lambda: not pending(tmp_path), "every delivery mark")
    assert receiver.by_key() == {e.id: 1 for e in events}


async def test_telegram_429_retry_after_is_honoured(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    token = "123456:telegram-test-token-abcdef"
    limited = {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1"}
    limited["parameters"] = {"retry_after": 1}
    answers = iter([(429, limited), (200, {"ok": True, "result": {"message_id": 1}})])

    def telegram(_: Any) -> tuple[int, dict[str, str], bytes]:
        code, body = next(answers, (200, {"ok": True}))
        return code, {"Content-Type": "application/json"}, json.dumps(body).encode()

    api = receivers(responder=telegram)
    outbox = new_outbox(
        {
            "type": "telegram",
            "bot_token_env": "TG_TOKEN",
            "chat_id": -100123,
            "api_base": api.url,
            "min_severity": "info",
        },
        environ={"TG_TOKEN": token},
        retry_initial_s=0.01,  # far below retry_after
        retry_max_s=0.02,
    )
    event = kit.event(reason="ratio <0.5> & rising", metadata={"commit": "<c1>"})
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: kit.logged(logs, "alert.delivered"), "the delivery")
    first, second = api.snapshot()
    assert second.at - first.at >= 1.0, "retried before retry_after"
    assert first.path == f"/bot{token}/sendMessage"
    payload = second.json()
    assert payload["chat_id"] == "-100123" and payload["parse_mode"] == "HTML"
    assert "ratio &lt;0.5&gt; &amp; rising" in payload["text"]
    assert "<code>&lt;c1&gt;</code>" in payload["text"]
    assert payload["disable_notification"] is False  # critical: the phone rings
    [failure] = kit.logged(logs, "alert.delivery_failed")
    assert failure["retry_after_s"] == 1 and failure["retry_in_s"] >= 1
    assert "429" in failure["error"]
    # The token is in the URL; it must not reach any log entry (captured here before the
    # daemon's masking would hide it).
    assert token not in repr(logs)


async def test_hanging_sink_does_not_delay_another_sink(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    hanging = receivers(responder=lambda _: kit.HANG)
    healthy = receivers()
    outbox = new_outbox(
        {"type": "webhook", "url": hanging.url, "name": "slow", "timeout_s": 600},
        {"type": "webhook", "url": healthy.url, "name": "fast"},
    )
    first, second = kit.event(seq="1"), kit.event(seq="2")
    async with kit.running(outbox):
        await outbox.emit(first)
        await kit.wait_for(lambda: hanging.snapshot(), "the slow sink to hold the first event")
        await kit.wait_for(lambda: first.id in healthy.by_key(), "the fast sink's first event")
        # emit returns while the slow sink hangs: windows never wait for a sink.
        await outbox.emit(second)
        await kit.wait_for(lambda: second.id in healthy.by_key(), "the fast sink's second event")
        assert len(hanging.snapshot()) == 1  # still stuck on the first event
        expected = {(first.id, "slow"), (second.id, "slow")}
        await kit.wait_for(
            lambda: {(r["event_id"], r["sink"]) for r in pending(tmp_path)} == expected,
            "only the slow sink's deliveries left pending",
        )


async def test_command_sink_gets_the_event_json_on_stdin(
    tmp_path: Path, kit: Any, new_outbox: Any
) -> None:
    out = tmp_path / "received.json"
    script = (
        "import os, sys, pathlib\n"
        "data = sys.stdin.buffer.read()\n"
        "pathlib.Path(sys.argv[1]).write_bytes(data)\n"
        "pathlib.Path(sys.argv[1] + '.env').write_text(os.environ['POSTDEPLOY_EVENT_ID'] + ' '"
        " + os.environ['POSTDEPLOY_REPO'] + ' ' + os.environ['EXTRA'])\n"
    )
    outbox = new_outbox(
        {
            "type": "command",
            "argv": [sys.executable, "-c", script, str(out)],
            "env": {"EXTRA": "yes"},
        },
        root=tmp_path / "state",
        environ=dict(os.environ),
    )
    (tmp_path / "state").mkdir()
    event = kit.event()
    async with kit.running(outbox):
        await outbox.emit(event)
        await kit.wait_for(lambda: not pending(tmp_path / "state") and out.exists(), "the command")
    assert json.loads(out.read_bytes()) == event.to_dict()
    assert Path(f"{out}.env").read_text() == f"{event.id} shop yes"


async def test_command_sink_failure_and_timeout_kill_the_process_group(
    tmp_path: Path, kit: Any, new_outbox: Any
) -> None:
    pidfile = tmp_path / "child.pid"
    # The command leaves a child behind and hangs; its timeout must end both.
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    outbox = new_outbox(
        {"type": "command", "argv": ["sh", "-c", script], "timeout_s": 0.3, "name": "hang"},
        {"type": "command", "argv": ["sh", "-c", "echo nope >&2; exit 3"], "name": "fail"},
        environ=dict(os.environ),
        retry_initial_s=30,
        retry_max_s=30,
    )
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(kit.event())
            await kit.wait_for(
                lambda: len(kit.logged(logs, "alert.delivery_failed")) == 2, "both failures"
            )
    errors = {f["sink"]: f["error"] for f in kit.logged(logs, "alert.delivery_failed")}
    assert errors["fail"] == "exited with 3: nope"
    assert errors["hang"] == "timed out after 0.3s; process group killed"
    child = int(pidfile.read_text())
    await kit.wait_for(lambda: gone(child), f"the command's child {child} to end")


def gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


async def test_min_severity_filters_per_sink(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    everything, urgent = receivers(), receivers()
    outbox = new_outbox(
        {"type": "webhook", "url": everything.url, "name": "all", "min_severity": "info"},
        {"type": "webhook", "url": urgent.url, "name": "pager", "min_severity": "critical"},
    )
    info = kit.event("window.armed")
    warning = kit.event("window.missed")
    critical = kit.event("window.degraded")
    async with kit.running(outbox):
        for item in (info, warning, critical):
            await outbox.emit(item)
        await kit.wait_for(lambda: len(everything.by_key()) == 3, "three events at 'all'")
        await kit.wait_for(lambda: critical.id in urgent.by_key(), "the critical one at 'pager'")
    # A sink takes its events oldest first, so the two others would have come before it.
    assert urgent.by_key() == {critical.id: 1}
    assert everything.by_key() == {info.id: 1, warning.id: 1, critical.id: 1}
    stored = json.loads((tmp_path / ".outbox/delivered" / info.id / "event.json").read_text())
    assert stored["targets"] == ["all"]


async def test_emit_is_idempotent_by_event_id(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers()
    outbox = new_outbox({"type": "webhook", "url": receiver.url})
    event = kit.event()
    async with kit.running(outbox):
        async with anyio.create_task_group() as tg:  # concurrent duplicates
            for _ in range(3):
                tg.start_soon(outbox.emit, event)
        await outbox.emit(event)
        await kit.wait_for(lambda: not pending(tmp_path) and receiver.snapshot(), "the delivery")
        await outbox.emit(event)  # again, after it was delivered and archived
        marker = kit.event(seq="marker")
        await outbox.emit(marker)
        # A queued duplicate would go out before the later event.
        archived = tmp_path / ".outbox" / "delivered" / marker.id
        await kit.wait_for(archived.exists, "the marker event to be delivered and archived")
    assert receiver.by_key() == {event.id: 1, marker.id: 1}
    assert os.listdir(spool_pending(tmp_path)) == []


async def test_restart_delivers_what_was_pending_and_resends_nothing(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    broken = {"yes": True}
    answered: list[tuple[str, int]] = []  # (Idempotency-Key, status code) as answered
    first, second = kit.event("window.armed"), kit.event("window.degraded")

    def responder(request: Any) -> tuple[int, dict[str, str], bytes]:
        key = request.headers["idempotency-key"]
        code = 503 if broken["yes"] and key == second.id else 200
        answered.append((key, code))
        return code, {}, b"{}"

    receiver = receivers(responder=responder)
    sink = {"type": "webhook", "url": receiver.url, "min_severity": "info"}
    before = new_outbox(sink)
    with capture_logs() as logs:
        async with kit.running(before):
            await before.emit(first)
            await before.emit(second)
            await kit.wait_for(
                lambda: kit.logged(logs, "alert.delivery_failed", event_id=second.id),
                "a failed attempt at the second event",
            )
            await kit.wait_for(
                lambda: [r["event_id"] for r in pending(tmp_path)] == [second.id],
                "the first event's delivery mark",
            )
    # The first outbox is gone (as after a crash); a new one takes over the directory.
    broken["yes"] = False
    after = new_outbox(sink)
    async with kit.running(after):
        await after.emit(first)  # re-emitted after the restart: already delivered, a no-op
        await kit.wait_for(lambda: not pending(tmp_path), "the second event's delivery mark")
        marker = kit.event("window.healthy")
        await after.emit(marker)
        # A re-sent first event would have been queued before this one.
        await kit.wait_for(lambda: marker.id in receiver.by_key(), "a later event")
    delivered = [key for key, code in answered if code == 200]
    assert sorted(delivered) == sorted([first.id, second.id, marker.id])
    assert receiver.by_key()[first.id] == 1


async def test_expired_event_is_logged_once_and_kept_on_disk(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers(responder=lambda _: (503, {}, b"down"))
    outbox = new_outbox(
        {"type": "webhook", "url": receiver.url, "name": "hook"},
        retry_initial_s=0.05,
        retry_max_s=0.1,
        max_age_s=0.3,
    )
    first, second = kit.event(seq="1"), kit.event(seq="2")
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(first)
            await kit.wait_for(
                lambda: kit.logged(logs, "alert.expired", event_id=first.id), "the expiry"
            )
            attempts = len(receiver.snapshot())
            await outbox.emit(second)
            await kit.wait_for(
                lambda: kit.logged(logs, "alert.expired", event_id=second.id), "the second expiry"
            )
            requests = [r.headers["idempotency-key"] for r in receiver.snapshot()]
            await kit.wait_for(
                lambda: [r["expired"] for r in pending(tmp_path)] == [True, True],
                "both expiries on disk",
            )
    [expired] = kit.logged(logs, "alert.expired", event_id=first.id)
    assert expired["log_level"] == "error" and expired["sink"] == "hook"
    if expired["attempts"]:  # (a loaded machine may not have tried before the expiry)
        assert expired["last_error"] == "HTTP 503: down"
    event_file = spool_pending(tmp_path) / first.id / "event.json"
    assert json.loads(event_file.read_text())["event"] == first.to_dict()
    rows = {r["event_id"]: r for r in pending(tmp_path)}
    assert rows[first.id]["expired"] is True
    # No longer retried: every attempt was made by then, while the second event aged.
    assert requests.count(first.id) == rows[first.id]["attempts"] <= attempts + 1
    assert rows[first.id]["kind"] == "window.degraded" and rows[first.id]["sink"] == "hook"
    # A new outbox over the same directory neither retries nor re-logs it.
    with capture_logs() as later:
        async with kit.running(new_outbox()):
            await kit.wait_for(lambda: kit.logged(later, "outbox.loaded"), "the reload")
    assert kit.logged(later, "outbox.expired_kept", deliveries=2)
    assert not kit.logged(later, "alert.expired")


async def test_disk_error_at_emit_keeps_the_event_and_writes_it_later(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    event = kit.event()
    seen_on_disk: list[bool] = []

    def responder(_: Any) -> tuple[int, dict[str, str], bytes]:
        seen_on_disk.append((spool_pending(tmp_path) / event.id / "event.json").exists())
        return 200, {}, b"{}"

    receiver = receivers(responder=responder)
    outbox_dir = tmp_path / ".outbox"
    outbox_dir.mkdir()
    (outbox_dir / "pending").write_text("not a directory")  # every write now fails
    outbox = new_outbox(
        {"type": "webhook", "url": receiver.url},
        retry_initial_s=0.05,
        retry_max_s=0.1,
    )
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)  # does not raise
            [failed] = kit.logged(logs, "alert.write_failed", event_id=event.id)
            assert failed["log_level"] == "error" and failed["repo"] == "shop"
            await kit.wait_for(
                lambda: len(kit.logged(logs, "alert.write_failed")) >= 2, "a retried write"
            )
            assert receiver.snapshot() == []  # no sink before it is on disk
            (outbox_dir / "pending").unlink()
            await kit.wait_for(lambda: receiver.snapshot(), "the delivery")
    assert seen_on_disk == [True]
    assert kit.logged(logs, "alert.queued", event_id=event.id, late=True)


async def test_missing_secret_keeps_events_pending_and_other_sinks_going(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers()
    outbox = new_outbox(
        {"type": "webhook", "url": receiver.url, "secret_env": "NOPE_SECRET", "name": "a"},
        {"type": "telegram", "bot_token_env": "NOPE_TOKEN", "chat_id": "1", "name": "t"},
        {"type": "webhook", "url": receiver.url, "name": "b"},
    )
    event = kit.event()
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: receiver.snapshot(), "the healthy sink's delivery")
            await kit.wait_for(lambda: len(pending(tmp_path)) == 2, "the healthy sink's mark")
    problems = {e["sink"]: e for e in kit.logged(logs, "alert.sink_unavailable")}
    assert "NOPE_SECRET is not set" in problems["a"]["problem"]
    assert "NOPE_TOKEN is not set" in problems["t"]["problem"]
    assert all(p["log_level"] == "error" for p in problems.values())
    assert len(receiver.snapshot()) == 1  # only b delivered; a sent nothing unsigned
    assert {r["sink"] for r in pending(tmp_path)} == {"a", "t"}


async def test_reconfigure_moves_pending_deliveries_to_the_new_sink_config(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    old, new = receivers(listening=False), receivers()
    outbox = new_outbox({"type": "webhook", "url": old.url, "name": "hook"})
    event = kit.event()
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: kit.logged(logs, "alert.delivery_failed"), "a failure")
            outbox.reconfigure(
                kit.sinks(
                    {"type": "webhook", "url": new.url, "name": "hook"},
                    {"type": "webhook", "url": new.url, "name": "added"},
                ),
                kit.settings(),
            )
            await kit.wait_for(lambda: event.id in new.by_key(), "delivery to the new URL")
            await kit.wait_for(lambda: not pending(tmp_path), "the mark")
    # The event was for `hook` only; a sink added later does not get old events.
    assert new.by_key() == {event.id: 1}
    [change] = kit.logged(logs, "alerts.reconfigured")
    assert change["changed"] == ["hook"] and change["added"] == ["added"]


async def test_odd_event_data_is_stored_and_sent_as_plain_json(
    tmp_path: Path, kit: Any, receivers: Any, new_outbox: Any
) -> None:
    receiver = receivers()
    outbox = new_outbox({"type": "webhook", "url": receiver.url})
    event = kit.event(reason="bad \ud800 surrogate, caf\u00e9 \U0001f534")
    event.evidence["where"] = tmp_path  # not JSON: sent as its string form
    async with kit.running(outbox):
        await outbox.emit(event)
        await kit.wait_for(lambda: receiver.snapshot(), "the delivery")
    body = receiver.snapshot()[0].json()
    assert body["reason"] == "bad ? surrogate, caf\u00e9 \U0001f534"
    assert body["evidence"]["where"] == str(tmp_path)


def test_pending_on_a_state_dir_without_outbox(tmp_path: Path) -> None:
    assert pending(tmp_path) == []
    assert not (tmp_path / ".outbox").exists()  # status reads only
    shutil.rmtree(tmp_path)
    assert pending(tmp_path) == []
