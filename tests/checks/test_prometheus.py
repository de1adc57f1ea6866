"""Prometheus checks against a real Prometheus, driven end to end through the daemon.

The `prometheus` fixture starts Debian's `prometheus` on a loopback port with a temporary
config and storage, scraping a local service's /metrics every 0.5 s (sub-second intervals are
accepted). The test drives that service's `errors_total` counter and watches the daemon judge
the query. Skipped only when the binary is absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from checks.conftest import Daemon, Prometheus

StartDaemon = Callable[..., "Daemon"]
WriteConfig = Callable[..., Path]

# Ticks every 0.5 s, about one scrape each. The check's own timeout is generous: a slow
# Prometheus answer must not turn into "could not be judged" on a loaded machine. Windows
# that must run to their end get their first tick 1 s after arming, so a loaded daemon
# notices the sentinel before the window is over (else: MISSED); DEGRADED ones are long.
TIMING: dict[str, Any] = {"interval_s": 0.5, "probe_timeout_s": 0.4}
SETTLE: dict[str, Any] = {"initial_delay_s": 1.0}
RATE = "sum(rate(errors_total[5s]))"


def test_a_rising_error_rate_degrades_the_window(
    prometheus: Prometheus, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    # Two scrapes are needed before rate() has a value: wait for it, so the window starts
    # with the query answering 0 (a pass), not with no data.
    assert prometheus.wait_for_data(RATE) == [0.0]
    check = {
        "type": "prometheus",
        "name": "errors",
        "url": prometheus.url,
        "query": RATE,
        "max": 0.1,
        "fail_threshold": 2,
        "timeout_s": 3.0,
    }
    config = write_config(
        {"shop": {"base_url": prometheus.target.url, "checks": [check], "window_s": 30.0}},
        **TIMING,
    )
    daemon = start_daemon(config)
    daemon.arm("shop", "w1")
    daemon.wait_rows(
        "shop",
        "w1",
        lambda rows: any(r["checks"]["errors"]["ok"] is True for r in rows),
        "a row where the query passed",
    )
    prometheus.errors.failing = True  # each scrape now finds 5 more errors
    try:
        finished = daemon.finished("shop", "w1")
    finally:
        prometheus.errors.failing = False

    assert (finished["status"], finished["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    reason = daemon.done("shop", "w1")["reason"]
    match = re.fullmatch(
        r'check "errors": sum\(rate\(errors_total\[5s\]\)\): value (\S+), expected <= 0\.1 '
        r"\(2 ticks in a row\)",
        reason,
    )
    assert match, reason
    assert float(match.group(1)) > 0.1

    results = [r["checks"]["errors"] for r in daemon.rows("shop", "w1")]
    assert [r["ok"] for r in results[-2:]] == [False, False], results
    assert all(r["value"] > 0.1 for r in results[-2:]), results
    assert results[0]["ok"] is True and results[0]["value"] == 0, results
    assert results[0]["detail"] == f"{RATE}: value 0"
    assert all(r["latency_ms"] > 0 and "no_data" not in r for r in results), results
    assert all(row["health_ok"] for row in daemon.rows("shop", "w1"))


def test_no_data_is_not_a_failure_unless_configured(
    prometheus: Prometheus, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """A query with no series: recorded as `no_data`, HEALTHY by default, DEGRADED with
    `no_data = "fail"`. A query Prometheus rejects (HTTP 400) cannot be judged: HEALTHY."""
    absent = "sum(rate(checks_never_exported_total[5s]))"
    assert prometheus.query(absent) == []  # Prometheus answers, with nothing
    base: dict[str, Any] = {"type": "prometheus", "url": prometheus.url, "timeout_s": 3.0}
    url = prometheus.target.url
    config = write_config(
        {
            "quiet": {
                "base_url": url,
                **SETTLE,
                "checks": [{**base, "name": "absent", "query": absent, "max": 0}],
            },
            "strict": {
                "base_url": url,
                "window_s": 30.0,
                "checks": [
                    {
                        **base,
                        "name": "absent",
                        "query": absent,
                        "max": 0,
                        "no_data": "fail",
                        "fail_threshold": 2,
                    }
                ],
            },
            "typo": {
                "base_url": url,
                **SETTLE,
                "checks": [
                    {**base, "name": "typo", "query": "sum(rate(errors_total[5s]", "max": 0}
                ],
            },
        },
        window_s=2.0,
        **TIMING,
    )
    daemon = start_daemon(config)
    for repo in ("quiet", "strict", "typo"):
        daemon.arm(repo, "w1")

    finished = daemon.finished("quiet", "w1")
    assert (finished["status"], finished["action_taken"]) == ("HEALTHY", "NONE")
    results = [r["checks"]["absent"] for r in daemon.rows("quiet", "w1")]
    assert results, "no rows"
    for result in results:
        assert result["ok"] is True, results
        assert result["no_data"] is True
        assert result["value"] is None
        assert result["detail"] == f"{absent}: no data"
    # No data adds no failed tick (a health probe timing out on a loaded machine might).
    rows = daemon.rows("quiet", "w1")
    assert daemon.done("quiet", "w1")["checks_failed"] == sum(not r["health_ok"] for r in rows)

    assert daemon.finished("strict", "w1")["status"] == "DEGRADED"
    assert daemon.done("strict", "w1")["reason"] == (
        f'check "absent": {absent}: no data (2 ticks in a row)'
    )
    strict = [r["checks"]["absent"] for r in daemon.rows("strict", "w1")]
    assert all(r["ok"] is False and r["no_data"] is True for r in strict), strict

    assert daemon.finished("typo", "w1")["status"] == "HEALTHY"
    typo = [r["checks"]["typo"] for r in daemon.rows("typo", "w1")]
    assert typo and all(r["ok"] is None for r in typo), typo
    assert all(r["detail"] == "prometheus: HTTP 400" for r in typo), typo
