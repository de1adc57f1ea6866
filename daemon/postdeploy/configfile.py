"""The config file before its models: where it is, reading it as TOML, the rules of the keys
every command needs (`state_dir`, the repo names, `enabled`), and a light reader of those.

Two readers share these rules. `config` builds the pydantic models and validates every key
(`run`, `check-config`, `status`, `show`); `read_essentials` here reads only those few keys,
with tomllib alone, for the commands that need no more than the state directory and the repo
names (`arm`, `wait`, `cancel`, `rollback`): building the models costs them ~0.2 s and ~15 MB
at every deploy (docs/PERFORMANCE.md). A problem in a key read here is reported by both
readers with the same `PATH: key: message` line (tests/unit/test_configfile.py compares
them); a problem in any other key is `config`'s alone: the daemon refuses such a file, and
`postdeploy check-config` reports it.

Nothing here imports pydantic: `postdeploy arm` imports this module, not `config`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postdeploy import DEFAULT_CONFIG_PATH
from postdeploy.layout import NAME_RE, valid_name

ENV_VAR = "POSTDEPLOY_CONFIG"  # where the config file is when `--config` is not given


class ConfigError(Exception):
    """The configuration cannot be used; `lines` are `PATH: dotted.key: message`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def config_path(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The config file: `--config` if given, else `$POSTDEPLOY_CONFIG`, else the default."""
    env = os.environ if environ is None else environ
    return given or env.get(ENV_VAR) or DEFAULT_CONFIG_PATH


def read_text(path: str | Path) -> str:
    """The file's text; ConfigError (`PATH: (file): ...`) when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: (file): not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: (file): cannot be read: {exc}"]) from None


def parse_toml(text: str, path: str) -> dict[str, Any]:
    """The TOML document; ConfigError (`PATH: (toml): ...`) when it is not TOML."""
    import tomllib  # here: `postdeploy --help` reads no file

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: (toml): {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: (toml): nested too deeply"]) from None


def check_state_dir(value: str) -> str:
    """`state_dir`'s rule (it is required, and a string); ValueError if broken."""
    if not value:
        raise ValueError("must not be empty")
    return value


def state_path(state_dir: str, source: Path | None) -> Path:
    """`state_dir` as an absolute path: a relative one resolves against the folder of the
    config file it was read from (`source`), else against the working directory."""
    path = Path(state_dir)
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    return path.absolute()


def check_repo_names(names: Iterable[str]) -> None:
    """Every `[repos.NAME]` name follows the name rule (it is a directory name below
    `state_dir`); ValueError naming the first that does not."""
    for name in names:
        if not valid_name(name):
            raise ValueError(f"repo name {name!r} must match {NAME_RE.pattern}")


# pydantic's words for a wrong type (`config` is strict: no coercion), so that both readers
# say the same thing about the same key.
_MISSING = "Field required"
_NOT_A = {
    str: "Input should be a valid string",
    bool: "Input should be a valid boolean",
    dict: "Input should be a valid dictionary",
}
_NOT_A_REPO = "Input should be a valid dictionary or instance of RepoConfig"


@dataclass(frozen=True)
class Essentials:
    """What the light commands read of the config file."""

    state_path: Path
    enabled: bool
    repos: frozenset[str]


def _typed(raw: Mapping[str, Any], key: str, kind: type, problems: list[str]) -> Any:
    """`raw[key]` if it is a `kind`, else None with the problem added."""
    value = raw[key]
    if isinstance(value, kind):
        return value
    problems.append(f"{key}: {_NOT_A[kind]}")
    return None


def _state_dir(raw: Mapping[str, Any], problems: list[str]) -> str | None:
    if "state_dir" not in raw:
        problems.append(f"state_dir: {_MISSING}")
        return None
    value = _typed(raw, "state_dir", str, problems)
    try:
        return None if value is None else check_state_dir(value)
    except ValueError as exc:
        problems.append(f"state_dir: {exc}")
        return None


def _repo_names(raw: Mapping[str, Any], problems: list[str]) -> frozenset[str]:
    repos = _typed(raw, "repos", dict, problems) if "repos" in raw else {}
    if not repos:
        return frozenset()
    tables = [f"repos.{name}: {_NOT_A_REPO}" for name in repos if not isinstance(repos[name], dict)]
    try:
        check_repo_names(repos)
    except ValueError as exc:
        if not tables:  # `config` checks the names once every table is valid
            tables.append(f"repos: {exc}")
    problems += tables
    return frozenset(repos)


def essentials(raw: Mapping[str, Any], path: str) -> Essentials:
    """`state_dir`, `enabled` and the repo names of a parsed config file, checked by the
    same rules as `config`; ConfigError with every problem in them. Other keys are not
    looked at: they are neither checked nor needed."""
    problems: list[str] = []
    state_dir = _state_dir(raw, problems)
    enabled = _typed(raw, "enabled", bool, problems) if "enabled" in raw else True
    repos = _repo_names(raw, problems)
    if problems or state_dir is None:
        raise ConfigError([f"{path}: {line}" for line in problems])
    return Essentials(state_path(state_dir, Path(path)), enabled, repos)


def read_essentials(path: str) -> Essentials:
    """Read the config file at `path` lightly (see `essentials`); raises ConfigError."""
    return essentials(parse_toml(read_text(path), path), path)
