"""The configuration file: pydantic models, TOML loading, and `PATH: key: message` errors.

Every table forbids unknown keys, so a typo is an error rather than a silently ignored
setting. `[defaults]` holds the window settings; each `[repos.NAME]` table may override any of
them, and `Config.window_settings(name)` returns the merged, effective values for one repo.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from postdeploy.alerts.config import OutboxSettings, Sinks
from postdeploy.checks import Bound, Condition, ConditionError, parse_condition
from postdeploy.layout import NAME_RE, valid_name

DEFAULT_CONFIG_PATH = "/etc/postdeploy/config.toml"

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _check_argv(argv: list[str]) -> list[str]:
    if not argv:
        raise ValueError("must name a program: a non-empty list of strings")
    if not argv[0]:
        raise ValueError("the program name (first element) is empty")
    return argv


Argv = Annotated[list[str], AfterValidator(_check_argv)]


class _Table(BaseModel):
    """Base for every TOML table: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WindowOverrides(_Table):
    """The window keys that `[defaults]` sets and each `[repos.NAME]` may override."""

    window_s: PositiveFloat | None = None
    interval_s: PositiveFloat | None = None
    initial_delay_s: NonNegativeFloat | None = None
    fail_threshold: Annotated[int, Field(ge=1)] | None = None
    fivexx_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    min_samples: Annotated[int, Field(ge=1)] | None = None
    probe_timeout_s: PositiveFloat | None = None
    auto_rollback: bool | None = None
    rollback_timeout_s: PositiveFloat | None = None
    mode: Literal["act", "shadow"] | None = None
    verify_ticks: Annotated[int, Field(ge=0)] | None = None


class WindowSettings(_Table):
    """The effective window settings of one repo (built-in defaults < [defaults] < repo)."""

    window_s: float = 900
    interval_s: float = 30
    initial_delay_s: float | None = None
    fail_threshold: int = 3
    fivexx_threshold: float = 0.2
    min_samples: int = 6
    probe_timeout_s: float = 5
    auto_rollback: bool = False
    rollback_timeout_s: float = 300
    mode: Literal["act", "shadow"] = "act"
    verify_ticks: int = 3  # probes after ROLLBACK_OK that confirm recovery (0: none)

    @property
    def effective_initial_delay_s(self) -> float:
        """`initial_delay_s`, which defaults to the repo's effective `interval_s`."""
        return self.interval_s if self.initial_delay_s is None else self.initial_delay_s

    @property
    def max_ticks(self) -> int:
        """How many ticks a window has: `max(1, floor(window_s / interval_s + 1e-9))`."""
        return max(1, math.floor(self.window_s / self.interval_s + 1e-9))


CHECK_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Check(_Table):
    name: Annotated[str, Field(pattern=CHECK_NAME_RE)]
    fail_threshold: Annotated[int, Field(ge=1)] | None = None  # default: the repo's
    timeout_s: PositiveFloat | None = None  # default: the repo's probe_timeout_s


class HttpCheck(_Check):
    """`[[repos.NAME.checks]]` with `type = "http"` (the default): a request and conditions."""

    type: Literal["http"] = "http"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, Annotated[str, Field(pattern=ENV_NAME_RE)]] = Field(
        default_factory=dict
    )  # header name -> environment variable holding its (secret) value
    body: str | None = None
    expect: list[str] = Field(default_factory=lambda: ["status == 200"])

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("headers")
    @classmethod
    def _ascii_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not (name.isascii() and text.isascii()):
                raise ValueError(f"{name!r}: header names and values must be ASCII")
        return value

    @field_validator("expect")
    @classmethod
    def _conditions(cls, value: list[str]) -> list[str]:
        problems = []
        for text in value:
            try:
                parse_condition(text)
            except ConditionError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def conditions(self) -> list[Condition]:
        return [parse_condition(text) for text in self.expect]


class PrometheusCheck(_Check):
    """`type = "prometheus"`: a PromQL query against the operator's Prometheus, bounded."""

    type: Literal["prometheus"]
    url: str
    query: Annotated[str, Field(min_length=1)]
    max: float | None = None
    min: float | None = None
    no_data: Literal["ok", "fail"] = "ok"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _bounded(self) -> PrometheusCheck:
        if self.max is None and self.min is None:
            raise ValueError("needs a bound: max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self

    @property
    def bound(self) -> Bound:
        return Bound(max=self.max, min=self.min)


def _check_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "http"))
    return str(getattr(value, "type", "http"))


CheckConfig = Annotated[
    Annotated[HttpCheck, Tag("http")] | Annotated[PrometheusCheck, Tag("prometheus")],
    Discriminator(_check_type),
]


class RepoConfig(WindowOverrides):
    """One `[repos.NAME]` table: the service to watch and how to react."""

    base_url: str
    health_path: str = "/health"
    fivexx_paths: list[str] = Field(default_factory=list)
    self_hosting: bool = False
    rollback_command: Argv | None = None
    rollback_env: dict[str, str] = Field(default_factory=dict)
    checks: list[CheckConfig] = Field(default_factory=list)
    # Something that should always answer (a gateway, a neighbour): when it fails in the same
    # tick as the service, the tick is inconclusive (our own network), never held against it.
    control_url: str | None = None

    @field_validator("control_url")
    @classmethod
    def _control(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        names = [check.name for check in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique: {', '.join(duplicates)}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("fivexx_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with /")
        return value

    @field_validator("rollback_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


class DaemonSettings(_Table):
    """`[daemon]`: how the daemon itself runs (an extension of the contract)."""

    rescan_interval_s: PositiveFloat = 5.0
    max_inflight_requests: Annotated[int, Field(ge=1)] = 256
    max_body_bytes: Annotated[int, Field(ge=1024)] = 65536
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsSettings(_Table):
    """`[metrics]`: an optional Prometheus endpoint, off unless `listen` is set."""

    listen: str | None = None  # "127.0.0.1:9464"; bind to loopback unless you mean it

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class GitReportSettings(_Table):
    """`[git_report]`: also write each report into a git worktree, commit, maybe push."""

    worktree: str  # a template: {repo} and {work_item}, e.g. "/srv/checkouts/{repo}"
    path: str = "docs/work-items/{work_item}/post-deploy-log.md"  # inside the worktree
    push: bool = False
    remote: str = "origin"
    timeout_s: PositiveFloat = 60.0

    @field_validator("worktree", "path")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(repo="r", work_item="w")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{repo}} and {{work_item}} may be used: {exc}") from None
        return value

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = Path(value).parts
        if Path(value).is_absolute() or ".." in parts:
            raise ValueError("must be a relative path inside the worktree, without ..")
        return value


def _state_dir(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


class Config(_Table):
    """The whole configuration file."""

    state_dir: Annotated[str, AfterValidator(_state_dir)]
    enabled: bool = True
    # Finished windows older than this are removed (their whole directory); 0 keeps them.
    retention_days: NonNegativeFloat = 90.0
    defaults: WindowOverrides = Field(default_factory=WindowOverrides)
    repos: dict[str, RepoConfig] = Field(default_factory=dict)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    alerts: Sinks = Field(default_factory=list)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    git_report: GitReportSettings | None = None
    # Where the file was read from; a relative `state_dir` resolves against its folder.
    _source: Path | None = PrivateAttr(default=None)
    _settings: dict[str, WindowSettings] = PrivateAttr(default_factory=dict)

    @field_validator("repos")
    @classmethod
    def _repo_names(cls, value: dict[str, RepoConfig]) -> dict[str, RepoConfig]:
        for name in value:
            if not valid_name(name):
                raise ValueError(f"repo name {name!r} must match {NAME_RE.pattern}")
        return value

    @property
    def state_path(self) -> Path:
        """`state_dir` as an absolute path (relative to the config file's folder)."""
        path = Path(self.state_dir)
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path.absolute()

    def window_settings(self, repo: str) -> WindowSettings:
        """The effective window settings of `repo`: repo keys over `[defaults]` over built-ins.

        Built once per repo (the config is frozen; a reload makes a new one)."""
        settings = self._settings.get(repo)
        if settings is None:
            fields = WindowOverrides.model_fields
            merged: dict[str, Any] = {}
            for layer in (self.defaults, self.repos[repo]):
                merged.update(
                    {k: getattr(layer, k) for k in fields if getattr(layer, k) is not None}
                )
            settings = self._settings[repo] = WindowSettings(**merged)
        return settings


class ConfigError(Exception):
    """The configuration cannot be used; `lines` are `PATH: dotted.key: message`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not isinstance(previous, int) or item not in _UNION_TAGS:
            parts.append(("." if parts else "") + item)
        # else: the tag pydantic adds after a list index for a tagged union; not a key
        previous = item
    return "".join(parts) or "(top level)"


# The `type` values of tagged unions (checks, alert sinks): pydantic puts them in error paths.
_UNION_TAGS = {"http", "prometheus", "webhook", "telegram", "alertmanager", "command"}


def _messages(path: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = item.get("ctx", {})
            message = f"type {ctx.get('tag', '?')!r} is not one of {ctx.get('expected_tags', '?')}"
        lines.append(f"{path}: {_dotted(loc)}: {message}")
    return lines


def _cross_key_problems(config: Config) -> list[tuple[str, str]]:
    """Rules between keys, checked on each repo's merged (effective) settings."""
    problems = []
    for name, repo in config.repos.items():
        settings = config.window_settings(name)
        if settings.probe_timeout_s >= settings.interval_s:
            problems.append(
                (
                    f"repos.{name}.probe_timeout_s",
                    f"{settings.probe_timeout_s:g} must be below interval_s "
                    f"({settings.interval_s:g}), so that a window's probes never overlap",
                )
            )
        if settings.auto_rollback and repo.rollback_command is None and not repo.self_hosting:
            problems.append(
                (f"repos.{name}.rollback_command", "auto_rollback is on but it is unset")
            )
    return problems


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse TOML text into a Config; raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: (toml): {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: (toml): nested too deeply"]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_messages(path, exc)) from None
    problems = _cross_key_problems(config)
    if problems:
        raise ConfigError([f"{path}: {key}: {message}" for key, message in problems])
    config._source = Path(path)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`; raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: (file): not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: (file): cannot be read: {exc}"]) from None
    return parse_config(text, str(path))
