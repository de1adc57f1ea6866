"""The contents of `done` and `report.md` (`report.py`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from postdeploy.layout import META_KEY_RE, ItemKey
from postdeploy.report import done_record, iso, render_report
from postdeploy.series import ProbeRow
from postdeploy.verdict import Action, Status
from support.outcome import FINISHED, outcome
from support.series import ACTIONS, STATUSES

FAST = settings(max_examples=80, deadline=None)


def front_matter(report: str) -> dict[str, Any]:
    """Parse the YAML between the first two `---` lines, as a front-matter reader does."""
    lines = report.split("\n")
    assert lines[0] == "---"
    end = lines.index("---", 1)
    parsed = yaml.safe_load("\n".join(lines[1:end]))
    assert isinstance(parsed, dict)
    return parsed


def row(tick: int, **changes: Any) -> ProbeRow:
    fields: dict[str, Any] = {
        "tick": tick,
        "scheduled_ts": FINISHED - 100 + tick,
        "ts": FINISHED - 100 + tick,
        "health_ok": True,
        "health_code": 200,
        "total": 2,
        "fivexx": 0,
        "latency_ms": 4.25,
        "detail": "ok",
    }
    fields.update(changes)
    return ProbeRow(**fields)


# -- done -------------------------------------------------------------------------------------


def test_done_record_keys_and_types() -> None:
    record = done_record(outcome())
    assert {
        "status",
        "action_taken",
        "reason",
        "checks_total",
        "checks_failed",
        "window_s",
        "finished_at",
    } <= set(record)
    assert record["status"] == "DEGRADED" and type(record["status"]) is str
    assert record["action_taken"] == "ROLLBACK_OK" and type(record["action_taken"]) is str
    assert record["reason"].startswith("health failed 3")
    assert (record["checks_total"], record["checks_failed"]) == (12, 3)
    assert record["window_s"] == 900 and type(record["window_s"]) is int
    assert record["finished_at"] == "2026-11-27T08:00:00+00:00"
    # It is plain JSON: what is written is what a reader gets back.
    assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize(("window_s", "expected"), [(900.0, 900), (0.5, 0.5), (1.25, 1.25)])
def test_done_window_s_keeps_fractions(window_s: float, expected: float) -> None:
    assert done_record(outcome(window_s=window_s))["window_s"] == expected


@pytest.mark.parametrize("ts", [0.0, FINISHED, FINISHED + 0.999, 4_102_444_800.5])
def test_finished_at_is_iso_utc(ts: float) -> None:
    text = done_record(outcome(finished_at=ts))["finished_at"]
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.utcoffset() == dt.timedelta(0)
    assert text.endswith("+00:00")
    assert parsed.timestamp() == int(ts)  # seconds precision
    assert iso(ts) == text


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("action", list(Action))
def test_done_status_and_action_are_the_contract_words(status: Status, action: Action) -> None:
    record = done_record(outcome(status=status, action_taken=action))
    assert record["status"] in STATUSES
    assert record["action_taken"] in ACTIONS


# -- report.md --------------------------------------------------------------------------------


def test_front_matter_carries_the_seed_keys() -> None:
    front = front_matter(render_report(outcome(), [row(0), row(1)]))
    assert front["post_deploy_status"] == "DEGRADED"
    assert front["action_taken"] == "ROLLBACK_OK"
    assert front["work_item"] == "ORCH-021"
    assert front["window_s"] == 900
    assert front["checks_total"] == 12
    assert front["checks_failed"] == 3
    assert front["metadata"] == {"branch": "main", "commit": "abc123"}


@pytest.mark.parametrize(
    "work_item",
    ["2024", "0x1F", "1e3", "007", "yes", "null", "NaN", "1.0", "on"],
)
def test_work_item_that_looks_like_a_yaml_scalar_stays_a_string(work_item: str) -> None:
    """Valid names such as `2024` or `yes` must not turn into numbers or booleans."""
    front = front_matter(render_report(outcome(key=ItemKey("shop", work_item)), []))
    assert front["work_item"] == work_item


HOSTILE = [
    "key: value",
    "# not a comment",
    "a #b",
    "'single' and \"double\" quotes",
    "line one\nline two",
    "\n---\nfake: front matter\n---\n",
    "---",
    "...",
    "- a list item",
    "[1, 2]",
    "{a: b}",
    "&anchor *alias",
    "!!python/object:os.system",
    "@at `tick`",
    "%YAML 1.1",
    "  leading and trailing  ",
    "tab\there",
    "yes",
    "~",
    "",
    "Zoë 🚀 日本語",
    "\u2028\u0085\ufeff",
    "\x00\x07\x1b[31m",
    "|",
    ">",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_round_trips_through_the_front_matter(text: str) -> None:
    report = render_report(
        outcome(reason=text, metadata={"branch": text, "deployed_by": text}),
        [row(0, detail=text)],
    )
    front = front_matter(report)
    assert front["reason"] == text
    assert front["metadata"] == {"branch": text, "deployed_by": text}
    assert front["post_deploy_status"] == "DEGRADED"


@pytest.mark.parametrize("text", ["\x85", "deployed\x85by", "a\x85\x85b"])
def test_next_line_character_round_trips_through_the_front_matter(text: str) -> None:
    front = front_matter(render_report(outcome(reason=text, metadata={"branch": text}), []))
    assert (front["reason"], front["metadata"]["branch"]) == (text, text)


any_text = st.text(max_size=60)


@FAST
@given(
    reason=any_text,
    metadata=st.dictionaries(st.from_regex(META_KEY_RE, fullmatch=True), any_text, max_size=4),
)
def test_any_text_round_trips_through_the_front_matter(
    reason: str, metadata: dict[str, str]
) -> None:
    front = front_matter(render_report(outcome(reason=reason, metadata=metadata), []))
    assert front["reason"] == reason
    assert front.get("metadata", {}) == metadata
    assert front["checks_failed"] == 3


def test_body_lists_the_probes() -> None:
    rows = [
        row(0),
        row(2, health_ok=False, health_code=0, fivexx=2, detail="a|b"),
        row(3, catch_up=True),
    ]
    report = render_report(outcome(rollback={"exit_code": 0, "detail": "rolled back"}), rows)
    body = report.split("\n---\n", 1)[1]
    assert "# Post-deploy window shop/ORCH-021: DEGRADED" in body
    assert "exit code 0, rolled back" in body
    assert "| 2 | " in body and "0 FAIL" in body and "| 2/2 |" in body
    assert "a\\|b" in body  # a pipe in the detail does not break the table
    assert "| 3 (catch-up) |" in body
    assert "- `branch`: main" in body


def test_report_without_rows_or_metadata() -> None:
    report = render_report(outcome(metadata={}, armed_at=None, status=Status.MISSED), [])
    front = front_matter(report)
    assert "metadata" not in front
    assert front["post_deploy_status"] == "MISSED"
    assert "## Probes" not in report
