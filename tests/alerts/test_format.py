"""The texts made from an event: Telegram HTML, body templates, the Alertmanager alert."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser
from typing import Any

import pytest

from postdeploy.alerts import format_telegram
from postdeploy.alerts.format import (
    alertmanager_alert,
    details,
    evidence_facts,
    slack_message,
    template_values,
    title,
)
from postdeploy.alerts.template import check_template, render_template
from postdeploy.events import KINDS

TELEGRAM_TAGS = {"b", "i", "code", "a", "pre", "u", "s"}


class _TelegramHtml(HTMLParser):
    """Collects the tags and the text of a message the way Telegram's HTML mode reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.open: list[str] = []
        self.text = ""
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.open.append(tag)
        self.hrefs.extend(v or "" for k, v in attrs if k == "href")

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text += data


def parse(message: str) -> _TelegramHtml:
    parser = _TelegramHtml()
    parser.feed(message)
    parser.close()
    assert not parser.open, f"unclosed tags {parser.open}"
    assert set(parser.tags) <= TELEGRAM_TAGS, parser.tags
    return parser


def degraded(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "kind": "window.degraded",
        "severity": "critical",
        "repo": "shop",
        "work_item": "release-42",
        "status": "DEGRADED",
        "action_taken": "",
        "reason": "ALERT_ONLY: health failed 3 consecutive probes (threshold 3); last: HTTP 503",
        "evidence": {
            "decision": "ALERT_ONLY",
            "health_streak": 3,
            "fail_threshold": 3,
            "fivexx": 4,
            "fivexx_total": 8,
            "fivexx_ratio": 0.5,
            "fivexx_threshold": 0.2,
            "min_samples": 6,
            "last_probes": [
                {"tick": 3, "health_ok": True, "fivexx": 0, "detail": "ok"},
                {"tick": 4, "health_ok": False, "fivexx": 1, "detail": "health HTTP 503"},
            ],
        },
        "metadata": {
            "commit": "9ab03d1",
            "image": "shop:42",
            "url": "https://shop.example/deploys/42",
        },
        "at": "2026-11-27T07:00:00+00:00",
    }
    event.update(overrides)
    return event


def test_telegram_message_escapes_everything_from_data() -> None:
    nasty_reason = "5xx <b>ratio</b> & more > threshold <script>alert(1)</script>"
    nasty_meta = {
        "commit": "<img src=x>",
        "image": "a&b>c",
        "deployed_by": '"ci" <bot@x>',
        "url": 'https://x.example/?a=1&b="2"<',
    }
    message = format_telegram(degraded(reason=nasty_reason, metadata=nasty_meta))
    parsed = parse(message)
    # Every value survives as text (Telegram shows it), none became markup.
    assert nasty_reason in parsed.text
    for value in nasty_meta.values():
        assert value in parsed.text or value in parsed.hrefs
    assert "<script>" not in message and "<img" not in message
    assert html.escape(nasty_reason) in message
    assert "&amp;" in message and "&lt;" in message and "&gt;" in message


def test_telegram_message_content() -> None:
    message = format_telegram(degraded(action_taken="ROLLBACK_OK", kind="rollback.ok"))
    text = parse(message).text
    lines = text.splitlines()
    assert lines[0].startswith("\U0001f534") or lines[0].startswith("\U0001f7e0")
    assert "shop/release-42" in lines[0] and "rolled back" in lines[0]
    assert "status DEGRADED · action ROLLBACK_OK" in text
    assert "status DEGRADED · decision ALERT_ONLY" in parse(format_telegram(degraded())).text
    assert "health failed 3 probes in a row (threshold 3)" in text
    assert "5xx ratio 0.500 (4/8), threshold 0.2" in text
    assert "last failure (tick 4): health HTTP 503" in text
    assert "commit 9ab03d1" in text and "image shop:42" in text
    assert parse(message).hrefs == ["https://shop.example/deploys/42"]
    assert len(lines) <= 10


def test_telegram_markers_by_severity_and_outcome() -> None:
    assert format_telegram(degraded()).startswith("\U0001f534")
    warning = degraded(kind="window.missed", severity="warning")
    assert format_telegram(warning).startswith("\U0001f7e0")
    healthy = degraded(kind="window.healthy", severity="info", status="HEALTHY")
    assert format_telegram(healthy).startswith("\u2705")
    armed = degraded(kind="window.armed", severity="info", status="", evidence={})
    assert format_telegram(armed).startswith("\u2139")


def test_telegram_message_is_bounded_and_tolerates_odd_data() -> None:
    long = degraded(reason="x" * 20000, metadata={"commit": "c" * 5000, "url": "javascript:1"})
    message = format_telegram(long)
    assert len(message) < 2000
    assert "javascript" not in message  # only http(s) links
    parse(message)
    odd = {"kind": 3, "evidence": "nope", "metadata": ["x"], "reason": None}
    parse(format_telegram(odd))


def test_every_kind_has_a_headline() -> None:
    for kind in KINDS:
        assert "." not in title({"kind": kind, "repo": "r", "work_item": "w"}).split(": ", 1)[1]


def test_template_fills_plain_names_and_escapes_html_variants() -> None:
    template = check_template(
        {
            "name": "postdeploy: {title}",
            "description_html": "{details_html}",
            "priority": "urgent",
            "labels": ["{repo}", "{severity}"],
            "nested": {"reason": "{reason_html}", "commit": "{meta_commit}", "n": 3},
            "missing": "[{meta_nothere}]",
            "short": "{reason:.10}",
            "literal": "{{not a placeholder}}",
        }
    )
    event = degraded(reason="a <b> & c")
    body = render_template(template, template_values(event))
    assert body["name"] == "postdeploy: shop/release-42: DEGRADED"
    assert body["labels"] == ["shop", "critical"]
    assert body["nested"] == {"reason": "a &lt;b&gt; &amp; c", "commit": "9ab03d1", "n": 3}
    assert body["missing"] == "[]"
    assert body["short"] == "a <b> & c"[:10]
    assert body["literal"] == "{not a placeholder}"
    assert body["priority"] == "urgent"
    assert "<p>a &lt;b&gt; &amp; c</p>" in body["description_html"]
    assert "<li>commit: <code>9ab03d1</code></li>" in body["description_html"]
    json.dumps(body)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"a": "{repo.__class__}"}, "unknown placeholder {repo.__class__}"),
        ({"a": "{repo[0]}"}, "unknown placeholder {repo[0]}"),
        ({"a": "{0}"}, "unknown placeholder {0}"),
        ({"a": "{}"}, "unknown placeholder {}"),
        ({"a": "{password}"}, "unknown placeholder {password}"),
        ({"a": ["x", {"b": "{__import__}"}]}, "body.a[1].b: unknown placeholder"),
        ({"a": "{reason:{kind}}"}, "nested placeholders"),
        ({"a": "{reason"}, "literal braces"),
        ({"a": "{reason:d}"}, "cannot be filled"),
    ],
)
def test_template_rejects_unsafe_or_unknown_placeholders(
    template: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("{", r"\{")):
        check_template(template)


def test_alertmanager_alert_shape() -> None:
    alert = alertmanager_alert(degraded(), {"env": "prod"})
    assert alert["labels"] == {
        "env": "prod",
        "alertname": "postdeploy",
        "repo": "shop",
        "work_item": "release-42",
        "kind": "window.degraded",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"] == "shop/release-42: DEGRADED"
    assert alert["annotations"]["description"].startswith("ALERT_ONLY: health failed")
    assert alert["annotations"]["event_id"] == "0123456789abcdef0123456789abcdef"
    assert alert["startsAt"] == "2026-11-27T07:00:00+00:00"
    assert alert["generatorURL"] == "https://shop.example/deploys/42"
    no_url = alertmanager_alert(degraded(metadata={}), {})
    assert "generatorURL" not in no_url


def test_a_baseline_verdict_says_before_and_after_in_every_message() -> None:
    """The comparison with the baseline is one of the facts every sink shows."""
    figures = {
        "reference": {"rows": 60, "median_ms": 30.0, "preexisting": False},
        "summary": "health latency 71 ms vs 30 ms before the deploy (+137 %, p<0.0001, "
        "20 vs 60 probes)",
        "tripped": "latency",
    }
    event = degraded(evidence={"baseline": figures, "health_streak": 0, "fail_threshold": 3})
    want = "health latency 71 ms vs 30 ms before the deploy"
    assert want in format_telegram(event)
    assert want in details(event)
    assert want in json.dumps(slack_message(event))
    assert evidence_facts(event["evidence"])[0].startswith("against the baseline: ")
