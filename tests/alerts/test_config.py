"""The `[[alerts]]` and `[outbox]` tables: what is accepted, and the error for what is not."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from postdeploy.alerts.config import (
    OutboxSettings,
    Sinks,
    TelegramSink,
    WebhookSink,
    sink_names,
)
from postdeploy.config import ConfigError, parse_config

BASE = 'state_dir = "/tmp/state"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + text, "cfg.toml")
    return caught.value.lines


def test_every_sink_type_parses_from_toml() -> None:
    config = parse_config(
        BASE
        + """
[[alerts]]
type = "webhook"
url = "https://hooks.example/postdeploy/"
secret_env = "POSTDEPLOY_WEBHOOK_SECRET"
headers = { "X-Team" = "shop" }
min_severity = "info"

[[alerts]]
type = "webhook"
name = "plane"
url_env = "PLANE_URL"
min_severity = "critical"
[alerts.headers_env]  # a sub-table: the same as an inline table
"X-API-Key" = "PLANE_API_KEY"
[alerts.body]
name = "{title}"
description_html = "{details_html}"
priority = "urgent"

[[alerts]]
type = "telegram"
bot_token_env = "POSTDEPLOY_TELEGRAM_TOKEN"
chat_id = -1001234567890

[[alerts]]
type = "alertmanager"
url = "http://127.0.0.1:9093"
labels = { env = "prod" }

[[alerts]]
type = "command"
argv = ["/usr/local/bin/page-oncall", "--quiet"]
timeout_s = 0.5

[outbox]
retry_initial_s = 0.5
retry_max_s = 60
max_age_s = 3600
""",
        "cfg.toml",
    )
    assert sink_names(config.alerts) == [
        "webhook-0",
        "plane",
        "telegram-2",
        "alertmanager-3",
        "command-4",
    ]
    hook = config.alerts[0]
    assert isinstance(hook, WebhookSink) and hook.url == "https://hooks.example/postdeploy"
    assert hook.headers == {"X-Team": "shop"}
    plane = config.alerts[1]
    assert isinstance(plane, WebhookSink) and plane.url_env == "PLANE_URL"
    assert plane.headers_env == {"X-API-Key": "PLANE_API_KEY"}
    assert plane.body == {
        "name": "{title}",
        "description_html": "{details_html}",
        "priority": "urgent",
    }
    telegram = config.alerts[2]
    assert isinstance(telegram, TelegramSink) and telegram.chat_id == "-1001234567890"
    assert telegram.min_severity == "warning"
    assert config.outbox.retry_max_s == 60


# A valid webhook's table, for the cases below that add one bad key to it.
HOOK = 'type = "webhook"\nurl = "http://x"\n'
BAD_NAME = "not an environment variable name"


@pytest.mark.parametrize(
    ("table", "where", "message"),
    [
        ('type = "webhook"\nurl = "ftp://x"', "alerts[0].url", "http:// or https://"),
        ('type = "webhook"\nurl = "http://x y"', "alerts[0].url", "whitespace"),
        ('type = "webhook"', "alerts[0]", "exactly one of url and url_env"),
        (HOOK + 'secret_env = "NOT-A-NAME"', "alerts[0].secret_env", BAD_NAME),
        (
            HOOK + 'headers = { "Idempotency-Key" = "x" }',
            "alerts[0].headers",
            "cannot be overridden",
        ),
        (HOOK + 'headers = { "X-A" = "a\\nb" }', "alerts[0].headers", "CR, LF"),
        (HOOK + 'headers_env = { "Authorization" = "1BAD" }', "alerts[0].headers_env", BAD_NAME),
        (HOOK + 'body = { a = "{secret}" }', "alerts[0].body", "unknown placeholder {secret}"),
        (HOOK + "timeout_s = 0", "alerts[0].timeout_s", ""),
        (HOOK + 'name = "a/b"', "alerts[0].name", "must match"),
        (HOOK + 'min_severity = "loud"', "min_severity", ""),
        (HOOK + 'colour = "red"', "colour", "unknown key"),
        ('type = "telegram"\nbot_token_env = "T"\nchat_id = ""', "chat_id", "must not be empty"),
        (
            'type = "telegram"\nbot_token_env = "T"\nchat_id = "1"\napi_base = "api.telegram.org"',
            "api_base",
            "http:// or https://",
        ),
        ('type = "command"\nargv = []', "alerts[0].argv", "non-empty"),
        ('type = "command"\nargv = [""]', "alerts[0].argv", "non-empty"),
        ('type = "command"\nargv = ["x"]\ntimeout_s = -1', "alerts[0].timeout_s", ""),
        (
            'type = "alertmanager"\nurl = "http://x"\nlabels = { alertname = "x" }',
            "alerts[0].labels",
            "set by postdeploy",
        ),
        ('type = "pager"', "alerts[0]", "pager"),
    ],
)
def test_invalid_sink_tables_are_reported_with_their_key(
    table: str, where: str, message: str
) -> None:
    lines = problems(f"[[alerts]]\n{table}\n")
    assert any(
        line.startswith("cfg.toml: ") and where in line and message in line for line in lines
    ), lines


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("retry_initial_s = 0", "greater than 0"),
        ("retry_initial_s = 10\nretry_max_s = 5", "must not be below retry_initial_s"),
        ("max_age_s = -1", "greater than 0"),
        ("max_age_s = nan", "finite"),
        ("batch = 3", "unknown key"),
    ],
)
def test_invalid_outbox_settings(table: str, message: str) -> None:
    lines = problems(f"[outbox]\n{table}\n")
    assert any("outbox" in line and message in line for line in lines), lines


def test_sink_names_must_be_unique() -> None:
    adapter = TypeAdapter(Sinks)
    tables = [
        {"type": "command", "argv": ["a"]},
        {"type": "command", "argv": ["b"], "name": "command-0"},
    ]
    with pytest.raises(ValidationError, match="two sinks are named 'command-0'"):
        adapter.validate_python(tables)
    tables[1]["name"] = "pager"
    assert sink_names(adapter.validate_python(tables)) == ["command-0", "pager"]


def test_outbox_defaults() -> None:
    settings = OutboxSettings()
    assert (settings.retry_initial_s, settings.retry_max_s, settings.max_age_s) == (1, 300, 86400)


def test_duplicate_sink_names_are_a_config_error() -> None:
    lines = problems(
        '[[alerts]]\ntype = "command"\nargv = ["a"]\nname = "pager"\n'
        '[[alerts]]\ntype = "command"\nargv = ["b"]\nname = "pager"\n'
    )
    assert lines == ["cfg.toml: alerts: two sinks are named 'pager'; give each a distinct name"]
