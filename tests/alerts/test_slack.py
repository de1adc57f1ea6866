"""The Slack sink: its config table, its Block Kit message (pure, table-driven), and delivery
through the outbox to a fake Slack on 127.0.0.1 (a `Receiver` answering as Slack's incoming
webhooks do: 200 `ok`, a 4xx/5xx with a short error code, 429 with Retry-After), then the
real daemon. The webhook's URL is its credential: it never reaches a log line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from postdeploy.alerts import Outbox, pending
from postdeploy.alerts.format import slack_message, window_page_url
from postdeploy.config import ConfigError, parse_config
from postdeploy.demo_service import DemoService
from support.daemon import DaemonPool
from support.toml import render_toml

# What a Slack webhook URL looks like: the path is the token.
HOOK_PATH = "/services/T0000TEST/B0000TEST/sl4ckT0kenPathValueXyz"
HOSTILE = "<!channel> <https://evil.example|click> *bold* `tick` & more"


def slack_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "e1",
        "kind": "window.degraded",
        "severity": "critical",
        "repo": "shop",
        "work_item": "release-42",
        "status": "DEGRADED",
        "action_taken": "ROLLBACK_OK",
        "reason": "health failed 3 consecutive probes (threshold 3); last: health HTTP 503",
        "evidence": {
            "health_streak": 3,
            "fail_threshold": 3,
            "last_probes": [{"tick": 2, "health_ok": False, "detail": "health HTTP 503"}],
        },
        "metadata": {"commit": "9ab03d1", "deployed_by": "alice", "image": "shop:42"},
        "at": "2026-11-27T08:50:12+00:00",
    }
    event.update(overrides)
    return event


def texts(message: dict[str, Any]) -> list[str]:
    """Every text in the message's blocks, in order."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message["blocks"])
    return found


def block(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in message["blocks"] if b["type"] == kind]


# -- the config table --------------------------------------------------------------------------


def config_problems(table: str) -> list[str]:
    try:
        parse_config(f'state_dir = "s"\n[[alerts]]\ntype = "slack"\n{table}\n')
    except ConfigError as exc:
        return exc.lines
    return []


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('url_env = "PD_SLACK_URL"', None),
        ('url = "https://hooks.slack.com/services/T/B/x"', None),
        ('url_env = "PD_SLACK_URL"\npublic_url = "https://pd.example/postdeploy/"', None),
        ("", "alerts[0]: set exactly one of url and url_env"),
        ('url = "https://h/x"\nurl_env = "PD_X"', "set exactly one of url and url_env"),
        ('url_env = "PD SLACK"', "alerts[0].url_env: 'PD SLACK' is not an environment variable"),
        ('url = "ftp://h/x"', "alerts[0].url: must be an http:// or https:// URL"),
        ('url_env = "X"\npublic_url = "https://u:pw@pd.example"', "alerts[0].public_url: cred"),
        ('url_env = "X"\nchannel = "#deploys"', "alerts[0].channel: unknown key"),
    ],
)
def test_slack_table(table: str, problem: str | None) -> None:
    problems = config_problems(table)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_public_url_is_kept_without_its_trailing_slash() -> None:
    config = parse_config(
        'state_dir = "s"\n[[alerts]]\ntype = "slack"\nurl_env = "X"\n'
        'public_url = "https://pd.example/postdeploy/"\n'
    )
    assert config.alerts[0].public_url == "https://pd.example/postdeploy"  # type: ignore[union-attr]


# -- the message (pure) ------------------------------------------------------------------------


def test_message_has_the_verdict_the_evidence_the_deploy_and_the_link() -> None:
    message = slack_message(slack_event(), "https://pd.example")
    assert message["text"] == "shop/release-42: DEGRADED (ROLLBACK_OK)"
    assert message["unfurl_links"] is False
    [header] = block(message, "header")
    assert header["text"] == {
        "type": "plain_text",
        "text": "\U0001f534 shop/release-42: DEGRADED (ROLLBACK_OK)",
        "emoji": True,
    }
    fields = [f["text"] for f in block(message, "section")[0]["fields"]]
    assert fields == [
        "*Status*\nDEGRADED",
        "*Action*\nROLLBACK_OK",
        "*Commit*\n`9ab03d1`",
        "*Deployed by*\nalice",
    ]
    evidence = block(message, "section")[1]["text"]
    assert evidence["type"] == "plain_text"
    assert evidence["text"].splitlines() == [
        "health failed 3 consecutive probes (threshold 3); last: health HTTP 503",
        "\u2022 health failed 3 probes in a row (threshold 3)",
        "\u2022 last failure (tick 2): health HTTP 503",
    ]
    link = block(message, "section")[2]["text"]
    assert link == {
        "type": "mrkdwn",
        "text": "<https://pd.example/w/shop/release-42|Open the window's page>",
    }
    [context] = block(message, "context")
    assert context["elements"][0]["text"] == (
        "window.degraded \u00b7 2026-11-27T08:50:12+00:00 \u00b7 critical"
    )
    json.dumps(message)  # plain JSON


@pytest.mark.parametrize(
    ("overrides", "public_url", "expect", "absent"),
    [
        # Before the reaction ran, DEGRADED carries its decision.
        (
            {"action_taken": "", "evidence": {"decision": "ALERT_ONLY"}},
            None,
            ["*Decision*\nALERT_ONLY"],
            ["*Action*"],
        ),
        (
            {"kind": "window.healthy", "status": "HEALTHY", "action_taken": "NONE"},
            None,
            ["\u2705"],
            [],
        ),
        ({}, None, [], ["Open the window's page"]),  # no public_url: no link
        ({"work_item": "../etc"}, "https://pd.example", [], ["Open the window's page"]),
        ({}, "https://pd.example/pd/", ["<https://pd.example/pd/w/shop/release-42|"], []),
        ({"metadata": {}}, None, [], ["*Commit*", "*Deployed by*"]),
        (
            {"metadata": {"url": "https://ci.example/p?a=1&b=2"}},
            None,
            ["<https://ci.example/p?a=1&amp;b=2|https://ci.example/p?a=1&amp;b=2>"],
            [],
        ),
        ({"metadata": {"url": "javascript:alert(1)"}}, None, [], ["javascript:"]),
        # Markup from the deploy side: no mention, no link, no channel ping.
        (
            {"metadata": {"deployed_by": HOSTILE, "commit": "`x`<y>"}},
            None,
            [
                "*Deployed by*\n&lt;!channel&gt; &lt;https://evil.example|click&gt; *bold* "
                "'tick' &amp; more",
                "*Commit*\n`'x'&lt;y&gt;`",
            ],
            ["<!channel>", "<https://evil"],
        ),
        ({"reason": HOSTILE}, None, [HOSTILE], []),  # plain text: shown exactly as written
        ({"repo": None, "work_item": 7, "status": 3, "evidence": "odd"}, "https://pd", [], []),
    ],
)
def test_message_table(
    overrides: dict[str, Any], public_url: str | None, expect: list[str], absent: list[str]
) -> None:
    message = slack_message(slack_event(**overrides), public_url)
    everything = "\n".join(texts(message)) + "\n" + message["text"]
    for needle in expect:
        assert needle in everything, (needle, everything)
    mrkdwn = "\n".join(
        t for t in texts(message) if t not in {b["text"]["text"] for b in _plain(message)}
    )
    for needle in absent:
        assert needle not in mrkdwn, (needle, mrkdwn)


def _plain(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        b
        for b in message["blocks"]
        if isinstance(b.get("text"), dict) and b["text"]["type"] == "plain_text"
    ]


def test_long_texts_stay_within_slacks_limits() -> None:
    message = slack_message(
        slack_event(reason="x" * 10_000, work_item="w" * 128, metadata={"commit": "c" * 5000})
    )
    [header] = block(message, "header")
    assert len(header["text"]["text"]) <= 150
    for section in block(message, "section"):
        if "text" in section:
            assert len(section["text"]["text"]) <= 3000
        for field in section.get("fields", []):
            assert len(field["text"]) <= 2000


@pytest.mark.parametrize(
    ("repo", "item", "url"),
    [
        ("shop", "r-1", "https://pd.example/w/shop/r-1"),
        ("shop", "..", None),
        ("", "r-1", None),
        ("shop", "a/b", None),
    ],
)
def test_window_page_url(repo: str, item: str, url: str | None) -> None:
    event = {"repo": repo, "work_item": item}
    assert window_page_url(event, "https://pd.example/") == url
    assert window_page_url(event, None) is None


# -- delivery through the outbox to a fake Slack -----------------------------------------------


def slack_answers(*answers: tuple[int, dict[str, str], bytes]) -> Callable[[Any], Any]:
    """A fake Slack answering each request with the next of `answers`, then `ok`."""
    queue = list(answers)

    def respond(_: Any) -> tuple[int, dict[str, str], bytes]:
        return queue.pop(0) if queue else (200, {"Content-Type": "text/plain"}, b"ok")

    return respond


@pytest.mark.parametrize(
    ("first", "detail"),
    [
        ((429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"rate_limited"), "HTTP 429"),
        ((500, {"Content-Type": "text/plain"}, b"internal_error"), "HTTP 500: internal_error"),
        ((404, {"Content-Type": "text/plain"}, b"no_service"), "HTTP 404: no_service"),
        ((400, {"Content-Type": "text/plain"}, b"invalid_blocks"), "HTTP 400: invalid_blocks"),
    ],
)
async def test_a_refused_message_is_retried_until_slack_takes_it(
    tmp_path: Path,
    kit: Any,
    receivers: Any,
    first: tuple[int, dict[str, str], bytes],
    detail: str,
) -> None:
    slack = receivers(responder=slack_answers(first))
    url = slack.url + HOOK_PATH
    outbox = Outbox(
        tmp_path,
        kit.sinks(
            {
                "type": "slack",
                "name": "team",
                "url_env": "PD_SLACK_URL",
                "public_url": "https://pd.example",
            }
        ),
        kit.settings(retry_initial_s=0.01, retry_max_s=0.02),
        environ={"PD_SLACK_URL": url},
    )
    event = kit.event(metadata={"commit": "9ab03d1", "deployed_by": "alice"})
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: kit.logged(logs, "alert.delivered"), "the delivery")
            await kit.wait_for(lambda: not pending(tmp_path), "the delivery mark")
    refused, taken = slack.snapshot()
    assert refused.path == taken.path == HOOK_PATH
    assert refused.body == taken.body  # the same message, again
    if first[0] == 429:
        assert taken.at - refused.at >= 1.0, "retried before Retry-After"
    message = taken.json()
    assert taken.headers["content-type"] == "application/json"
    assert message["text"] == "shop/release-1: DEGRADED"
    assert "<https://pd.example/w/shop/release-1|Open the window's page>" in texts(message)
    assert "*Commit*\n`9ab03d1`" in texts(message) and "*Deployed by*\nalice" in texts(message)
    [failure] = kit.logged(logs, "alert.delivery_failed", sink="team")
    assert detail in failure["error"]
    # The URL's path is the token: in no log entry (captured before the daemon's masking).
    assert HOOK_PATH not in repr(logs) and "sl4ckT0ken" not in repr(logs)


@pytest.mark.parametrize("where", ["url", "url_env"])
async def test_the_url_never_reaches_a_log_line_when_slack_is_down(
    tmp_path: Path, kit: Any, receivers: Any, where: str
) -> None:
    """Connection refused, then a hanging Slack that times out: the errors are logged, the
    URL is not, whether it came from the file or from the environment."""
    slack = receivers(listening=False)
    url = slack.url + HOOK_PATH
    table: dict[str, Any] = {"type": "slack", "name": "team", "timeout_s": 0.3}
    table.update({"url": url} if where == "url" else {"url_env": "PD_SLACK_URL"})
    outbox = Outbox(
        tmp_path,
        kit.sinks(table),
        kit.settings(retry_initial_s=0.01, retry_max_s=0.02),
        environ={"PD_SLACK_URL": url},
    )
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(kit.event())
            await kit.wait_for(lambda: kit.logged(logs, "alert.delivery_failed"), "a failure")
            slack.up()
            await kit.wait_for(lambda: not pending(tmp_path), "the delivery")
    assert kit.logged(logs, "alert.delivered", sink="team")
    assert HOOK_PATH not in repr(logs) and "sl4ckT0ken" not in repr(logs)
    assert any(e.get("to") == slack.url for e in logs), "the sink is named by its origin"


async def test_missing_url_env_keeps_the_messages_on_disk(tmp_path: Path, kit: Any) -> None:
    outbox = Outbox(
        tmp_path,
        kit.sinks({"type": "slack", "name": "team", "url_env": "PD_SLACK_NOPE"}),
        kit.settings(),
        environ={"PD_SLACK_BAD": "not a url"},
    )
    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(kit.event())
            await kit.wait_for(lambda: kit.logged(logs, "alert.sink_unavailable"), "the error")
    [problem] = kit.logged(logs, "alert.sink_unavailable", sink="team")
    assert "PD_SLACK_NOPE is not set" in problem["problem"]
    assert [r["sink"] for r in pending(tmp_path)] == ["team"]


# -- the real daemon ---------------------------------------------------------------------------


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonPool]:
    pool = DaemonPool(tmp_path, keep_raw=True)
    yield pool
    pool.close()


def test_daemon_posts_a_degraded_window_to_slack_with_its_page_link(
    tmp_path: Path, kit: Any, receivers: Any, service: DemoService, daemons: DaemonPool
) -> None:
    slack = receivers(responder=slack_answers((503, {}, b"service_unavailable")))
    config = tmp_path / "config.toml"
    fast = {"window_s": 30.0, "interval_s": 0.2, "initial_delay_s": 0.1, "probe_timeout_s": 0.15}
    sink = {"type": "slack", "name": "team", "url_env": "PD_SLACK_URL"}
    table = {
        "state_dir": "state",
        "defaults": {**fast, "fail_threshold": 2},
        "daemon": {"rescan_interval_s": 0.2},
        "outbox": {"retry_initial_s": 0.05, "retry_max_s": 0.2},
        "repos": {"shop": {"base_url": service.url}},
        "alerts": [{**sink, "public_url": "https://postdeploy.example/"}],
    }
    config.write_text(render_toml(table))
    service.set(health="fail")
    daemon = daemons.start(config, {"PD_SLACK_URL": slack.url + HOOK_PATH})
    item = tmp_path / "state" / "shop" / "r1"
    item.mkdir(parents=True)
    (item / "armed").write_text(json.dumps({"commit": "9ab03d1", "deployed_by": "<@U1> ci"}))
    kit.wait_until((item / "done").exists, "the verdict")
    kit.wait_until(lambda: not pending(tmp_path / "state"), "every message delivered")
    assert daemon.stop() == 0
    messages = [r.json() for r in slack.snapshot()[1:]]  # the first was refused (503)
    [degraded] = [m for m in messages if "DEGRADED" in m["text"]]
    shown = texts(degraded)
    assert "<https://postdeploy.example/w/shop/r1|Open the window's page>" in shown
    assert "*Deployed by*\n&lt;@U1&gt; ci" in shown and "*Commit*\n`9ab03d1`" in shown
    assert any("health failed" in t for t in shown)
    assert daemon.find("alert.delivery_failed", sink="team")
    output = daemon.text()
    assert HOOK_PATH not in output and "sl4ckT0ken" not in output
    assert daemon.unhandled() == []
