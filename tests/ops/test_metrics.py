"""The Prometheus endpoint: every family, with values that agree with the files on disk."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from postdeploy import __version__, metrics

if TYPE_CHECKING:
    from ops.conftest import Ops

FAMILIES = {
    "postdeploy_open_windows": "gauge",
    "postdeploy_probes": "counter",
    "postdeploy_probe_latency_seconds": "histogram",
    "postdeploy_tick_lateness_seconds": "histogram",
    "postdeploy_windows_finished": "counter",
    "postdeploy_rollbacks": "counter",
    "postdeploy_alert_deliveries": "counter",
    "postdeploy_outbox_backlog": "gauge",
}


# Sample name -> [(labels, value)].
Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    """Sample name -> [(labels, value)]; also checks every family's type."""
    out: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, f"{name}: {types.get(name)}"
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def test_metrics_endpoint_after_windows_ran(ops: Ops) -> None:
    """A daemon with `[metrics] listen` serves /metrics over HTTP: a healthy window and a
    degraded one that was rolled back show up in every family, and the probe counts match
    the rows in series.jsonl."""
    hook = [sys.executable, "-c", "raise SystemExit(0)"]
    ops.write_config(
        repos={
            "shop": ops.repo(),
            "api": ops.repo(fail_threshold=2, auto_rollback=True, rollback_command=hook),
        },
        # Port 0: the daemon binds a free port and logs it, so no test can race for it.
        metrics={"listen": "127.0.0.1:0"},
        alerts=[{"type": "webhook", "url": ops.receiver(200).url, "min_severity": "info"}],
    )
    daemon = ops.start()
    serving = daemon.wait_for("metrics.serving")
    url = f"http://{serving['listen']}/metrics"
    daemon.wait_for("daemon.ready")
    before = _samples(httpx.get(url, timeout=10).text)
    assert _value(before, "postdeploy_open_windows") == 0

    ops.arm("shop", "green")
    assert ops.wait_done("shop", "green")["status"] == "HEALTHY"
    ops.service.set(health="fail")
    ops.arm("api", "red")
    done = ops.wait_done("api", "red")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")

    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert daemon.stop() == 0

    for repo, item in (("shop", "green"), ("api", "red")):
        rows = ops.rows(repo, item)
        failed = sum(1 for r in rows if not r["health_ok"] or r["fivexx"])
        assert _value(samples, "postdeploy_probes_total", repo=repo) == len(rows) > 0
        assert _value(samples, "postdeploy_probes_total", repo=repo, result="failed") == failed
        latency = "postdeploy_probe_latency_seconds"
        assert _value(samples, latency + "_count", repo=repo) == len(rows)
        assert _value(samples, latency + "_bucket", repo=repo, le="+Inf") == len(rows)
    # Lateness is the daemon's own: one histogram over every repo's probes.
    all_rows = len(ops.rows("shop", "green")) + len(ops.rows("api", "red"))
    assert _value(samples, "postdeploy_tick_lateness_seconds_count") == all_rows
    # The two failed health probes that tripped fail_threshold = 2, and nothing after them.
    assert _value(samples, "postdeploy_probes_total", repo="api", result="failed") == 2
    # Lateness is measured in milliseconds: its smallest bucket is 1 ms.
    lateness = samples["postdeploy_tick_lateness_seconds_bucket"]
    assert min(float(labels["le"]) for labels, _ in lateness) == 0.001
    finished = "postdeploy_windows_finished_total"
    assert _value(samples, finished, repo="shop", status="HEALTHY", action="NONE") == 1
    assert _value(samples, finished, repo="api", status="DEGRADED", action="ROLLBACK_OK") == 1
    rollbacks = "postdeploy_rollbacks_total"
    assert _value(samples, rollbacks, repo="api", result="ROLLBACK_OK") == 1
    assert _value(samples, "postdeploy_open_windows") == 0
    assert _value(samples, "postdeploy_info", version=__version__) == 1
    assert _value(samples, "process_open_fds") > 0


def test_recording_functions_and_a_port_in_use(capsys: Any) -> None:
    """The hooks the daemon calls land in the registry; a port that is taken is logged as an
    error and the daemon goes on without an endpoint."""
    before = _samples(metrics.render())
    metrics.alert_delivered("ops-test-sink", True)
    metrics.alert_delivered("ops-test-sink", False)
    metrics.outbox_backlog(7)
    metrics.rollback_finished("ops-test-repo", "ROLLBACK_FAILED")
    after = _samples(metrics.render())
    deliveries = "postdeploy_alert_deliveries_total"
    for result in ("ok", "failed"):
        delta = _value(after, deliveries, sink="ops-test-sink", result=result) - _value(
            before, deliveries, sink="ops-test-sink", result=result
        )
        assert delta == 1
    assert _value(after, "postdeploy_outbox_backlog") == 7
    assert _value(after, "postdeploy_rollbacks_total", repo="ops-test-repo") == 1

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics.serve(("127.0.0.1", taken.getsockname()[1]))  # must not raise
    assert "metrics.serve_failed" in capsys.readouterr().out
