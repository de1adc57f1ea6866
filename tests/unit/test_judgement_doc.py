"""docs/JUDGEMENT.md shows the configuration that met the verdict-quality goals in the
daemon's keys: it must load, and give the daemon the very rules the benchmark's judge used."""

from __future__ import annotations

import re
from pathlib import Path

from bench import judgement as J

from postdeploy.baseline import BaselineRules
from postdeploy.config import parse_config
from postdeploy.window_context import thresholds

DOC = Path(__file__).resolve().parents[2] / "docs" / "JUDGEMENT.md"
HEADING = "### The configuration that met them"


def the_docs_config() -> str:
    text = DOC.read_text()
    after = text[text.index(HEADING) :]
    match = re.search(r"```toml\n(.*?)```", after, re.S)
    assert match is not None, f"no TOML block under {HEADING!r}"
    return match.group(1)


def test_the_documented_configuration_is_the_benchmarks_judge() -> None:
    config = parse_config(the_docs_config())
    settings = config.window_settings("shop")
    repo = config.repos["shop"]
    judge = next(j for j in J.judges() if j.name == "+ traffic (0.999)")
    assert BaselineRules.of(settings, repo.checks) == judge.rules
    th = thresholds(settings, repo)
    assert (th.fail_threshold, th.fail_lookback, th.min_samples) == (
        judge.th.fail_threshold,
        judge.th.fail_lookback,
        judge.th.min_samples,
    )
    assert th.lookback_for_check(J.TRAFFIC_CHECK) == judge.th.lookback_for_check(J.TRAFFIC_CHECK)
    assert (settings.interval_s, settings.window_s) == (J.INTERVAL_S, J.INTERVAL_S * J.TICKS)
    (errors,) = repo.checks
    assert errors.type == "prometheus" and errors.max == J.TRAFFIC_MAX
