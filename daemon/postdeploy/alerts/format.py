"""What people read: the texts and payloads made from an event's JSON object (pure: no I/O):
the Telegram message, the Slack message, the webhook template's values, the Alertmanager
alert.

Every function takes the event as the dict that `Event.to_dict()` made (and the outbox stored),
and tolerates missing or oddly typed fields: an event read back from disk is data, not code.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import Any

from postdeploy.baseline import describe
from postdeploy.layout import valid_name
from postdeploy.text import clip

# What happened, in a few words, by event kind.
HEADLINES = {
    "window.armed": "watching",
    "window.healthy": "healthy",
    "window.inconclusive": "INCONCLUSIVE: too few ticks could be judged",
    "window.degraded": "DEGRADED",
    "window.shadow": "degraded (shadow mode: nothing done)",
    "window.cancelled": "cancelled",
    "window.superseded": "superseded",
    "window.disabled": "disabled",
    "window.missed": "MISSED: first seen after its end",
    "window.error": "ERROR",
    "window.daemon_was_down": "the daemon was down during the window",
    "probe.unavailable": "no answer from the service",
    "rollback.manual": "a person asked for the rollback",
    "rollback.refused": "a person's rollback refused",
    "rollback.ok": "rolled back",
    "rollback.failed": "ROLLBACK FAILED",
    "rollback.unknown": "rollback result UNKNOWN",
    "rollback.verified": "rollback verified",
    "rollback.still_degraded": "still DEGRADED after the rollback",
}
MARKERS = {"critical": "\U0001f534", "warning": "\U0001f7e0", "info": "\u2139\ufe0f"}
GOOD_MARKER = "\u2705"
GOOD_KINDS = ("window.healthy", "rollback.verified")
META_SHOWN = ("commit", "image", "branch", "deployed_by")
MAX_REASON = 600
MAX_DETAIL = 200
MAX_FACTS = 4
# Slack's limits: a header's text 150 characters, a section's 3000, a field's 2000.
SLACK_MAX_HEADER = 150
SLACK_MAX_SECTION = 2900
SLACK_MAX_FIELD = 200


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _g(value: float) -> str:
    return f"{value:g}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def headline(event: Mapping[str, Any]) -> str:
    kind = _str(event.get("kind"))
    return HEADLINES.get(kind, kind or "event")


def title(event: Mapping[str, Any]) -> str:
    """One line: `shop/release-42: DEGRADED (ALERT_ONLY)`."""
    where = f"{_str(event.get('repo'))}/{_str(event.get('work_item'))}"
    action = _str(event.get("action_taken"))
    suffix = f" ({action})" if action and action != "NONE" else ""
    return f"{where}: {headline(event)}{suffix}"


def _last_failure(evidence: Mapping[str, Any]) -> str | None:
    probes = evidence.get("last_probes")
    if not isinstance(probes, list):
        return None
    for row in reversed(probes):
        if not isinstance(row, dict):
            continue
        failed = row.get("health_ok") is False or (_num(row.get("fivexx")) or 0) > 0
        if failed:
            tick = row.get("tick")
            detail = clip(_str(row.get("detail")), MAX_DETAIL)
            return f"last failure (tick {tick}): {detail}" if detail else None
    return None


def evidence_facts(evidence: Any) -> list[str]:
    """The few measured values worth reading on a phone, as short sentences."""
    ev = _dict(evidence)
    facts: list[str] = []
    streak, fail_threshold = _num(ev.get("health_streak")), _num(ev.get("fail_threshold"))
    if streak and fail_threshold is not None:
        facts.append(f"health failed {_g(streak)} probes in a row (threshold {_g(fail_threshold)})")
    figures = ev.get("baseline")
    if isinstance(figures, Mapping):
        facts.append(f"against the baseline: {clip(describe(figures), 2 * MAX_DETAIL)}")
    ratio, total = _num(ev.get("fivexx_ratio")), _num(ev.get("fivexx_total"))
    fivexx, threshold = _num(ev.get("fivexx")), _num(ev.get("fivexx_threshold"))
    if ratio is not None and total and fivexx:
        limit = f", threshold {_g(threshold)}" if threshold is not None else ""
        facts.append(f"5xx ratio {ratio:.3f} ({_g(fivexx or 0)}/{_g(total)}){limit}")
    failure = _last_failure(ev)
    if failure:
        facts.append(failure)
    rollback = ev.get("rollback")
    if isinstance(rollback, dict) and rollback.get("detail"):
        facts.append(f"rollback command: {clip(_str(rollback['detail']), MAX_DETAIL)}")
    return facts[:MAX_FACTS]


def _metadata(event: Mapping[str, Any]) -> dict[str, str]:
    return {k: _str(v) for k, v in _dict(event.get("metadata")).items() if _str(v)}


def _web_url(value: str) -> str | None:
    ok = value.startswith(("http://", "https://")) and not any(c.isspace() for c in value)
    return value if ok else None


def format_telegram(event: Mapping[str, Any]) -> str:
    """A short message for Telegram's HTML parse mode; everything from data is escaped."""
    e = html.escape
    severity, kind = _str(event.get("severity")), _str(event.get("kind"))
    where = f"{_str(event.get('repo'))}/{_str(event.get('work_item'))}"
    lines = [f"{_marker(event)} <b>{e(where)}</b>: {e(headline(event))}"]
    status = _str(event.get("status"))
    label, decision = _decision(event)
    parts = [f"status <b>{e(status)}</b>" if status else ""]
    if decision:
        parts.append(f"{label} <b>{e(decision)}</b>")
    if any(parts):
        lines.append(" \u00b7 ".join(p for p in parts if p))
    reason = _str(event.get("reason"))
    if reason:
        lines.append(e(clip(reason, MAX_REASON)))
    lines.extend(f"\u2022 {e(fact)}" for fact in evidence_facts(event.get("evidence")))
    meta = _metadata(event)
    shown = [f"{k} <code>{e(clip(meta[k], 80))}</code>" for k in META_SHOWN if k in meta]
    if shown:
        lines.append(" \u00b7 ".join(shown))
    url = _web_url(meta.get("url", ""))
    if url:
        lines.append(f'<a href="{e(url, quote=True)}">{e(clip(url, 120))}</a>')
    lines.append(f"<i>{e(kind)} \u00b7 {e(_str(event.get('at')))} \u00b7 {e(severity)}</i>")
    return "\n".join(lines)


def _decision(event: Mapping[str, Any]) -> tuple[str, str]:
    """("action", ACTION) once the reaction ran, else ("decision", DECISION) (DEGRADED is
    announced before its reaction runs), else ("", "")."""
    action = _str(event.get("action_taken"))
    if action:
        return "action", action
    decision = _str(_dict(event.get("evidence")).get("decision"))
    return ("decision", decision) if decision else ("", "")


def _marker(event: Mapping[str, Any]) -> str:
    """The coloured dot (or tick) that opens a message."""
    if _str(event.get("kind")) in GOOD_KINDS:
        return GOOD_MARKER
    return MARKERS.get(_str(event.get("severity")), "\u2022")


def slack_text(value: str) -> str:
    """`value` safe in Slack's mrkdwn: `&`, `<` and `>` escaped, so data can make no link, no
    mention and no `<!channel>` ping."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(url: str, label: str) -> str:
    """A mrkdwn link; the characters that would end it are escaped in the URL."""
    for char, code in (("&", "&amp;"), ("<", "%3C"), (">", "%3E"), ("|", "%7C")):
        url = url.replace(char, code)
    return f"<{url}|{slack_text(label)}>"


def window_page_url(event: Mapping[str, Any], public_url: str | None) -> str | None:
    """`<public_url>/w/REPO/ITEM`, the window's page, when both names pass the name rule."""
    repo, item = _str(event.get("repo")), _str(event.get("work_item"))
    if not public_url or not (valid_name(repo) and valid_name(item)):
        return None
    return f"{public_url.rstrip('/')}/w/{repo}/{item}"


def slack_message(event: Mapping[str, Any], public_url: str | None = None) -> dict[str, Any]:
    """A Block Kit message for a Slack incoming webhook: the verdict, the reason and the
    evidence, the commit and who deployed, and a link to the window's page. Text from data
    is plain text where Slack allows it, escaped mrkdwn where it does not."""
    headline_text = clip(f"{_marker(event)} {title(event)}", SLACK_MAX_HEADER)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline_text, "emoji": True}}
    ]
    meta = _metadata(event)
    label, decision = _decision(event)
    fields = [
        ("Status", _str(event.get("status")), False),
        (label.capitalize(), decision, False),
        ("Commit", meta.get("commit", ""), True),
        ("Deployed by", meta.get("deployed_by", ""), False),
    ]
    shown = []
    for name, value, code in fields:
        if name and value:
            value = clip(value, SLACK_MAX_FIELD).replace("`", "'")
            text = f"`{slack_text(value)}`" if code else slack_text(value)
            shown.append({"type": "mrkdwn", "text": f"*{name}*\n{text}"})
    if shown:
        blocks.append({"type": "section", "fields": shown})
    lines = [clip(_str(event.get("reason")), MAX_REASON)]
    lines.extend(f"\u2022 {fact}" for fact in evidence_facts(event.get("evidence")))
    body = "\n".join(line for line in lines if line)
    if body:
        plain = {"type": "plain_text", "text": clip(body, SLACK_MAX_SECTION), "emoji": False}
        blocks.append({"type": "section", "text": plain})
    page = window_page_url(event, public_url)
    if page:
        link = _slack_link(page, "Open the window's page")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": link}})
    context = [_str(event.get(k)) for k in ("kind", "at", "severity")]
    context_text = slack_text(" \u00b7 ".join(c for c in context if c))
    deploy_url = _web_url(meta.get("url", ""))
    if deploy_url:
        context_text += " \u00b7 " + _slack_link(deploy_url, clip(deploy_url, 80))
    if context_text:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context_text}]})
    return {
        "text": slack_text(title(event)),  # the notification's text, and Slack's fallback
        "blocks": blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }


def details(event: Mapping[str, Any]) -> str:
    """Plain text, several lines: the reason, the measured values, the metadata."""
    lines = [_str(event.get("reason"))]
    lines.extend(f"- {fact}" for fact in evidence_facts(event.get("evidence")))
    meta = _metadata(event)
    if meta:
        lines.append(", ".join(f"{k}: {v}" for k, v in sorted(meta.items())))
    return "\n".join(line for line in lines if line)


def details_html(event: Mapping[str, Any]) -> str:
    """`details` as HTML (paragraphs and a list), every value escaped."""
    e = html.escape
    parts = [f"<p>{e(_str(event.get('reason')))}</p>"]
    facts = evidence_facts(event.get("evidence"))
    if facts:
        parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in facts) + "</ul>")
    meta = _metadata(event)
    if meta:
        items = "".join(f"<li>{e(k)}: <code>{e(v)}</code></li>" for k, v in sorted(meta.items()))
        parts.append(f"<ul>{items}</ul>")
    parts.append(f"<p><em>{e(_str(event.get('kind')))} {e(_str(event.get('id')))}</em></p>")
    return "".join(parts)


def template_values(event: Mapping[str, Any]) -> dict[str, str]:
    """The strings a webhook body template may use (see template.py), with `_html` variants."""
    values = {
        name: _str(event.get(name))
        for name in ("id", "kind", "severity", "repo", "work_item", "status", "action_taken")
    }
    values.update(
        reason=_str(event.get("reason")),
        at=_str(event.get("at")),
        title=title(event),
        details=details(event),
        evidence_json=json.dumps(event.get("evidence", {}), ensure_ascii=False, sort_keys=True),
    )
    values.update({f"meta_{k}": v for k, v in _metadata(event).items()})
    escaped = {f"{k}_html": html.escape(v) for k, v in values.items()}
    escaped["details_html"] = details_html(event)
    return {**values, **escaped}


def alertmanager_alert(event: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """One alert for Alertmanager's `POST /api/v2/alerts`."""
    meta = _metadata(event)
    alert: dict[str, Any] = {
        "labels": {
            **labels,
            "alertname": "postdeploy",
            "repo": _str(event.get("repo")),
            "work_item": _str(event.get("work_item")),
            "kind": _str(event.get("kind")),
            "severity": _str(event.get("severity")),
        },
        "annotations": {
            "summary": title(event),
            "description": details(event),
            "event_id": _str(event.get("id")),
            **{k: meta[k] for k in META_SHOWN if k in meta},
        },
    }
    if _str(event.get("at")):
        alert["startsAt"] = _str(event.get("at"))
    url = _web_url(meta.get("url", ""))
    if url:
        alert["generatorURL"] = url
    return alert
