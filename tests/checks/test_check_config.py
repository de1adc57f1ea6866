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

import pytest

from support.env import child_env

Cli = Callable[..., subprocess.CompletedProcess[str]]

# repo name -> (its TOML body after `base_url`, the exact line after `PATH: `)
CASES: dict[str, tuple[str, str]] = {
    "missing-value": (
        """
        [[repos.missing-value.checks]]
        name = "catalog"
        path = "/feature"
        expect = ["status == 200", "$.x =="]
        """,
        "repos.missing-value.checks[0].expect: '$.x ==': a value is missing after ==",
    ),
    "second-check": (
        """
        [[repos.second-check.checks]]
        name = "fine"
        path = "/feature"
        [[repos.second-check.checks]]
        name = "typo"
        path = "/feature"
        expect = ['$.items lenght > 0']
        """,
        "repos.second-check.checks[1].expect: '$.items lenght > 0': "
        "expected one of == != <= >= < > after the subject",
    ),
    "bad-regex": (
        """
        [[repos.bad-regex.checks]]
        name = "page"
        path = "/"
        expect = ['body matches "["']
        """,
        "repos.bad-regex.checks[0].expect: 'body matches \"[\"': bad regular expression: "
        "unterminated character set at position 0",
    ),
    "not-a-value": (
        """
        [[repos.not-a-value.checks]]
        name = "fast"
        path = "/"
        expect = ["latency_ms < fast"]
        """,
        "repos.not-a-value.checks[0].expect: 'latency_ms < fast': 'fast' is not a value "
        '(use a number, "text", true, false, null)',
    ),
    "length-string": (
        """
        [[repos.length-string.checks]]
        name = "catalog"
        path = "/feature"
        expect = ['$.items length > "many"']
        """,
        "repos.length-string.checks[0].expect: '$.items length > \"many\"': "
        "length compares with a number",
    ),
    "status-string": (
        """
        [[repos.status-string.checks]]
        name = "s"
        path = "/"
        expect = ['status == "200"']
        """,
        "repos.status-string.checks[0].expect: 'status == \"200\"': status compares with a number",
    ),
    "bad-path": (
        """
        [[repos.bad-path.checks]]
        name = "p"
        path = "/"
        expect = ["$..items exists"]
        """,
        "repos.bad-path.checks[0].expect: '$..items exists': "
        "'$..items' is not a JSON path like $.a.b[0]",
    ),
    "bad-subject": (
        """
        [[repos.bad-subject.checks]]
        name = "h"
        path = "/"
        expect = ['headers contains "x"']
        """,
        "repos.bad-subject.checks[0].expect: 'headers contains \"x\"': "
        "the subject must be status, latency_ms, body or a JSON path like $.items",
    ),
    "unicode": (
        """
        [[repos.unicode.checks]]
        name = "city"
        path = "/"
        expect = ['$.city ≠ "Zürich"']
        """,
        "repos.unicode.checks[0].expect: '$.city ≠ \"Zürich\"': "
        "expected one of == != <= >= < > after the subject",
    ),
    "empty": (
        """
        [[repos.empty.checks]]
        name = "e"
        path = "/"
        expect = [""]
        """,
        "repos.empty.checks[0].expect: empty condition",
    ),
    "no-data": (
        """
        [[repos.no-data.checks]]
        type = "prometheus"
        name = "errors"
        url = "http://127.0.0.1:9090"
        query = "sum(rate(errors_total[1m]))"
        max = 0.1
        no_data = "maybe"
        """,
        "repos.no-data.checks[0].no_data: Input should be 'ok' or 'fail'",
    ),
    "prom-url": (
        """
        [[repos.prom-url.checks]]
        type = "prometheus"
        name = "errors"
        url = "127.0.0.1:9090"
        query = "up"
        """,
        "repos.prom-url.checks[0].url: must be an http:// or https:// URL with a host",
    ),
    "prom-query": (
        """
        [[repos.prom-query.checks]]
        type = "prometheus"
        name = "errors"
        url = "http://127.0.0.1:9090"
        query = ""
        """,
        "repos.prom-query.checks[0].query: String should have at least 1 character",
    ),
    "prom-expect": (
        """
        [[repos.prom-expect.checks]]
        type = "prometheus"
        name = "errors"
        url = "http://127.0.0.1:9090"
        query = "up"
        expect = ["status == 200"]
        """,
        "repos.prom-expect.checks[0].expect: unknown key",
    ),
    "unknown-type": (
        """
        [[repos.unknown-type.checks]]
        type = "graphite"
        name = "g"
        """,
        "repos.unknown-type.checks[0]: type 'graphite' is not one of 'http', 'prometheus'",
    ),
    "method": (
        """
        [[repos.method.checks]]
        name = "m"
        path = "/"
        method = "PUT"
        """,
        "repos.method.checks[0].method: Input should be 'GET', 'HEAD' or 'POST'",
    ),
    "check-path": (
        """
        [[repos.check-path.checks]]
        name = "p"
        path = "feature"
        """,
        "repos.check-path.checks[0].path: must start with /",
    ),
    "headers-env": (
        """
        [[repos.headers-env.checks]]
        name = "secret"
        path = "/"
        headers_env = { Authorization = "1TOKEN" }
        """,
        "repos.headers-env.checks[0].headers_env.Authorization: "
        "String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'",
    ),
    "threshold": (
        """
        [[repos.threshold.checks]]
        name = "t"
        path = "/"
        fail_threshold = 0
        """,
        "repos.threshold.checks[0].fail_threshold: Input should be greater than or equal to 1",
    ),
    "typo-key": (
        """
        [[repos.typo-key.checks]]
        name = "t"
        path = "/"
        expects = ["status == 200"]
        """,
        "repos.typo-key.checks[0].expects: unknown key",
    ),
    "duplicate": (
        """
        [[repos.duplicate.checks]]
        name = "catalog"
        path = "/a"
        [[repos.duplicate.checks]]
        name = "catalog"
        path = "/b"
        """,
        "repos.duplicate.checks: check names must be unique: catalog",
    ),
    "control-url": (
        """
        control_url = "gateway.internal"
        """,
        "repos.control-url.control_url: must be an http:// or https:// URL with a host",
    ),
}


def config_text(cases: dict[str, tuple[str, str]]) -> str:
    parts = ['state_dir = "state"\n']
    for name, (body, _line) in cases.items():
        # A repo table first, so each case's own tables may follow in any order.
        parts.append(f'[repos.{name}]\nbase_url = "http://127.0.0.1:1"\n')
        parts.append("\n".join(line.strip() for line in body.strip().splitlines()) + "\n")
    return "\n".join(parts)


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
    assert f"{path}: {CASES[case][1]}" in result.stderr.splitlines(), result.stderr


def test_check_config_reports_nothing_else(
    checked: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Exactly one line per case: no stray, duplicated or mislocated problem."""
    path, result = checked
    expected = sorted(f"{path}: {line}" for _body, line in CASES.values())
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
    path = tmp_path / "config.toml"
    path.write_text(
        """
state_dir = "state"
[repos.shop]
base_url = "http://127.0.0.1:8080"
[[repos.shop.checks]]
name = "catalog"
path = "/feature"
expect = ["$.x ==", "status == 200", 'body matches "["']
""",
        encoding="utf-8",
    )
    result = postdeploy_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "'$.x ==': a value is missing after ==" in result.stderr
    assert "'body matches \"[\"': bad regular expression" in result.stderr


def test_run_refuses_a_bad_condition_with_the_same_line(tmp_path: Path) -> None:
    """`postdeploy run` validates the same way and exits 2 before starting."""
    path = tmp_path / "config.toml"
    path.write_text(
        """
state_dir = "state"
[repos.shop]
base_url = "http://127.0.0.1:8080"
[[repos.shop.checks]]
name = "catalog"
path = "/feature"
expect = ["$.items length >"]
""",
        encoding="utf-8",
    )
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
    path = tmp_path / "config.toml"
    path.write_text(
        """
state_dir = "state"
[repos.shop]
base_url = "http://127.0.0.1:8080"
[[repos.shop.checks]]
name = "catalog"
path = "/feature"
headers = { "X-Trace" = "tést" }
""",
        encoding="utf-8",
    )
    result = postdeploy_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result
    assert f"{path}: repos.shop.checks[0].headers" in result.stderr
    assert "X-Trace" in result.stderr
