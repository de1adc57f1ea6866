"""`Prober.probe` with feature checks against real HTTP servers on 127.0.0.1.

What the request looks like (method, headers, secret headers, body), what lands in the row
for each check, checks that cannot be judged (a missing secret, Prometheus unreachable), a
check's own timeout, and the control probe's rule for inconclusive ticks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy.config import RepoConfig
from postdeploy.probe import Prober
from postdeploy.series import ProbeRow

if TYPE_CHECKING:
    from support.http import Service


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    instance = Prober(max_body_bytes=1024)
    try:
        yield instance
    finally:
        await instance.aclose()


def repo(service: Service, checks: list[dict[str, Any]], **extra: Any) -> RepoConfig:
    """A repo watching `service`, validated exactly as the config file would be."""
    return RepoConfig.model_validate(
        {"base_url": service.url, "health_path": "/health", "checks": checks, **extra}
    )


async def probe(prober: Prober, config: RepoConfig, timeout: float = 2.0) -> ProbeRow:
    return await prober.probe(config, timeout, 0, time.time(), False)


async def probe_private(prober: Prober, service: Service, status: int, env: str) -> ProbeRow:
    """Probe one check, `private` on /private (which answers `status`), whose X-Key header
    holds the secret named `env`."""
    service.route("/private", lambda _n, _r: service.Reply(status, {}))
    check = {"name": "private", "path": "/private", "headers_env": {"X-Key": env}}
    return await probe(prober, repo(service, [check]))


async def test_a_check_records_ok_value_latency_and_detail(
    prober: Prober, service: Service
) -> None:
    R = service.Reply
    service.route("/feature", lambda _n, _r: R(200, {"items": [{"sku": "A-1"}, {"sku": "B-2"}]}))
    service.route("/broken", lambda _n, _r: R(200, {"items": []}))
    expect = ["status == 200", "$.items length > 0"]
    row = await probe(
        prober,
        repo(
            service,
            [
                {"name": "catalog", "path": "/feature", "expect": expect},
                {"name": "broken", "path": "/broken", "expect": expect},
            ],
        ),
    )
    good, bad = row.checks["catalog"], row.checks["broken"]
    assert set(good) == {"ok", "value", "latency_ms", "detail"}
    assert (good["ok"], good["value"], good["detail"]) == (True, 2, "ok")
    assert (bad["ok"], bad["value"]) == (False, 0)
    assert bad["detail"] == "$.items length 0, expected length > 0"
    assert good["latency_ms"] > 0 and bad["latency_ms"] > 0
    # Health said ok all along: the failing check alone fails the tick, and says why.
    assert row.health_ok and row.failed
    assert "check broken FAIL: $.items length 0, expected length > 0" in row.detail
    assert "catalog" not in row.detail  # passing checks stay out of the detail
    assert row.to_dict()["checks"] == row.checks


async def test_request_method_headers_secret_and_body(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    R = service.Reply
    service.route("/search", lambda _n, r: R(200, {"echo": r.body.decode(), "v": "v2.3"}))
    service.route("/", lambda _n, _r: R(200, "front page"))
    monkeypatch.setenv("SHOP_TEST_TOKEN", "Bearer s3cr3t-t0ken")
    row = await probe(
        prober,
        repo(
            service,
            [
                {
                    "name": "search",
                    "method": "POST",
                    "path": "/search",
                    "headers": {"Content-Type": "application/json", "X-Trace": "t-1"},
                    "headers_env": {"Authorization": "SHOP_TEST_TOKEN"},
                    "body": '{"q": "über"}',
                    "expect": ['$.echo == "{\\"q\\": \\"über\\"}"', r'body matches "v\\d+\\.\\d+"'],
                },
                {"name": "head", "method": "HEAD", "path": "/", "expect": ["status == 200"]},
            ],
        ),
    )
    assert row.checks["search"]["ok"] is True, row.checks
    assert row.checks["head"]["ok"] is True, row.checks
    (post,) = service.requests("/search")
    assert post.method == "POST"
    assert post.body == '{"q": "über"}'.encode()
    assert post.headers["authorization"] == "Bearer s3cr3t-t0ken"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["x-trace"] == "t-1"
    assert post.headers["user-agent"].startswith("postdeploy/")
    (head,) = service.requests("/")
    assert head.method == "HEAD"


async def test_a_missing_secret_cannot_be_judged_and_sends_nothing(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOP_MISSING_TOKEN", raising=False)
    row = await probe_private(prober, service, 401, "SHOP_MISSING_TOKEN")
    assert row.checks["private"] == {
        "ok": None,
        "detail": "environment variable SHOP_MISSING_TOKEN is not set",
    }
    assert service.hits("/private") == 0  # never sent without its secret
    assert not row.failed
    assert "check private n/a: environment variable SHOP_MISSING_TOKEN is not set" in row.detail


async def test_a_secret_from_a_systemd_credential(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "SHOP_CRED_TOKEN").write_text("cred-s3cr3t")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("SHOP_CRED_TOKEN", raising=False)
    row = await probe_private(prober, service, 200, "SHOP_CRED_TOKEN")
    assert row.checks["private"]["ok"] is True, row.checks
    assert service.requests("/private")[0].headers["x-key"] == "cred-s3cr3t"


async def test_a_header_value_that_cannot_be_sent_is_not_judged(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_ODD_TOKEN", "clé-secrète")
    row = await probe_private(prober, service, 200, "SHOP_ODD_TOKEN")
    assert row.checks["private"]["ok"] is None
    assert row.health_ok and not row.failed


async def test_a_checks_own_timeout(prober: Prober, service: Service) -> None:
    """`timeout_s` on a check overrides the probe timeout, for that check only."""
    service.route("/slow", lambda _n, _r: service.Reply(200, {"ok": True}, delay_s=0.4))
    row = await probe(
        prober,
        repo(
            service,
            [
                {"name": "impatient", "path": "/slow", "timeout_s": 0.05},
                {"name": "patient", "path": "/slow"},
            ],
        ),
        timeout=10.0,
    )
    impatient = row.checks["impatient"]
    assert impatient["ok"] is False
    assert impatient["detail"] == "timed out after 0.05s"
    assert impatient["value"] is None
    assert row.checks["patient"]["ok"] is True
    assert row.checks["patient"]["latency_ms"] >= 400


async def test_redirects_are_not_followed_and_big_bodies_are_cut(
    prober: Prober, service: Service
) -> None:
    R = service.Reply
    service.route("/moved", lambda _n, _r: R(302, {}))
    service.route("/huge", lambda _n, _r: R(200, {"items": ["x" * 100] * 50}))  # over 1 KiB
    row = await probe(
        prober,
        repo(
            service,
            [
                {"name": "moved", "path": "/moved"},
                {"name": "huge", "path": "/huge", "expect": ["$.items length > 0"]},
            ],
        ),
    )
    assert row.checks["moved"]["detail"] == "status 302, expected == 200"
    assert row.checks["huge"]["ok"] is False
    assert row.checks["huge"]["detail"] == "HTTP 200 body over 1024 bytes"


async def test_unicode_over_the_wire(prober: Prober, service: Service) -> None:
    service.route("/city", lambda _n, _r: service.Reply(200, {"名前": "値", "city": "Zürich 🚀"}))
    expect = ['$["名前"] == "値"', '$.city == "Zürich 🚀"', 'body contains "Zürich"']
    row = await probe(prober, repo(service, [{"name": "city", "path": "/city", "expect": expect}]))
    assert row.checks["city"]["ok"] is True, row.checks


async def test_prometheus_that_cannot_be_reached_is_not_a_failure(
    prober: Prober, service: Service, closed_url: str
) -> None:
    check = {
        "type": "prometheus",
        "name": "errors",
        "url": closed_url,
        "query": "sum(rate(errors_total[1m]))",
        "max": 0,
        "no_data": "fail",  # even so: Prometheus down is not "no data"
    }
    row = await probe(prober, repo(service, [check]))
    result = row.checks["errors"]
    assert result["ok"] is None
    assert result["detail"].startswith("prometheus: connection failed"), result
    assert "no_data" not in result
    assert not row.failed
    assert "check errors n/a: prometheus: connection failed" in row.detail


async def test_prometheus_answering_garbage_is_not_a_failure(
    prober: Prober, service: Service
) -> None:
    """A proxy page or an HTTP error where Prometheus should be says nothing of the service."""
    service.route("/api/v1/query", lambda _n, _r: service.Reply(502, "<html>bad gateway</html>"))
    check = {"type": "prometheus", "name": "p", "url": service.url, "query": "up", "min": 1}
    row = await probe(prober, repo(service, [check]))
    assert row.checks["p"]["ok"] is None
    assert row.checks["p"]["detail"] == "prometheus: HTTP 502"
    # The query went out URL-encoded, as a query parameter.
    (request,) = service.requests("/api/v1/query")
    assert request.path == "/api/v1/query?query=up"


# -- the control probe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health_ok", "feature_ok", "control_up", "inconclusive"),
    [
        (False, True, False, True),  # service failing, control silent: our network
        (True, False, False, True),  # only a feature check failing counts as failing too
        (False, True, True, False),  # control answers: the service really is failing
        (True, True, False, False),  # service fine: the control probe changes nothing
        (True, True, True, False),
    ],
)
async def test_the_control_probe_rule(
    prober: Prober,
    service: Service,
    closed_url: str,
    health_ok: bool,
    feature_ok: bool,
    control_up: bool,
    inconclusive: bool,
) -> None:
    R = service.Reply
    service.route("/health", lambda _n, _r: R(200 if health_ok else 503, {"status": "ok"}))
    service.route("/feature", lambda _n, _r: R(200, {"items": [1] if feature_ok else []}))
    service.route("/gateway", lambda _n, _r: R(500, "a control that answers, even 500, is up"))
    control = f"{service.url}/gateway" if control_up else f"{closed_url}/"
    check = {"name": "catalog", "path": "/feature", "expect": ["$.items length > 0"]}
    row = await probe(prober, repo(service, [check], control_url=control))
    assert row.inconclusive is inconclusive
    assert row.service_failed is not (health_ok and feature_ok)
    assert row.failed is (row.service_failed and not inconclusive)
    assert ("inconclusive" in row.detail) is inconclusive
    if inconclusive:
        assert "control unreachable too (connection failed" in row.detail
        assert row.to_dict()["inconclusive"] is True
    if control_up:
        assert service.hits("/gateway") == 1


@pytest.mark.parametrize(
    ("body", "number"),
    [
        ({"queue": {"depth": 7}}, 7.0),
        ({"queue": {"depth": 0.25}}, 0.25),
        ({"queue": {"depth": "7"}}, None),  # a string is not a number
        ({"queue": {"depth": True}}, None),  # nor is a bool
        ({"queue": {}}, None),
        (b'{"queue": {"depth": NaN}}', None),  # Python's JSON reads NaN: not finite
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[" * 1000, None),  # nested past the parser's recursion limit
    ],
)
async def test_a_json_number_for_the_baseline_is_recorded_when_there_is_one(
    prober: Prober, service: Service, body: Any, number: float | None
) -> None:
    service.route("/queue", lambda _n, _r: service.Reply(200, body))
    check = {"name": "queue", "path": "/queue", "baseline_number": "$.queue.depth"}
    result = (await probe(prober, repo(service, [check]))).checks["queue"]
    assert result.get("number") == number
    assert result["ok"] is True  # the number is only recorded, never judged here


async def test_no_json_number_without_an_answer(prober: Prober, service: Service) -> None:
    check = {"name": "queue", "path": "/queue", "baseline_number": "$.depth"}
    dead = RepoConfig.model_validate(
        {"base_url": "http://127.0.0.1:9", "health_path": "/health", "checks": [check]}
    )
    result = (await probe(prober, dead, timeout=0.5)).checks["queue"]
    assert result["ok"] is False and "number" not in result
