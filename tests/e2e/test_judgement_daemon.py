"""A smoke run of bench/judgement_daemon.py: three deploys of the verdict-quality corpus through
the real daemon give the pure replay's verdicts, at the same tick.

The whole benchmark (`python -m bench --only judgement-daemon`) runs 36 deploys for a minute;
this runs the three kinds whose verdict comes within a few ticks (a broken feature behind a
green /health, one backend of four failing, a service already failing before the deploy), so
that a change to the daemon's config keys, the baseline file or `done` breaks it here first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import judgement as J
from bench import judgement_daemon

from postdeploy import baseline

KINDS = {
    "broken feature, green /health",
    "one of four backends failing",
    "failing before and after",
}


def test_three_deploys_through_the_daemon_match_the_pure_replay(tmp_path: Path) -> None:
    rows, figures = judgement_daemon.measure(tmp_path, per_kind=1, kinds=KINDS, initial_delay_s=1)

    assert len(rows) == 3
    for row in rows:
        assert row.equal, (row.pure, row.daemon, row.note)
        # None of these verdicts rests on latency: they trip at the very same tick.
        assert row.daemon_tick == row.pure_tick, (row.pick.deploy.name, row.note)
    assert {row.daemon for row in rows} == {
        "DEGRADED / ROLLBACK_OK",
        "DEGRADED / ALERT_ONLY (preexisting)",
    }
    assert figures["differences"] == []  # the reference rows were the pure replay's too
    assert figures["ticks_missed"] == 0
    assert figures["requests_past_the_script"] == 0
    assert figures["error_lines"] == []


SLACK = judgement_daemon.SHIFT_SLACK_S
BEYOND = SLACK + J.INTERVAL_S + 1  # the corpus' rows are 10 s apart: past the next one


@pytest.mark.parametrize(
    ("landed_s", "same"),
    [(0.0, True), (1 - SLACK, True), (SLACK - 1, True), (-BEYOND, False), (BEYOND, False)],
)
def test_the_shifted_baseline_is_cut_like_the_pure_replay_within_the_slack(
    landed_s: float, same: bool
) -> None:
    """An arm landing `landed_s` after the moment the shift assumed keeps the pure replay's
    reference rows (those before the cut, the deploy's own restart left out) within
    +-SHIFT_SLACK_S, and not once the cut passes the next row."""
    judge = judgement_daemon.the_judge()
    assert judge.rules is not None
    deploy = J.deploys()[0]
    base, _window = J.rows_of(deploy)
    want = baseline.reference(base, J.ARMED_AT, judge.rules)
    assumed = 1_900_000_000.0
    rows = judgement_daemon.shifted(base, assumed, judge.rules.gap_s)
    got = baseline.reference(rows, assumed + landed_s, judge.rules)
    assert ((got.rows, got.latencies) == (want.rows, want.latencies)) is same


def test_the_error_ratio_through_the_daemon_matches_the_pure_replay(tmp_path: Path) -> None:
    """The traffic judge: a Prometheus error ratio from 0.1 % to 1 % and to 10 %, through
    the real daemon's Prometheus check and its comparison with the baseline rows' values."""
    kinds = {"5xx 0.1 % -> 1 %", "5xx 0.1 % -> 10 %"}
    rows, figures = judgement_daemon.measure(
        tmp_path,
        per_kind=1,
        kinds=kinds,
        initial_delay_s=1,
        judge_name=judgement_daemon.TRAFFIC_JUDGE,
    )
    assert len(rows) == 2
    for row in rows:
        assert row.equal, (row.pure, row.daemon, row.note)
        assert row.daemon == "DEGRADED / ROLLBACK_OK"
        # The error ratio, not latency, decides: the very same tick.
        assert row.daemon_tick == row.pure_tick, (row.pick.deploy.name, row.note)
    assert figures["differences"] == []
    assert figures["error_lines"] == []
