"""The configuration file (`config.py`) and the real `postdeploy check-config` command."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postdeploy.config import Config, ConfigError, WindowSettings, load_config, parse_config
from support.env import child_env

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATH = "/etc/postdeploy/test.toml"

# The contract's example, with the four kinds of `[[alerts]]` sinks.
FULL_EXAMPLE = """\
state_dir = "/var/lib/postdeploy"   # a relative path resolves against the config file's folder
enabled = true                      # kill switch

[defaults]
window_s = 900
interval_s = 30
initial_delay_s = 30
fail_threshold = 3
fivexx_threshold = 0.2
min_samples = 6
probe_timeout_s = 5
auto_rollback = false
rollback_timeout_s = 300

[repos.shop]
base_url = "http://127.0.0.1:8080"
health_path = "/health"
fivexx_paths = ["/status", "/queue"]
self_hosting = false
auto_rollback = true
rollback_command = ["/opt/deploy/hook.sh", "--rollback"]

[repos.shop.rollback_env]
TARGET_SERVICE = "shop"

[[alerts]]
type = "webhook"
url = "https://hooks.example/postdeploy"
secret_env = "POSTDEPLOY_WEBHOOK_SECRET"
min_severity = "warning"

[[alerts]]
type = "telegram"
bot_token_env = "POSTDEPLOY_TELEGRAM_TOKEN"
chat_id = "-1001234567890"
api_base = "https://api.telegram.org"

[[alerts]]
type = "alertmanager"
url = "http://127.0.0.1:9093"

[[alerts]]
type = "command"
argv = ["/usr/local/bin/page-oncall"]
"""

REPO = '[repos.a]\nbase_url = "http://127.0.0.1:1"\n'


def errors(text: str, path: str = PATH) -> list[str]:
    """The error lines parse_config reports for `text` (fails the test if it is accepted)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    assert str(info.value) == "\n".join(info.value.lines)
    return info.value.lines


LINE_RE = re.compile(r"^(?P<path>.+?): (?P<key>[^:\s]+|\(top level\)): (?P<message>.+)$")


def assert_error(text: str, key: str, fragment: str) -> None:
    """`text` is refused with a `PATH: key: message` line naming `key`, message has `fragment`."""
    lines = errors(text)
    for line in lines:
        match = LINE_RE.match(line)
        assert match, f"not PATH: key: message: {line!r}"
        assert match["path"] == PATH
    # A key ending in "*" matches any key that starts with the rest.
    head = f"{PATH}: {key[:-1]}" if key.endswith("*") else f"{PATH}: {key}: "
    matching = [line for line in lines if line.startswith(head)]
    assert matching, f"no error for {key!r} in {lines}"
    assert any(fragment in line for line in matching), (fragment, matching)


# -- a valid file -----------------------------------------------------------------------------


def test_full_example_is_valid() -> None:
    config = parse_config(FULL_EXAMPLE, PATH)
    assert config.enabled is True
    assert config.state_path == Path("/var/lib/postdeploy")
    shop = config.repos["shop"]
    assert shop.base_url == "http://127.0.0.1:8080"
    assert shop.fivexx_paths == ["/status", "/queue"]
    assert shop.rollback_command == ["/opt/deploy/hook.sh", "--rollback"]
    assert shop.rollback_env == {"TARGET_SERVICE": "shop"}
    assert [sink.type for sink in config.alerts] == [
        "webhook",
        "telegram",
        "alertmanager",
        "command",
    ]
    settings = config.window_settings("shop")
    assert settings.auto_rollback is True
    assert (settings.window_s, settings.interval_s, settings.max_ticks) == (900, 30, 30)
    assert settings.effective_initial_delay_s == 30
    assert (settings.fail_threshold, settings.fivexx_threshold, settings.min_samples) == (3, 0.2, 6)


def test_minimal_file_gets_the_built_in_defaults() -> None:
    config = parse_config('state_dir = "/s"\n' + REPO, PATH)
    assert config.window_settings("a") == WindowSettings()
    assert config.window_settings("a").effective_initial_delay_s == 30
    assert config.repos["a"].health_path == "/health"
    assert config.alerts == []


def test_floats_are_allowed_everywhere() -> None:
    text = (
        'state_dir = "/s"\n[defaults]\nwindow_s = 0.5\ninterval_s = 0.05\n'
        "initial_delay_s = 0.0\nprobe_timeout_s = 0.04\nrollback_timeout_s = 1.5\n" + REPO
    )
    settings = parse_config(text, PATH).window_settings("a")
    assert settings.window_s == 0.5 and settings.interval_s == 0.05
    assert settings.effective_initial_delay_s == 0.0  # zero is a value, not "unset"
    assert settings.max_ticks == 10


# -- every error is `PATH: dotted.key: message` -----------------------------------------------

S = 'state_dir = "/s"\n'


def in_defaults(name: str, line: str, fragment: str) -> tuple[str, str, str, str]:
    """An error case of one bad `[defaults]` line (`key = value`): the error names
    `defaults.key`."""
    return name, S + "[defaults]\n" + line + "\n", "defaults." + line.partition(" = ")[0], fragment


ERROR_CASES = [
    ("unknown top-level key", S + "bogus = 1\n", "bogus", "unknown key"),
    in_defaults("unknown key in defaults", "window = 1", "unknown key"),
    ("unknown key in a repo", S + REPO + "helth_path = '/h'\n", "repos.a.helth_path", "unknown"),
    ("unknown table", S + "[repo.a]\nbase_url = 'http://x'\n", "repo", "unknown key"),
    (
        "rollback_env value not a string",
        S + REPO + "[repos.a.rollback_env]\nPORT = 8080\n",
        "repos.a.rollback_env.PORT",
        "valid string",
    ),
    ("missing state_dir", "enabled = true\n", "state_dir", "required"),
    ("empty state_dir", 'state_dir = ""\n', "state_dir", "must not be empty"),
    ("state_dir not a string", "state_dir = 1\n", "state_dir", "valid string"),
    ("repo without base_url", S + "[repos.a]\n", "repos.a.base_url", "required"),
    ("base_url not http", S + "[repos.a]\nbase_url = 'ftp://x'\n", "repos.a.base_url", "http"),
    ("health_path relative", S + REPO + "health_path = 'h'\n", "repos.a.health_path", "/"),
    ("fivexx_paths a string", S + REPO + "fivexx_paths = '/q'\n", "repos.a.fivexx_paths", "list"),
    ("fivexx_paths relative", S + REPO + "fivexx_paths = ['q']\n", "repos.a.fivexx_paths", "/"),
    in_defaults("window_s a word", "window_s = 'long'", "number"),
    in_defaults("window_s a date", "window_s = 1979-05-27", "number"),
    in_defaults("fail_threshold fractional", "fail_threshold = 2.5", "integer"),
    in_defaults("fail_threshold zero", "fail_threshold = 0", "greater"),
    in_defaults("min_samples zero", "min_samples = 0", "greater"),
    in_defaults("fivexx_threshold above 1", "fivexx_threshold = 1.5", "less"),
    in_defaults("fivexx_threshold negative", "fivexx_threshold = -0.1", "greater"),
    in_defaults("fivexx_threshold nan", "fivexx_threshold = nan", ""),
    in_defaults("window_s negative", "window_s = -1", "greater than 0"),
    in_defaults("interval_s zero", "interval_s = 0", "greater than 0"),
    in_defaults("interval_s inf", "interval_s = inf", "finite"),
    in_defaults("initial_delay_s negative", "initial_delay_s = -0.5", "greater than or equal to 0"),
    in_defaults("probe_timeout_s negative", "probe_timeout_s = -1", "greater than 0"),
    in_defaults("rollback_timeout_s negative", "rollback_timeout_s = -5", "greater than 0"),
    (
        "negative duration in a repo",
        S + REPO + "window_s = -2\n",
        "repos.a.window_s",
        "greater than 0",
    ),
    in_defaults("mode unknown", "mode = 'dry'", "act"),
    (
        "rollback_command a shell string",
        S + REPO + "rollback_command = 'hook.sh --rollback'\n",
        "repos.a.rollback_command",
        "list",
    ),
    (
        "rollback_command empty",
        S + REPO + "rollback_command = []\n",
        "repos.a.rollback_command",
        "non-empty",
    ),
    (
        "rollback_command empty program",
        S + REPO + "rollback_command = ['', 'x']\n",
        "repos.a.rollback_command",
        "empty",
    ),
    (
        "probe_timeout_s equal to interval_s",
        S + "[defaults]\ninterval_s = 5\nprobe_timeout_s = 5\n" + REPO,
        "repos.a.probe_timeout_s",
        "must be below interval_s (5)",
    ),
    (
        "probe_timeout_s above the built-in interval_s, set only in defaults",
        S + "[defaults]\nprobe_timeout_s = 40\n" + REPO,
        "repos.a.probe_timeout_s",
        "40 must be below interval_s (30)",
    ),
    (
        "interval_s below the built-in probe_timeout_s, set only in defaults",
        S + "[defaults]\ninterval_s = 2\n" + REPO,
        "repos.a.probe_timeout_s",
        "5 must be below interval_s (2)",
    ),
    (
        "repo interval_s below the defaults' probe_timeout_s",
        S + "[defaults]\nprobe_timeout_s = 1\n" + REPO + "interval_s = 0.5\n",
        "repos.a.probe_timeout_s",
        "1 must be below interval_s (0.5)",
    ),
    (
        "auto_rollback without rollback_command",
        S + REPO + "auto_rollback = true\n",
        "repos.a.rollback_command",
        "auto_rollback is on",
    ),
    (
        "auto_rollback from defaults without rollback_command",
        S + "[defaults]\nauto_rollback = true\n" + REPO,
        "repos.a.rollback_command",
        "auto_rollback is on",
    ),
    ("repo name '..'", S + "[repos.'..']\nbase_url = 'http://x'\n", "repos", "'..'"),
    ("repo name with a slash", S + "[repos.'a/b']\nbase_url = 'http://x'\n", "repos", "'a/b'"),
    ("repo name with a leading dash", S + "[repos.-a]\nbase_url = 'http://x'\n", "repos", "'-a'"),
    ("repo name with a leading dot", S + "[repos.'.a']\nbase_url = 'http://x'\n", "repos", "'.a'"),
    (
        "repo name of 129 chars",
        S + f"[repos.{'a' * 129}]\nbase_url = 'http://x'\n",
        "repos",
        "must match",
    ),
    ("unknown alert type", S + "[[alerts]]\ntype = 'pager'\n", "alerts[0]", "webhook"),
    ("alert missing url", S + "[[alerts]]\ntype = 'webhook'\n", "alerts[0]*", "url"),
    (
        "unknown key in an alert",
        S + "[[alerts]]\ntype = 'alertmanager'\nurl = 'http://127.0.0.1:9093'\nuri = 1\n",
        "alerts[0]*",
        "uri",
    ),
    ("toml syntax error", 'state_dir = "/s\n', "(toml)", "line 1"),
    ("duplicate key", S + 'state_dir = "/t"\n', "(toml)", ""),
]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [pytest.param(text, key, fragment, id=name) for name, text, key, fragment in ERROR_CASES],
)
def test_error_lines(text: str, key: str, fragment: str) -> None:
    assert_error(text, key, fragment)


# TOML is typed, so a value of the wrong TOML type is a mistake worth reporting; pydantic's
# lax mode instead converts it silently ("yes" -> True, "30" -> 30.0, true -> 1).
LAX_CASES = [
    ("enabled a string", S + "enabled = 'yes'\n", "enabled"),
    (
        "auto_rollback a string",
        S + "[defaults]\nauto_rollback = 'true'\n",
        "defaults.auto_rollback",
    ),
    ("auto_rollback an int", S + "[defaults]\nauto_rollback = 1\n", "defaults.auto_rollback"),
    ("fail_threshold a bool", S + "[defaults]\nfail_threshold = true\n", "defaults.fail_threshold"),
    ("window_s a bool", S + "[defaults]\nwindow_s = true\n", "defaults.window_s"),
    ("interval_s a numeric string", S + "[defaults]\ninterval_s = '30'\n", "defaults.interval_s"),
    ("min_samples a float", S + "[defaults]\nmin_samples = 6.0\n", "defaults.min_samples"),
    ("self_hosting a string", S + REPO + "self_hosting = 'false'\n", "repos.a.self_hosting"),
]


@pytest.mark.parametrize(
    ("text", "key"), [pytest.param(text, key, id=name) for name, text, key in LAX_CASES]
)
def test_wrong_toml_types_are_errors(text: str, key: str) -> None:
    assert_error(text, key, "")


def test_every_problem_is_reported_at_once() -> None:
    text = S + "bogus = 1\n[defaults]\nwindow_s = -1\nextra = 2\n"
    keys = {LINE_RE.match(line)["key"] for line in errors(text)}  # type: ignore[index]
    assert keys == {"bogus", "defaults.window_s", "defaults.extra"}


def test_self_hosting_repo_may_have_auto_rollback_without_a_command() -> None:
    """A self-hosting repo is never rolled back, so it needs no rollback command."""
    config = parse_config(S + REPO + "auto_rollback = true\nself_hosting = true\n", PATH)
    assert config.repos["a"].self_hosting is True


def test_defaults_alone_may_set_anything_when_no_repo_uses_it() -> None:
    """Cross-key rules are checked on each repo's effective settings, not on [defaults]."""
    config = parse_config(S + "[defaults]\nprobe_timeout_s = 40\n", PATH)
    assert config.repos == {}


def test_a_repo_override_can_fix_the_defaults() -> None:
    text = S + "[defaults]\ninterval_s = 5\n" + REPO + "probe_timeout_s = 0.5\n"
    assert parse_config(text, PATH).window_settings("a").probe_timeout_s == 0.5


# -- merging and paths ------------------------------------------------------------------------


def test_window_settings_merge_order() -> None:
    """Built-ins < [defaults] < [repos.NAME], and one repo's keys never leak into another."""
    text = (
        S
        + "[defaults]\nwindow_s = 100\ninterval_s = 10\nmode = 'shadow'\n"
        + "[repos.a]\nbase_url = 'http://a'\nwindow_s = 50\nfail_threshold = 7\n"
        + "[repos.b]\nbase_url = 'http://b'\n"
    )
    config = parse_config(text, PATH)
    a, b = config.window_settings("a"), config.window_settings("b")
    assert (a.window_s, a.interval_s, a.fail_threshold, a.mode) == (50, 10, 7, "shadow")
    assert (b.window_s, b.interval_s, b.fail_threshold, b.mode) == (100, 10, 3, "shadow")
    assert a.min_samples == b.min_samples == 6  # built-in
    assert (a.max_ticks, b.max_ticks) == (5, 10)


@pytest.mark.parametrize(
    ("defaults", "repo", "delay_a", "delay_b"),
    [
        ("", "", 30, 30),  # built-in interval_s
        ("interval_s = 10\n", "interval_s = 4\n", 4, 10),  # each repo's own effective interval
        ("interval_s = 10\ninitial_delay_s = 7\n", "interval_s = 4\n", 7, 7),
        ("interval_s = 10\n", "initial_delay_s = 0\n", 0, 10),
    ],
)
def test_initial_delay_defaults_to_the_effective_interval(
    defaults: str, repo: str, delay_a: float, delay_b: float
) -> None:
    text = (
        S
        + "[defaults]\nprobe_timeout_s = 1\n"
        + defaults
        + "[repos.a]\nbase_url = 'http://a'\n"
        + repo
        + "[repos.b]\nbase_url = 'http://b'\n"
    )
    config = parse_config(text, PATH)
    assert config.window_settings("a").effective_initial_delay_s == delay_a
    assert config.window_settings("b").effective_initial_delay_s == delay_b


@pytest.mark.parametrize(
    ("state_dir", "expected"),
    [("state", "etc/state"), ("../var/pd", "var/pd"), ("./x/y", "etc/x/y")],
)
def test_relative_state_dir_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: str, expected: str
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "cwd").mkdir()
    config_file = tmp_path / "etc" / "config.toml"
    config_file.write_text(f"state_dir = {json.dumps(state_dir)}\n")
    monkeypatch.chdir(tmp_path / "cwd")  # the working directory must not matter
    config = load_config(config_file)
    assert config.state_path.is_absolute()
    assert config.state_path.resolve() == (tmp_path / expected).resolve()


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(f"state_dir = {json.dumps(str(tmp_path / 'abs'))}\n")
    assert load_config(config_file).state_path == tmp_path / "abs"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines == [f"{path}: (file): not found"]


def test_unreadable_file_content(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'state_dir = "/caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines[0].startswith(f"{path}: (file): cannot be read")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(S + "bogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines == [f"{path}: bogus: unknown key"]


# -- the real command -------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postdeploy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=child_env(),
        check=False,
    )


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(FULL_EXAMPLE)
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    # Only warnings (the example's programs and secrets do not exist on this host): see
    # test_config_urls_tls.py for them.
    assert all(": warning: " in line for line in result.stderr.splitlines()), result.stderr


def test_check_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(S + "bogus = 1\n[defaults]\nwindow_s = -1\n")
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert sorted(lines) == sorted(
        [
            f"{path}: bogus: unknown key",
            f"{path}: defaults.window_s: Input should be greater than 0",
        ]
    )
    assert "Traceback" not in result.stderr


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{path}: (file): not found"]


# -- property: parse_config never raises anything but ConfigError -----------------------------


def parse_or_error(text: str) -> Config | None:
    """parse_config's result, or None for a ConfigError; any other exception fails the test."""
    try:
        config = parse_config(text, PATH)
    except ConfigError as exc:
        assert exc.lines
        assert all(line.startswith(f"{PATH}: ") for line in exc.lines)
        return None
    assert isinstance(config, Config)
    return config


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    parse_or_error(text)


def toml_string(value: str) -> str:
    """A TOML basic string: escape quotes, backslashes and every control character."""
    out = []
    for char in value:
        if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # 'inf', '-inf', '1e+16' and '0.05' are all valid TOML
    if isinstance(value, str):
        return toml_string(value)
    assert isinstance(value, list)
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def toml_table(header: str, table: dict[str, Any]) -> str:
    lines = [header] if header else []
    lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def dump_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for the shapes `config_docs` builds."""
    parts = [toml_table("", {k: v for k, v in doc.items() if not isinstance(v, dict)})]
    for name, value in doc.items():
        if name == "repos" and isinstance(value, dict):
            for repo, table in value.items():
                plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
                parts.append(toml_table(f"[repos.{toml_string(repo)}]", plain))
                for sub, subtable in table.items():
                    if isinstance(subtable, dict):
                        header = f"[repos.{toml_string(repo)}.{toml_string(sub)}]"
                        parts.append(toml_table(header, subtable))
        elif name == "alerts" and isinstance(value, dict):
            for sink in value.values():
                parts.append(toml_table("[[alerts]]", sink))
        elif isinstance(value, dict):
            parts.append(toml_table(f"[{toml_string(name)}]", value))
    return "\n".join(parts)


scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([0, 1, 0.05, 0.5, 5, 30, 900, "act", "shadow", "/health", "http://x"])
)
values = scalars | st.lists(scalars, max_size=3)
seconds = st.floats(min_value=0.01, max_value=1000)
# Plausible values per key, so that many generated documents are valid or nearly so.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "window_s": seconds,
    "interval_s": seconds,
    "initial_delay_s": st.floats(min_value=0, max_value=100),
    "fail_threshold": st.integers(1, 10),
    "fivexx_threshold": st.floats(min_value=0, max_value=1),
    "min_samples": st.integers(1, 10),
    "probe_timeout_s": st.floats(min_value=0.0001, max_value=0.005),
    "auto_rollback": st.booleans(),
    "rollback_timeout_s": seconds,
    "mode": st.sampled_from(["act", "shadow"]),
    "health_path": st.sampled_from(["/health", "/healthz"]),
    "fivexx_paths": st.lists(st.sampled_from(["/status", "/queue"]), max_size=2),
    "self_hosting": st.booleans(),
    "rollback_command": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3),
}
WINDOW_KEYS = list(GOOD)[:10]
REPO_KEYS = list(GOOD)


def usually(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nine times in ten a plausible value, else anything at all."""
    return st.integers(0, 9).flatmap(lambda n: good if n else values)


def mostly_good(keys: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    return {key: usually(GOOD[key]) for key in keys}


def with_bogus(tables: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Now and then a table gains an unknown key."""
    spoiled = st.tuples(tables, st.text(max_size=6), values).map(lambda t: {**t[0], t[1]: t[2]})
    return st.integers(0, 9).flatmap(lambda n: tables if n else spoiled)


window_tables = with_bogus(st.fixed_dictionaries({}, optional=mostly_good(WINDOW_KEYS)))
repo_tables = with_bogus(
    st.fixed_dictionaries(
        {"base_url": usually(st.sampled_from(["http://127.0.0.1:8080", "https://x"]))},
        optional={
            **mostly_good(REPO_KEYS),
            "rollback_env": st.dictionaries(
                st.from_regex(r"\A[A-Z_]{1,6}\Z") | st.text(max_size=6),
                usually(st.text(max_size=8)),
                max_size=2,
            ),
        },
    )
)
GOOD_SINKS = [
    {"type": "webhook", "url": "https://hooks.example/x", "min_severity": "info"},
    {"type": "telegram", "bot_token_env": "TOKEN", "chat_id": "-100"},
    {"type": "alertmanager", "url": "http://127.0.0.1:9093"},
    {"type": "command", "argv": ["/bin/true"], "min_severity": "critical"},
]
wild_sinks = st.fixed_dictionaries(
    {"type": st.sampled_from(["webhook", "telegram", "alertmanager", "command", "x"])},
    optional={"url": values, "argv": values, "min_severity": values},
)
sink_tables = with_bogus(
    st.integers(0, 4).flatmap(lambda n: st.sampled_from(GOOD_SINKS) if n else wild_sinks)
)
good_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,8}\Z")
repo_names = st.integers(0, 9).flatmap(lambda n: good_names if n else st.text(max_size=6))
config_docs = with_bogus(
    st.fixed_dictionaries(
        {"state_dir": usually(st.sampled_from(["/var/lib/pd", "state", ""]))},
        optional={
            "enabled": usually(st.booleans()),
            "defaults": window_tables,
            "repos": st.dictionaries(repo_names, repo_tables, max_size=3),
            "alerts": st.dictionaries(st.integers(0, 5), sink_tables, max_size=3),
            "daemon": with_bogus(st.just({})),
        },
    )
)


def same_toml(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (TOML round trip check)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_toml(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_toml(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@FAST
@given(config_docs)
def test_valid_toml_is_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    text = dump_toml(doc)
    # Check the writer first, so that this test really feeds parse_config valid TOML.
    expected = dict(doc)
    if isinstance(expected.get("alerts"), dict):
        expected["alerts"] = list(expected["alerts"].values())
        if not expected["alerts"]:
            del expected["alerts"]
    parsed = tomllib.loads(text)
    for name in ("defaults", "daemon", "repos"):
        if name in expected and name not in parsed and expected[name] == {}:
            expected[name] = parsed.setdefault(name, {})
    assert same_toml(parsed, expected), text
    parse_or_error(text)


def test_the_generator_also_produces_valid_configs() -> None:
    """The property above is only meaningful if its documents can be valid, like this one."""
    doc = {
        "state_dir": "/var/lib/pd",
        "defaults": {"window_s": 0.5, "interval_s": 0.05, "probe_timeout_s": 0.04},
        "repos": {"shop": {"base_url": "http://127.0.0.1:8080", "fivexx_paths": ["/q"]}},
        "alerts": {0: {"type": "command", "argv": ["/bin/true"]}},
    }
    config = parse_or_error(dump_toml(doc))
    assert config is not None
    assert config.window_settings("shop").max_ticks == 10
