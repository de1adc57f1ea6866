"""`health_expect`: the health rule written in the feature checks' grammar.

Unset, a health answer is healthy iff HTTP 200 and a JSON object whose "status" is "ok"
(the contract's rule, unchanged). Set (in `[defaults]` or `[repos.NAME]`), it is healthy iff
every condition holds, and a failure names the condition that did not, as a feature check's
does. Real HTTP services on 127.0.0.1; the configs go through the real loader.

Also here: the secret header values of a feature check are read once, when the config is
loaded, never per tick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy import logs
from postdeploy.config import Config, parse_config
from postdeploy.probe import Prober
from postdeploy.series import ProbeRow

if TYPE_CHECKING:
    from checks.conftest import Daemon
    from support.http import Service

UP = ["status == 200", '$.status == "UP"']
OK_TEXT = ["status == 200", 'body contains "OK"']


def load(text: str) -> Config:
    return parse_config('state_dir = "/tmp/unused"\n' + text, "/etc/postdeploy/test.toml")


def config_for(service: Service, defaults: list[str] | None, repo: list[str] | None) -> Config:
    """Two repos on `service`: `shop` (with `repo` as its own health_expect) and `other`
    (inheriting `[defaults]`)."""
    text = "[defaults]\n"
    if defaults is not None:
        text += f"health_expect = {json.dumps(defaults)}\n"
    text += f'[repos.shop]\nbase_url = "{service.url}"\n'
    if repo is not None:
        text += f"health_expect = {json.dumps(repo)}\n"
    text += f'[repos.other]\nbase_url = "{service.url}"\n'
    return load(text)


async def probe(prober: Prober, config: Config, repo: str = "shop") -> ProbeRow:
    return await prober.probe(config.repos[repo], 2.0, 0, time.time(), False)


# (expect, the health answer: code and body, healthy?, the row's health detail)
CASES: list[tuple[str, list[str] | None, int, Any, bool, str]] = [
    ("unset: status ok", None, 200, {"status": "ok"}, True, "health ok"),
    ("unset: status UP", None, 200, {"status": "UP"}, False, "health HTTP 200 but status='UP'"),
    ("unset: text", None, 200, "OK", False, "health HTTP 200 but the body is not JSON"),
    ("unset: 503", None, 503, {"status": "ok"}, False, "health HTTP 503"),
    ("UP: up", UP, 200, {"status": "UP"}, True, "health ok"),
    ("UP: down", UP, 200, {"status": "DOWN"}, False, 'health $.status "DOWN", expected == "UP"'),
    ("UP: 503", UP, 503, {"status": "UP"}, False, "health status 503, expected == 200"),
    ("UP: no field", UP, 200, {}, False, 'health $.status missing, expected == "UP"'),
    ("UP: text", UP, 200, "UP", False, 'health $.status: the body is not JSON, expected == "UP"'),
    ("text: OK", OK_TEXT, 200, "all OK", True, "health ok"),
    (
        "text: degraded",
        OK_TEXT,
        200,
        "degraded",
        False,
        'health body does not match contains "OK", expected contains "OK"',
    ),
    ("status only: a 202", ["status == 202"], 202, "", True, "health ok"),
    ("latency bound", ["latency_ms < 60000"], 200, "", True, "health ok"),
]


@pytest.mark.parametrize(
    ("expect", "code", "body", "healthy", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_health_expect_judges_the_health_answer(
    prober: Prober,
    service: Service,
    expect: list[str] | None,
    code: int,
    body: Any,
    healthy: bool,
    detail: str,
) -> None:
    service.route("/health", lambda _n, _r: service.Reply(code, body))
    row = await probe(prober, config_for(service, None, expect))
    assert (row.health_ok, row.health_code) == (healthy, code)
    assert row.detail == detail


async def test_defaults_apply_to_every_repo_and_a_repo_overrides_them(
    prober: Prober, service: Service
) -> None:
    service.route("/health", lambda _n, _r: service.Reply(200, {"status": "UP"}))
    config = config_for(service, defaults=UP, repo=['$.status == "ok"'])
    other, shop = await probe(prober, config, "other"), await probe(prober, config, "shop")
    assert other.health_ok, other.detail  # [defaults]' conditions
    assert not shop.health_ok  # its own conditions, not [defaults]'
    assert shop.detail == 'health $.status "UP", expected == "ok"'


# -- the real daemon: a verdict's reason names the condition --------------------------------


def test_a_window_is_judged_by_health_expect(
    service: Service, write_config: Callable[..., Path], start_daemon: Callable[..., Daemon]
) -> None:
    """`up` answers {"status": "UP"}: HEALTHY under `$.status == "UP"` (the built-in rule
    would call it DEGRADED); `down` answers {"status": "DOWN"}: DEGRADED, and the reason
    names the condition that failed."""
    service.route("/up", lambda _n, _r: service.Reply(200, {"status": "UP"}))
    service.route("/down", lambda _n, _r: service.Reply(200, {"status": "DOWN"}))
    common = {"base_url": service.url, "health_expect": UP, "probe_timeout_s": 1.5}
    repos = {
        # Runs to its end: a later first tick (the daemon sees the sentinel first), and
        # generous timeouts so a loaded machine's slow answer is still an answer.
        "up": {**common, "health_path": "/up", "initial_delay_s": 1.0, "interval_s": 2.0},
        "down": {**common, "health_path": "/down", "interval_s": 2.0, "window_s": 20.0},
    }
    daemon = start_daemon(write_config(repos, window_s=4.0, fail_threshold=2))
    daemon.arm("up", "w1")
    daemon.arm("down", "w1")

    down = daemon.finished("down", "w1")
    assert down["status"] == "DEGRADED"
    assert down["reason"].endswith('last: health $.status "DOWN", expected == "UP"'), down
    up = daemon.finished("up", "w1")
    assert up["status"] == "HEALTHY", daemon.rows("up", "w1")
    assert all(row["health_ok"] for row in daemon.rows("up", "w1"))


# -- secret header values are read once per config load -------------------------------------


async def test_secret_headers_are_read_at_load_not_per_tick(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The value a systemd credential held when the config was loaded is the one sent, and
    a tick reads no variable or file: the probe never blocks the event loop on them."""
    (tmp_path / "SHOP_ONCE_TOKEN").write_text("at-load-s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("SHOP_ONCE_TOKEN", raising=False)
    service.route("/private", lambda _n, _r: service.Reply(200, {}))
    config = load(
        f'[repos.shop]\nbase_url = "{service.url}"\n'
        '[[repos.shop.checks]]\nname = "private"\npath = "/private"\n'
        'headers_env = { "X-Key" = "SHOP_ONCE_TOKEN" }\n'
    )
    (tmp_path / "SHOP_ONCE_TOKEN").write_text("changed-after-load")

    def no_reads(name: str, environ: Any = None) -> str | None:
        raise AssertionError(f"a tick read the secret {name}")

    monkeypatch.setattr(logs, "secret_value", no_reads)
    for tick in range(2):
        row = await prober.probe(config.repos["shop"], 2.0, tick, time.time(), False)
        assert row.checks["private"]["ok"] is True, row.checks
    assert [r.headers["x-key"] for r in service.requests("/private")] == ["at-load-s3cret"] * 2


async def test_a_secret_unset_at_load_cannot_be_judged(
    prober: Prober, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset when the config was loaded: "cannot be judged" (as before), nothing is sent,
    even once the variable appears (a reload reads it)."""
    monkeypatch.delenv("SHOP_LATE_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    service.route("/private", lambda _n, _r: service.Reply(200, {}))
    text = (
        f'[repos.shop]\nbase_url = "{service.url}"\n'
        '[[repos.shop.checks]]\nname = "private"\npath = "/private"\n'
        'headers_env = { "X-Key" = "SHOP_LATE_TOKEN" }\n'
    )
    config = load(text)
    monkeypatch.setenv("SHOP_LATE_TOKEN", "late-s3cret")
    row = await prober.probe(config.repos["shop"], 2.0, 0, time.time(), False)
    assert row.checks["private"] == {
        "ok": None,
        "detail": "environment variable SHOP_LATE_TOKEN is not set",
    }
    assert service.hits("/private") == 0
    reloaded = load(text)  # what SIGHUP does
    row = await prober.probe(reloaded.repos["shop"], 2.0, 1, time.time(), False)
    assert row.checks["private"]["ok"] is True
    assert service.requests("/private")[0].headers["x-key"] == "late-s3cret"
