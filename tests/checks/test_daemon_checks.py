"""Feature checks end to end: the real daemon (`postdeploy run`) against real local services.

Each test writes a config, starts the daemon, arms windows by writing `armed` files, waits
for the `window.finished` log line, and reads `done`, `series.jsonl` and `report.md`. Where a
test shows that something does *not* happen (no rollback, no DEGRADED), a second repo in the
same daemon shows that the same setup without the saving detail does trip: the test could
fail.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy.demo_service import DemoService

if TYPE_CHECKING:
    from checks.conftest import Daemon, Hook
    from support.http import Service

StartDaemon = Callable[..., "Daemon"]
WriteConfig = Callable[..., Path]

# Robust on a loaded machine:
# - a DEGRADED window is long (LONG): it ends at the verdict, so the length costs nothing
#   when the test passes and leaves a slow machine room to reach the verdict;
# - a window that must run to its end (HEALTHY) has its first tick 1 s after arming
#   (SETTLE), so the daemon notices the sentinel before the window is over (else: MISSED);
# - each check has a generous timeout of its own, so a slow answer is still an answer.
LONG = 10.0
SETTLE: dict[str, Any] = {"initial_delay_s": 1.0}
CHECK_TIMEOUT_S = 2.0


@pytest.fixture
def demo() -> Iterator[DemoService]:
    """The bundled demo service: `/feature` lists items until `.set(feature="broken")`."""
    svc = DemoService().start()
    yield svc
    svc.stop()


def check_of(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r["checks"][name] for r in rows]


def test_a_broken_feature_degrades_while_health_says_ok(
    demo: DemoService, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    catalog = {
        "name": "catalog",
        "path": "/feature",
        "expect": ["status == 200", "$.items length > 0"],
        "fail_threshold": 3,
        "timeout_s": CHECK_TIMEOUT_S,
    }
    shop = {
        "base_url": demo.url,
        "fivexx_paths": ["/status"],
        "checks": [catalog],
        "probe_timeout_s": 0.35,
        "interval_s": 0.4,
    }
    config = write_config({"shop": shop}, window_s=LONG)
    daemon = start_daemon(config)
    daemon.arm("shop", "w1")
    # The feature works at first: a row says so, with the value the last condition measured.
    daemon.wait_rows("shop", "w1", lambda rows: len(rows) >= 1, "a first row")
    demo.set(feature="broken")
    finished = daemon.finished("shop", "w1")

    reason = 'check "catalog": $.items length 0, expected length > 0 (3 ticks in a row)'
    assert (finished["status"], finished["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    done = daemon.done("shop", "w1")
    assert (done["status"], done["action_taken"], done["reason"]) == (
        "DEGRADED",
        "ALERT_ONLY",
        reason,
    )
    assert finished["reason"] == reason
    assert daemon.find("window.degraded", repo="shop", work_item="w1")[0]["reason"] == reason

    rows = daemon.rows("shop", "w1")
    # Every health answer said ok (a probe timing out on a loaded machine has no answer).
    answered = [r for r in rows if r["health_code"] != 0]
    assert answered and all(r["health_ok"] and r["health_code"] == 200 for r in answered), rows
    results = check_of(rows, "catalog")
    for result in results:
        assert set(result) == {"ok", "value", "latency_ms", "detail"}, result
        assert isinstance(result["latency_ms"], float) and result["latency_ms"] > 0
    assert results[0] == {**results[0], "ok": True, "value": 2, "detail": "ok"}
    broken = {"ok": False, "value": 0, "detail": "$.items length 0, expected length > 0"}
    assert [{k: r[k] for k in broken} for r in results[-3:]] == [broken] * 3
    assert all(r["ok"] is True for r in results[:-3])  # the break came after these
    failed = [r for r in rows if r["checks"]["catalog"]["ok"] is False or not r["health_ok"]]
    assert (done["checks_total"], done["checks_failed"]) == (len(rows), len(failed))

    report = daemon.report("shop", "w1")
    assert "post_deploy_status: DEGRADED" in report
    assert f"- **Why:** {reason}" in report
    assert report.count("check catalog FAIL: $.items length 0, expected length > 0") == 3


def test_a_latency_condition_degrades_a_slow_endpoint(
    service: Service, write_config: WriteConfig, start_daemon: StartDaemon
) -> None:
    """`latency_ms < 50` against an endpoint that takes 100 ms; the same endpoint under a
    generous bound stays green."""
    service.route("/slow", lambda _n, _r: service.Reply(200, {"ok": True}, delay_s=0.1))
    slow = {
        "name": "slow",
        "path": "/slow",
        "expect": ["latency_ms < 50"],
        "fail_threshold": 2,
        "timeout_s": CHECK_TIMEOUT_S,  # the 100 ms answer always arrives: it is just slow
    }
    lenient = {**slow, "expect": ["latency_ms < 5000"]}
    config = write_config(
        {
            "tight": {"base_url": service.url, "checks": [slow], "window_s": LONG},
            "loose": {"base_url": service.url, "checks": [lenient], **SETTLE},
        },
        interval_s=0.3,
        probe_timeout_s=0.25,
    )
    daemon = start_daemon(config)
    daemon.arm("tight", "w1")
    daemon.arm("loose", "w1")

    assert daemon.finished("tight", "w1")["status"] == "DEGRADED"
    reason = daemon.done("tight", "w1")["reason"]
    match = re.fullmatch(
        r'check "slow": latency_ms (\d+\.\d), expected < 50 \(2 ticks in a row\)', reason
    )
    assert match, reason
    assert float(match.group(1)) >= 100
    results = check_of(daemon.rows("tight", "w1"), "slow")
    assert [r["ok"] for r in results] == [False, False]
    assert all(r["value"] >= 100 and r["latency_ms"] >= 100 for r in results), results

    assert daemon.finished("loose", "w1")["status"] == "HEALTHY"
    loose = check_of(daemon.rows("loose", "w1"), "slow")
    assert loose and all(r["ok"] is True and r["value"] >= 100 for r in loose), loose


def test_a_flapping_check_stays_healthy_under_its_threshold(
    service: Service, write_config: WriteConfig, start_daemon: StartDaemon, closed_url: str
) -> None:
    """A check failing every other tick never fails 2 in a row: HEALTHY with threshold 2, while
    the same flapping with threshold 1 degrades. A third repo's checks cannot be judged at all
    (Prometheus unreachable, a secret not set): that is never a failure."""
    R = service.Reply

    def flapping(hit: int, _request: Any) -> Any:
        return R(200, {"items": ["x"] if hit % 2 == 1 else []})  # ok, broken, ok, broken...

    service.route("/flap/a", flapping)
    service.route("/flap/b", flapping)
    expect = ["$.items length > 0"]
    feature = {"name": "feature", "expect": expect, "timeout_s": CHECK_TIMEOUT_S}
    unjudged = [
        {
            "type": "prometheus",
            "name": "errors",
            "url": closed_url,
            "query": "sum(rate(errors_total[1m]))",
            "max": 0,
            "timeout_s": CHECK_TIMEOUT_S,
        },
        {"name": "private", "path": "/private", "headers_env": {"X-Key": "CHECKS_UNSET_TOKEN"}},
    ]
    config = write_config(
        {
            "flappy": {
                "base_url": service.url,
                "checks": [{**feature, "path": "/flap/a", "fail_threshold": 2}],
                # 8 ticks: several flaps even if a loaded machine skips some.
                "window_s": 2.0,
                "interval_s": 0.25,
                **SETTLE,
            },
            "twitchy": {
                "base_url": service.url,
                "window_s": LONG,
                "checks": [{**feature, "path": "/flap/b", "fail_threshold": 1}],
            },
            "unjudged": {"base_url": service.url, "checks": unjudged, **SETTLE},
        }
    )
    daemon = start_daemon(config)
    for repo in ("flappy", "twitchy", "unjudged"):
        daemon.arm(repo, "w1")

    finished = daemon.finished("flappy", "w1")
    assert (finished["status"], finished["action_taken"]) == ("HEALTHY", "NONE")
    rows = daemon.rows("flappy", "w1")
    oks = [r["ok"] for r in check_of(rows, "feature")]
    assert len(oks) >= 2 and False in oks, oks
    assert all(a != b for a, b in itertools.pairwise(oks)), oks  # it did flap
    # Each failing tick counts in checks_failed (so would a health probe that timed out).
    failed = [r for r in rows if r["checks"]["feature"]["ok"] is False or not r["health_ok"]]
    assert daemon.done("flappy", "w1")["checks_failed"] == len(failed) >= oks.count(False)

    assert daemon.finished("twitchy", "w1")["status"] == "DEGRADED"
    assert daemon.done("twitchy", "w1")["reason"] == (
        'check "feature": $.items length 0, expected length > 0 (1 tick)'
    )

    assert daemon.finished("unjudged", "w1")["status"] == "HEALTHY"
    rows = daemon.rows("unjudged", "w1")
    # The checks add no failed tick (a health probe timing out on a loaded machine might).
    health_failed = sum(not r["health_ok"] for r in rows)
    assert rows and daemon.done("unjudged", "w1")["checks_failed"] == health_failed
    for r in rows:
        assert r["checks"]["errors"]["ok"] is None
        assert r["checks"]["errors"]["detail"].startswith("prometheus: connection failed")
        assert r["checks"]["private"] == {
            "ok": None,
            "detail": "environment variable CHECKS_UNSET_TOKEN is not set",
        }
    assert service.hits("/private") == 0


def test_a_silent_control_probe_means_no_rollback(
    service: Service,
    write_config: WriteConfig,
    start_daemon: StartDaemon,
    make_hook: Callable[[str], Hook],
    closed_url: str,
) -> None:
    """The service fails everything, but the control probe gets no answer either: every tick
    is inconclusive, so no DEGRADED and no rollback; the window ends INCONCLUSIVE (a blind
    window is never called HEALTHY) with a warning event. The same failing service with a
    control probe that answers is DEGRADED and rolled back."""
    R = service.Reply
    service.route("/health", lambda _n, _r: R(503, {"status": "down"}))
    service.route("/status", lambda _n, _r: R(500, {}))
    service.route("/feature", lambda _n, _r: R(200, {"items": []}))
    service.route("/gateway", lambda _n, _r: R(200, "up"))
    guarded_hook, exposed_hook = make_hook("guarded"), make_hook("exposed")
    catalog = {"name": "catalog", "path": "/feature", "expect": ["$.items length > 0"]}
    common: dict[str, Any] = {
        "base_url": service.url,
        "fivexx_paths": ["/status"],
        "checks": [{**catalog, "timeout_s": CHECK_TIMEOUT_S}],
        "auto_rollback": True,
        # Every rule within reach: health (3 in a row), the 5xx ratio and the check.
        "fail_threshold": 3,
        "fivexx_threshold": 0.2,
        "interval_s": 0.3,
        "probe_timeout_s": 0.25,
    }
    config = write_config(
        {
            "guarded": {
                **common,
                "control_url": f"{closed_url}/",
                "rollback_command": guarded_hook.argv,
                **SETTLE,
            },
            "exposed": {
                **common,
                "control_url": f"{service.url}/gateway",
                "rollback_command": exposed_hook.argv,
                "window_s": LONG,
            },
        }
    )
    daemon = start_daemon(config)
    daemon.arm("guarded", "w1")
    daemon.arm("exposed", "w1")

    finished = daemon.finished("guarded", "w1")
    assert (finished["status"], finished["action_taken"]) == ("INCONCLUSIVE", "NONE")
    assert "could be judged" in finished["reason"]
    done = daemon.done("guarded", "w1")
    assert done["checks_failed"] == 0
    rows = daemon.rows("guarded", "w1")
    assert rows and done["checks_total"] == len(rows)
    for r in rows:
        assert r["inconclusive"] is True
        assert (r["health_ok"], r["fivexx"], r["checks"]["catalog"]["ok"]) == (False, 1, False)
        assert r["health_code"] in (503, 0)  # 0: timed out on a loaded machine, still failed
        assert r["detail"].endswith(": inconclusive"), r["detail"]
        assert "control unreachable too (connection failed" in r["detail"]
    assert daemon.find("probe.inconclusive", repo="guarded", work_item="w1")
    assert not daemon.find("rollback.started", repo="guarded")
    assert not daemon.find("window.degraded", repo="guarded")

    finished = daemon.finished("exposed", "w1")
    assert (finished["status"], finished["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert exposed_hook.runs == 1
    assert any("inconclusive" not in r for r in daemon.rows("exposed", "w1"))
    assert service.hits("/gateway") >= 1

    # Checked last, after the exposed window's rollback finished: the guarded hook never ran.
    assert guarded_hook.runs == 0
