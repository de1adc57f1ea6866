"""`configfile`: the light reader of `arm`, `wait`, `cancel` and `rollback` against the full
config. Each case is read by both; where a problem lies in a key the light reader reads, both
must print the same lines, and where the file is valid both must find the same state
directory, kill switch and repo names."""

from __future__ import annotations

from pathlib import Path

import pytest

from postdeploy import DEFAULT_CONFIG_PATH
from postdeploy.config import parse_config
from postdeploy.configfile import ConfigError, config_path, essentials, parse_toml, read_essentials

REPO = '[repos.shop]\nbase_url = "http://127.0.0.1:9"\n'

# (name, config text): broken only in what the light reader reads.
BROKEN = [
    ("not TOML", 'state_dir = "s\n'),
    ("nested too deeply", "x = " + "[" * 5000 + "]" * 5000),
    ("no state_dir", REPO),
    ("state_dir not a string", "state_dir = 3\n" + REPO),
    ("state_dir empty", 'state_dir = ""\n' + REPO),
    ("enabled not a boolean", 'state_dir = "s"\nenabled = "no"\n' + REPO),
    ("repos not a table", 'state_dir = "s"\nrepos = ["shop"]\n'),
    ("a repo not a table", 'state_dir = "s"\n[repos]\nshop = 1\n'),
    ("a repo name breaks the name rule", 'state_dir = "s"\n' + REPO.replace("shop", '"sh op"')),
    ("a hidden repo name", 'state_dir = "s"\n' + REPO.replace("shop", '".shop"')),
    ("several at once", "state_dir = []\nenabled = 0\nrepos = 1\n"),
]


def _full_lines(text: str, path: str) -> list[str]:
    with pytest.raises(ConfigError) as full:
        parse_config(text, path)
    return full.value.lines


def _light(text: str, path: str) -> object:
    return essentials(parse_toml(text, path), path)


@pytest.mark.parametrize(("name", "text"), BROKEN, ids=[name for name, _ in BROKEN])
def test_both_readers_report_the_same_lines(name: str, text: str) -> None:
    path = "/etc/postdeploy/config.toml"
    with pytest.raises(ConfigError) as light:
        _light(text, path)
    assert light.value.lines == _full_lines(text, path)


# (name, config text, state_path for a file in /cfg, enabled, repos)
VALID = [
    ("absolute", 'state_dir = "/var/lib/pd"\n' + REPO, "/var/lib/pd", True, {"shop"}),
    ("relative to the file", 'state_dir = "state"\n' + REPO, "/cfg/state", True, {"shop"}),
    ("kill switch", 'state_dir = "/s"\nenabled = false\n', "/s", False, set()),
    (
        "two repos, other tables untouched",
        'state_dir = "/s"\n[defaults]\nwindow_s = 60\n' + REPO + REPO.replace("shop", "blog"),
        "/s",
        True,
        {"shop", "blog"},
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "state", "enabled", "repos"), VALID, ids=[case[0] for case in VALID]
)
def test_both_readers_agree_on_a_valid_file(
    name: str, text: str, state: str, enabled: bool, repos: set[str]
) -> None:
    path = "/cfg/config.toml"
    full = parse_config(text, path)
    light = essentials(parse_toml(text, path), path)
    assert (light.state_path, light.enabled, set(light.repos)) == (Path(state), enabled, repos)
    assert (full.state_path, full.enabled, set(full.repos)) == (Path(state), enabled, repos)


def test_keys_it_does_not_read_are_not_checked() -> None:
    """What `arm` does with a config broken elsewhere: the daemon and `check-config` say it."""
    text = 'state_dir = "/s"\nretention_days = "soon"\n[repos.shop]\nbase_ur = "x"\n'
    assert len(_full_lines(text, "c.toml")) == 3  # retention_days, base_url, base_ur
    assert essentials(parse_toml(text, "c.toml"), "c.toml").repos == {"shop"}


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    with pytest.raises(ConfigError) as exc:
        read_essentials(str(missing))
    assert exc.value.lines == [f"{missing}: (file): not found"]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as exc:
        read_essentials(str(binary))
    assert exc.value.lines[0].startswith(f"{binary}: (file): cannot be read:")


@pytest.mark.parametrize(
    ("given", "environ", "expected"),
    [
        ("/a.toml", {"POSTDEPLOY_CONFIG": "/b.toml"}, "/a.toml"),
        (None, {"POSTDEPLOY_CONFIG": "/b.toml"}, "/b.toml"),
        (None, {"POSTDEPLOY_CONFIG": ""}, DEFAULT_CONFIG_PATH),
        (None, {}, DEFAULT_CONFIG_PATH),
    ],
)
def test_config_path(given: str | None, environ: dict[str, str], expected: str) -> None:
    assert config_path(given, environ) == expected
