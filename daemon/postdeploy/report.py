"""The contents of `done` and `report.md` for a finished window (pure: no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import yaml

from postdeploy.baseline import describe
from postdeploy.layout import TIMELINE, ItemKey
from postdeploy.series import ProbeRow
from postdeploy.verdict import Action, Status


@dataclass(frozen=True)
class Outcome:
    """Everything known about a finished window."""

    key: ItemKey
    status: Status
    action_taken: Action
    reason: str
    checks_total: int
    checks_failed: int
    window_s: float
    finished_at: float  # epoch seconds
    armed_at: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    # DEGRADED, but the baseline shows the service was failing before the deploy too.
    preexisting: bool = False
    rollback: dict[str, Any] | None = None  # the rollback command's result, if one ran
    manual_rollback: dict[str, Any] | None = None  # a person's rollback: who, why, result
    ticks_missed: int = 0  # due ticks never probed (the daemon was down or stalled)
    verification: list[ProbeRow] = field(default_factory=list)  # probes after a rollback
    timeline: str = ""  # the window's picture (SVG), once drawn: written as `timeline.svg`


# libyaml's emitter and parser when PyYAML was built with them (its wheels are): the
# pure-Python ones cost 1.2 ms per report, which at hundreds of windows ending together is
# the event loop's whole time.
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_dump(data: dict[str, Any], *, allow_unicode: bool) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=allow_unicode, width=1000)


def iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC timestamp with seconds precision."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def done_record(outcome: Outcome) -> dict[str, Any]:
    """The `done` file's JSON object."""
    return {
        "status": str(outcome.status),
        "action_taken": str(outcome.action_taken),
        "reason": outcome.reason,
        "checks_total": outcome.checks_total,
        "checks_failed": outcome.checks_failed,
        "ticks_missed": outcome.ticks_missed,
        "window_s": _number(outcome.window_s),
        "finished_at": iso(outcome.finished_at),
        "repo": outcome.key.repo,
        "work_item": outcome.key.work_item,
        **_baseline_fields(outcome),
        **({"rollback": outcome.rollback} if outcome.rollback else {}),
        **({"manual_rollback": outcome.manual_rollback} if outcome.manual_rollback else {}),
    }


def _baseline_fields(outcome: Outcome) -> dict[str, Any]:
    """`done.baseline` (the comparison's figures) and `done.preexisting`, for a window
    compared with a baseline."""
    figures = outcome.evidence.get("baseline")
    if not isinstance(figures, dict):
        return {}  # no baseline: never preexisting either (only the baseline tells)
    return {"baseline": figures, "preexisting": outcome.preexisting}


def manual_line(manual: dict[str, Any]) -> str:
    """One line about a person's rollback, for the report."""
    return (
        f"{manual.get('action')}, asked by {manual.get('requested_by')}: "
        f"{manual.get('reason') or '(no reason given)'} ({manual.get('detail', '')})"
    )


def render_report(outcome: Outcome, rows: list[ProbeRow]) -> str:
    """`report.md`: YAML front matter (the seed's artefact), then a readable body."""
    front: dict[str, Any] = {
        "post_deploy_status": str(outcome.status),
        "action_taken": str(outcome.action_taken),
        "repo": outcome.key.repo,
        "work_item": outcome.key.work_item,
        "window_s": _number(outcome.window_s),
        "checks_total": outcome.checks_total,
        "checks_failed": outcome.checks_failed,
        "finished_at": iso(outcome.finished_at),
        "reason": outcome.reason,
    }
    if outcome.metadata:
        front["metadata"] = dict(outcome.metadata)
    dumped = _yaml_dump(front, allow_unicode=True)
    if yaml.load(dumped, Loader=_Loader) != front:  # noqa: S506 (a SafeLoader)
        # PyYAML's pure-Python emitter writes U+0085 raw inside quotes and reads it back as a
        # line break: say it again in ASCII with escapes.
        dumped = _yaml_dump(front, allow_unicode=False)
    lines = [
        "---",
        dumped.removesuffix("\n"),  # not rstrip(): it would eat a trailing U+00A0
        "---",
        "",
        f"# Post-deploy window {outcome.key}: {outcome.status}",
        "",
        f"- **Verdict:** {outcome.status}, action taken: {outcome.action_taken}",
        f"- **Why:** {outcome.reason}",
    ]
    if outcome.armed_at is not None:
        lines.append(f"- **Armed at:** {iso(outcome.armed_at)}")
    lines.append(f"- **Finished at:** {iso(outcome.finished_at)}")
    lines.append(
        f"- **Ticks:** {outcome.checks_total} probed, {outcome.checks_failed} failed "
        f"(window {_number(outcome.window_s)} s)"
    )
    if outcome.ticks_missed:
        lines.append(
            f"- **Not probed:** {outcome.ticks_missed} of the window's ticks (the daemon was "
            "down or stalled: see `window.resumed` and `tick.skipped` in its log)"
        )
    figures = outcome.evidence.get("baseline")
    if isinstance(figures, dict):
        lines.append(f"- **Against the baseline:** {describe(figures)}")
    if outcome.rollback:
        rb = outcome.rollback
        lines.append(
            f"- **Rollback:** exit code {rb.get('exit_code')}, {rb.get('detail', '')}".rstrip(", ")
        )
        verification = rb.get("verification")
        if isinstance(verification, dict):
            lines.append(f"- **After the rollback:** {verification.get('reason', '')}")
    if outcome.manual_rollback:
        lines.append(f"- **A person's rollback:** {manual_line(outcome.manual_rollback)}")
    for key, value in sorted(outcome.metadata.items()):
        lines.append(f"- `{key}`: {value}")
    if outcome.timeline:  # beside report.md, so the relative link works in git hosts too
        lines += ["", f"![timeline]({TIMELINE})"]
    if rows:
        lines += ["", "## Probes", ""]
        lines += _probe_table(rows)
    if outcome.verification:
        lines += ["", "## After the rollback: verification probes", ""]
        lines += _probe_table(outcome.verification)
    return "\n".join(lines) + "\n"


def _probe_table(rows: list[ProbeRow]) -> list[str]:
    lines = ["| tick | time (UTC) | health | 5xx | latency ms | detail |"]
    lines.append("| ---: | --- | --- | --- | ---: | --- |")
    for row in rows:
        tick = f"{row.tick}{' (catch-up)' if row.catch_up else ''}"
        health = f"{row.health_code} {'ok' if row.health_ok else 'FAIL'}"
        detail = row.detail.replace("|", "\\|")
        lines.append(
            f"| {tick} | {iso(row.ts)[11:19]} | {health} | {row.fivexx}/{row.total} "
            f"| {row.latency_ms:.1f} | {detail} |"
        )
    return lines
