"""`postdeploy check-config` on feature checks: each bad condition or key is named exactly.

The real CLI runs in a subprocess. One config holds one repo per case (pydantic reports every
problem at once), so a single run yields every case's line; each case then asserts its own
exact `PATH: dotted.key: message` line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.env import child_env
from support.toml import render_toml

Cli = Callable[..., subprocess.CompletedProcess[str]]


def http(**fields: Any) -> dict[str, Any]:
    """An HTTP check table: a name and a path, then `fields`."""
    return {"name": "c", "path": "/", **fields}


def prom(**fields: Any) -> dict[str, Any]:
    """A Prometheus check table: what it needs, then `fields`."""
    base = {"type": "prometheus", "name": "p", "url": "http://127.0.0.1:9090", "query": "up"}
    return {**base, **fields}


# A bad condition (in an HTTP check's `expect`, after a good one) -> what check-config says.
CONDITIONS: dict[str, str] = {
    "$.x ==": "a value is missing after ==",
    "$.items lenght > 0": "expected one of == != <= >= < > after the subject",
    'body matches "["': "bad regular expression: unterminated character set at position 0",
    "latency_ms < fast": "'fast' is not a value (use a number, \"text\", true, false, null)",
    '$.items length > "many"': "length compares with a number",
    'status == "200"': "status compares with a number",
    "$..items exists": "'$..items' is not a JSON path like $.a.b[0]",
    'headers contains "x"': "the subject must be status, latency_ms, body or a JSON path like "
    "$.items",
    '$.city ≠ "Zürich"': "expected one of == != <= >= < > after the subject",
}

# repo name -> (its table after `base_url`, the exact line after `PATH: repos.NAME.`)
CASES: dict[str, tuple[dict[str, Any], str]] = {
    **{
        f"condition-{n}": (
            {"checks": [http(expect=["status == 200", condition])]},
            f"checks[0].expect: '{condition}': {why}",
        )
        for n, (condition, why) in enumerate(CONDITIONS.items())
    },
    "second-check": (
        {"checks": [http(name="fine"), http(name="typo", expect=["$.items lenght > 0"])]},
        "checks[1].expect: '$.items lenght > 0': expected one of == != <= >= < > after the subject",
    ),
    "empty": ({"checks": [http(expect=[""])]}, "checks[0].expect: empty condition"),
    "no-data": (
        {"checks": [prom(max=0.1, no_data="maybe")]},
        "checks[0].no_data: Input should be 'ok' or 'fail'",
    ),
    "prom-url": (
        {"checks": [prom(url="127.0.0.1:9090")]},
        "checks[0].url: must be an http:// or https:// URL with a host",
    ),
    "prom-query": (
        {"checks": [prom(query="")]},
        "checks[0].query: String should have at least 1 character",
    ),
    "prom-expect": (
        {"checks": [prom(expect=["status == 200"])]},
        "checks[0].expect: unknown key",
    ),
    "unknown-type": (
        {"checks": [{"type": "graphite", "name": "g"}]},
        "checks[0]: type 'graphite' is not one of 'http', 'prometheus'",
    ),
    "method": (
        {"checks": [http(method="PUT")]},
        "checks[0].method: Input should be 'GET', 'HEAD' or 'POST'",
    ),
    "check-path": ({"checks": [http(path="feature")]}, "checks[0].path: must start with /"),
    "headers-env": (
        {"checks": [http(headers_env={"Authorization": "1TOKEN"})]},
        "checks[0].headers_env.Authorization: "
        "String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'",
    ),
    "threshold": (
        {"checks": [http(fail_threshold=0)]},
        "checks[0].fail_threshold: Input should be greater than or equal to 1",
    ),
    "typo-key": (
        {"checks": [http(expects=["status == 200"])]},
        "checks[0].expects: unknown key",
    ),
    "duplicate": (
        {"checks": [http(name="catalog", path="/a"), http(name="catalog", path="/b")]},
        "checks: check names must be unique: catalog",
    ),
    "control-url": (
        {"control_url": "gateway.internal"},
        "control_url: must be an http:// or https:// URL with a host",
    ),
}


def expected_line(path: Path, case: str) -> str:
    """The exact problem line `check-config` prints for `case`."""
    return f"{path}: repos.{case}.{CASES[case][1]}"


def config_text(cases: dict[str, tuple[dict[str, Any], str]]) -> str:
    repos = {
        name: {"base_url": "http://127.0.0.1:1", **table} for name, (table, _) in cases.items()
    }
    return render_toml({"state_dir": "state", "repos": repos})


def one_check_config(folder: Path, **check: Any) -> Path:
    """A config file in `folder`: repo `shop` with one check, `catalog` on /feature, and
    `check`'s fields."""
    table = {
        "base_url": "http://127.0.0.1:8080",
        "checks": [http(name="catalog", path="/feature", **check)],
    }
    path = folder / "config.toml"
    path.write_text(render_toml({"state_dir": "state", "repos": {"shop": table}}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checked(
    tmp_path_factory: pytest.TempPathFactory, postdeploy_cli: Cli
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One `check-config` run over the config holding every case."""
    folder = tmp_path_factory.mktemp("check-config")
    path = folder / "config.toml"
    path.write_text(config_text(CASES), encoding="utf-8")
    return path, postdeploy_cli("check-config", str(path), cwd=folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_names_the_bad_condition(
    checked: tuple[Path, subprocess.CompletedProcess[str]], case: str
) -> None:
    path, result = checked
    assert result.returncode == 2, result
    assert expected_line(path, case) in result.stderr.splitlines(), result.stderr


def test_check_config_reports_nothing_else(
    checked: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Exactly one line per case: no stray, duplicated or mislocated problem."""
    path, result = checked
    expected = sorted(expected_line(path, case) for case in CASES)
    assert sorted(result.stderr.splitlines()) == expected
    assert result.stdout == ""


def test_valid_checks_pass_check_config(
    tmp_path: Path, postdeploy_cli: Cli, closed_url: str
) -> None:
    """Every kind of check and condition, written the way the README shows them."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
state_dir = "state"
[repos.shop]
base_url = "http://127.0.0.1:8080"
control_url = "{closed_url}/"

[[repos.shop.checks]]
name = "catalog"
path = "/feature"
expect = ["status == 200", "$.items length > 0", '$["名前"] == "値"', "latency_ms < 500"]
fail_threshold = 2
timeout_s = 1.5

[[repos.shop.checks]]
type = "http"
name = "search.v2"
method = "POST"
path = "/search"
body = '{{"q": "über"}}'
headers = {{ "Content-Type" = "application/json" }}
headers_env = {{ Authorization = "SHOP_TOKEN" }}
expect = ['body contains "results"', 'body not_contains "error"', 'body matches "v\\\\d+"']

[[repos.shop.checks]]
name = "head"
method = "HEAD"
path = "/"

[[repos.shop.checks]]
type = "prometheus"
name = "errors"
url = "http://127.0.0.1:9090/"
query = 'sum(rate(http_requests_total{{code=~"5.."}}[1m]))'
max = 0.5
no_data = "fail"
fail_threshold = 4
""",
        encoding="utf-8",
    )
    result = postdeploy_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok (1 repos")


def test_check_config_reports_every_bad_condition_of_a_check(
    tmp_path: Path, postdeploy_cli: Cli
) -> None:
    path = one_check_config(tmp_path, expect=["$.x ==", "status == 200", 'body matches "["'])
    result = postdeploy_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "'$.x ==': a value is missing after ==" in result.stderr
    assert "'body matches \"[\"': bad regular expression" in result.stderr


def test_run_refuses_a_bad_condition_with_the_same_line(tmp_path: Path) -> None:
    """`postdeploy run` validates the same way and exits 2 before starting."""
    path = one_check_config(tmp_path, expect=["$.items length >"])
    result = subprocess.run(
        [sys.executable, "-m", "postdeploy", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env=child_env(),
    )
    assert result.returncode == 2, result
    line = f"{path}: repos.shop.checks[0].expect: '$.items length >': a value is missing after >"
    assert line in result.stderr.splitlines(), result.stderr
    assert not (tmp_path / "state").exists()


def test_check_config_rejects_a_header_value_that_cannot_be_sent(
    tmp_path: Path, postdeploy_cli: Cli
) -> None:
    path = one_check_config(tmp_path, headers={"X-Trace": "tést"})
    result = postdeploy_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert f"{path}: repos.shop.checks[0].headers" in result.stderr
    assert "X-Trace" in result.stderr
