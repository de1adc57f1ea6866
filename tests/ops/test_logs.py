"""Logs for journald: JSON lines with level/event/ts, window context, the `<N>` priority
prefix exactly when stdout is the journal stream, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from postdeploy import logs
from postdeploy.config import parse_config
from support.toml import render_toml

if TYPE_CHECKING:
    from ops.conftest import Ops

PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
ISO_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
WINDOW_EVENT_PREFIXES = ("window.", "rollback.", "probe", "series.", "intake.", "sentinel.rej")


def _spellings(secret: str) -> list[str]:
    return [secret, json.dumps(secret)[1:-1]]


def test_daemon_lines_under_journald(ops: Ops) -> None:
    """A daemon whose stdout is the journal stream: every line is `<N>` + one JSON object
    whose level matches N; lines about a window carry repo and work_item; the secrets
    named by the config (a webhook key, a Telegram token) appear in no line, even where the
    daemon logs a value that contains one (a deploy URL with credentials in its metadata)."""
    webhook_secret = "whsec-" + secrets.token_hex(12)
    token = "123456789:" + secrets.token_hex(16)
    webhook = ops.receiver(200)
    telegram = ops.receiver(500)  # failing deliveries get logged, with what went wrong
    ops.write_config(
        repos={"shop": ops.repo()},
        alerts=[
            {
                "type": "webhook",
                "url": webhook.url + "/hook",
                "secret_env": "POSTDEPLOY_WEBHOOK_SECRET",
                "min_severity": "info",
            },
            {
                "type": "telegram",
                "bot_token_env": "POSTDEPLOY_TELEGRAM_TOKEN",
                "chat_id": "-1001234567890",
                "api_base": telegram.url,
                "min_severity": "info",
            },
        ],
    )
    daemon = ops.start(
        env={"POSTDEPLOY_WEBHOOK_SECRET": webhook_secret, "POSTDEPLOY_TELEGRAM_TOKEN": token},
        journal=True,
    )
    daemon.wait_for("daemon.ready")
    leaky_url = f"https://ci:{webhook_secret}@ci.example/job/7"
    ops.arm("shop", "green", {"url": leaky_url, "deployed_by": "ci"})
    assert ops.wait_done("shop", "green")["status"] == "HEALTHY"
    ops.service.set(health="fail")
    ops.arm("shop", "red")
    assert ops.wait_done("shop", "red")["status"] == "DEGRADED"
    # The token was really in play: it is part of every Telegram API URL.
    ops.wait_until(telegram.requests, "a request to the fake Telegram API")
    assert token in telegram.requests()[0].path
    assert daemon.stop() == 0

    raw = daemon.raw_lines()
    assert raw
    for line in raw:
        match = re.match(r"^<([0-7])>(\{.*\})$", line)
        assert match, f"not `<N>` + JSON: {line!r}"
        record = json.loads(match.group(2))
        assert {"level", "event", "ts"} <= record.keys(), record
        assert int(match.group(1)) == PRIORITY[record["level"]], line
        assert ISO_TS.match(record["ts"]), record
        if str(record["event"]).startswith(WINDOW_EVENT_PREFIXES):
            assert record.get("repo") and record.get("work_item"), f"no window context: {line}"
    for item, status in (("green", "HEALTHY"), ("red", "DEGRADED")):
        daemon.wait_for("window.armed", repo="shop", work_item=item)
        daemon.wait_for("window.finished", repo="shop", work_item=item, status=status)
    critical = daemon.wait_for("window.degraded", repo="shop", work_item="red")
    assert critical["level"] == "critical"
    assert any(line.startswith("<2>") for line in raw)

    text = daemon.text()
    for secret in (webhook_secret, token):
        for spelling in _spellings(secret):
            assert spelling not in text
    armed = daemon.wait_for("window.armed", work_item="green")
    assert armed["metadata"]["url"] == "https://ci:***@ci.example/job/7"


# -- in-process: the logging set-up itself ---------------------------------------------------


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """Configure logging in this process for one test, then put everything back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.clear_secrets()
    yield
    logs.clear_secrets()
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_journal_prefix_follows_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_logging: None
) -> None:
    """`<N>` only when stdout is the stream `$JOURNAL_STREAM` names: a process that inherited
    the variable but writes to a file or pipe gets plain JSON."""
    out = tmp_path / "out.log"
    with out.open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert logs.is_journal_stream(stream)
        logs.configure("info", stream=stream)
        logs.get().warning("on.the.journal")
    other = io.StringIO()
    assert not logs.is_journal_stream(other)
    logs.configure("info", stream=other)
    logs.get().warning("elsewhere")
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with (tmp_path / "other.log").open("w") as stream:
        assert not logs.is_journal_stream(stream)
    assert out.read_text().startswith('<4>{"event": "on.the.journal"')
    assert _records(other.getvalue())[0]["event"] == "elsewhere"


def test_secrets_are_masked_everywhere(fresh_logging: None) -> None:
    """In values, nested values, exception messages, stdlib lines and reprs; JSON-escaped
    spellings too; longest secret first."""
    stream = io.StringIO()
    logs.configure("debug", stream=stream, journal=False)
    secret = 'pa"ss\\word-123'
    logs.register_secret(secret)
    logs.register_secret("abc")  # too short to mask: it would blank out ordinary words
    log = logs.get()

    class Holder:
        def __repr__(self) -> str:
            return f"Holder({secret})"

    log.info("nested", data={"list": [secret, "ok"]}, obj=Holder(), abc="abc")
    try:
        raise RuntimeError(f"connect to https://u:{secret}@host failed")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("httpx").warning("POST https://api/bot%s/send", secret)
    text = stream.getvalue()
    for spelling in _spellings(secret):
        assert spelling not in text
    nested, failed, stdlib = _records(text)
    assert nested["data"] == {"list": ["***", "ok"]}
    assert nested["obj"] == "Holder(***)"
    assert nested["abc"] == "abc"
    assert "https://u:***@host" in failed["exception"][0]["exc_value"]
    assert stdlib["event"] == "POST https://api/bot***/send"
    assert stdlib["logger"] == "httpx"


def test_secret_sources(tmp_path: Path, fresh_logging: None) -> None:
    """Secrets a config names (secret_env, bot_token_env, headers_env), secret-looking
    environment variables, and systemd credentials are registered; rollback_env is not."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "POSTDEPLOY_WEBHOOK_SECRET").write_text("from-a-credential\n")
    shop = {"base_url": "http://127.0.0.1:1", "rollback_env": {"TARGET": "HOOK_TARGET"}}
    hook = {
        "type": "webhook",
        "url": "http://127.0.0.1:1/hook",
        "secret_env": "POSTDEPLOY_WEBHOOK_SECRET",
        "headers_env": {"Authorization": "HOOK_AUTH"},
    }
    telegram = {"type": "telegram", "bot_token_env": "BOT", "chat_id": "-1"}
    config = parse_config(
        render_toml({"state_dir": "state", "repos": {"shop": shop}, "alerts": [hook, telegram]})
    )
    environ = {
        "CREDENTIALS_DIRECTORY": str(credentials),
        "HOOK_AUTH": "Bearer header-value-1",
        "BOT": "bot-token-value",
        "HOOK_TARGET": "not-a-secret",
    }
    logs.register_config_secrets(config, environ)
    logs.register_environment_secrets({"GITHUB_TOKEN": "ghp_abcdef", "EDITOR": "vim-editor"})
    masked = logs.mask_text(
        "from-a-credential Bearer header-value-1 bot-token-value ghp_abcdef not-a-secret vim-editor"
    )
    assert masked == "*** *** *** *** not-a-secret vim-editor"
    assert logs.secret_value("POSTDEPLOY_WEBHOOK_SECRET", environ) == "from-a-credential"
    assert logs.secret_value("../etc/passwd", environ) is None
