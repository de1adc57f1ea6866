"""The configuration file: pydantic models, TOML loading, and `PATH: key: message` errors.

Every table forbids unknown keys, so a typo is an error rather than a silently ignored
setting. `[defaults]` holds the window settings; each `[repos.NAME]` table may override any of
them, and `Config.window_settings(name)` returns the merged, effective values for one repo.

Loading is one pass that finds every problem: pydantic's (types, ranges, unknown keys) and
the rules between keys (checked on what remains valid, so a type error never hides them).
`check_config_file` also finds warnings: things that are valid but look wrong on this host.

What the probe needs is prepared once per load, never per tick: the TLS contexts (building one
costs up to 100 ms of CPU), the health conditions, and the secret header values.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

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
from pydantic_core import ErrorDetails

from postdeploy import logs
from postdeploy.alerts.config import OutboxSettings, Sinks
from postdeploy.checks import (
    CHECK_NAME_RE,
    Bound,
    Condition,
    ConditionError,
    is_json_path,
    parse_condition,
)
from postdeploy.configfile import ConfigError as ConfigError  # re-exported
from postdeploy.configfile import (
    check_repo_names,
    check_state_dir,
    parse_toml,
    read_text,
    state_path,
)
from postdeploy.urls import check_http_url

if TYPE_CHECKING:
    import ssl  # imported when a TLS file is loaded: `postdeploy arm` has no use for it

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _check_argv(argv: list[str]) -> list[str]:
    if not argv:
        raise ValueError("must name a program: a non-empty list of strings")
    if not argv[0]:
        raise ValueError("the program name (first element) is empty")
    return argv


Argv = Annotated[list[str], AfterValidator(_check_argv)]

# Every URL key uses the one validator in urls.py (http/https, a host, no credentials).
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
# A URL that paths are appended to: without its trailing slash.
BaseUrl = Annotated[str, AfterValidator(lambda value: check_http_url(value).rstrip("/"))]


def _absolute_path(value: str) -> str:
    if not Path(value).is_absolute():
        raise ValueError("must be an absolute path")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]


def _url_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with /")
    return value


UrlPath = Annotated[str, AfterValidator(_url_path)]  # a request's path: "/health"


def _check_conditions(value: list[str]) -> list[str]:
    """Every condition parses (the feature checks' grammar); every bad one is named."""
    problems = []
    for text in value:
        try:
            parse_condition(text)
        except ConditionError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return value


Conditions = Annotated[list[str], AfterValidator(_check_conditions)]


def _some_conditions(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("needs at least one condition (unset it for the built-in rule)")
    return value


class _Table(BaseModel):
    """Base for every TOML table: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


MAX_LOOKBACK = 1000  # the most judged probes a k-of-n rule looks back over


class WindowOverrides(_Table):
    """The window keys that `[defaults]` sets and each `[repos.NAME]` may override."""

    window_s: PositiveFloat | None = None
    interval_s: PositiveFloat | None = None
    initial_delay_s: NonNegativeFloat | None = None
    fail_threshold: Annotated[int, Field(ge=1)] | None = None
    # DEGRADED when fail_threshold of the last fail_lookback judged health probes failed
    # (default: fail_threshold, the consecutive rule).
    fail_lookback: Annotated[int, Field(ge=1, le=MAX_LOOKBACK)] | None = None
    fivexx_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    min_samples: Annotated[int, Field(ge=1)] | None = None
    # A window whose probed ticks were judged (not inconclusive) less often than this ends
    # INCONCLUSIVE, never HEALTHY.
    min_judged_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    probe_timeout_s: PositiveFloat | None = None
    auto_rollback: bool | None = None
    rollback_timeout_s: PositiveFloat | None = None
    mode: Literal["act", "shadow"] | None = None
    verify_ticks: Annotated[int, Field(ge=0)] | None = None
    # The baseline (what normal looked like before the deploy; see baseline.py): probe every
    # baseline_interval_s while no window is open (0: off), keep the last baseline_keep_s of
    # rows, and leave out the last baseline_gap_s before armed_at (the deploy's own restart).
    baseline_interval_s: NonNegativeFloat | None = None
    baseline_keep_s: PositiveFloat | None = None
    baseline_gap_s: NonNegativeFloat | None = None
    # DEGRADED when the window is significantly worse than the baseline and by at least this
    # much: latency relative to the baseline median (0.5: +50 %), 5xx ratio absolute (0.01:
    # one percentage point). Unset: that comparison is off.
    latency_increase: PositiveFloat | None = None
    fivexx_increase: Annotated[float, Field(gt=0, le=1)] | None = None
    baseline_confidence: Annotated[float, Field(ge=0.5, lt=1)] | None = None
    # How many samples each side needs before a baseline comparison is made (default:
    # min_samples, which is also the fixed 5xx rule's floor).
    baseline_min_samples: Annotated[int, Field(ge=1)] | None = None


class ProbeOverrides(_Table):
    """How a repo's service is probed: keys `[defaults]` sets and `[repos.NAME]` may override.

    Their effective values (repo over [defaults]) are resolved at load into `ProbeSettings`."""

    # Conditions in the feature checks' grammar that a health answer must meet. Unset: the
    # built-in rule, HTTP 200 and a JSON object whose "status" is "ok".
    health_expect: Annotated[Conditions, AfterValidator(_some_conditions)] | None = None
    # TLS towards base_url (the health path, the 5xx paths and the feature checks): a CA
    # bundle to trust instead of the system's, and a client certificate with its key (the key
    # may be left out when the certificate file holds it too).
    tls_ca_file: AbsolutePath | None = None
    tls_cert_file: AbsolutePath | None = None
    tls_key_file: AbsolutePath | None = None


PROBE_KEYS = tuple(ProbeOverrides.model_fields)


@dataclass(frozen=True)
class TlsFiles:
    """A repo's effective TLS files; one SSL context is built per distinct triple."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def configured(self) -> bool:
        return any((self.ca, self.cert, self.key))


class TlsError(ValueError):
    """A TLS file that cannot be loaded; `key` names the config key it comes from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _no_passphrase() -> str:
    # Called by OpenSSL for an encrypted key; without it, OpenSSL would prompt on the terminal.
    raise TlsError(
        "tls_key_file",
        "the private key is encrypted; postdeploy cannot ask for a passphrase "
        "(use an unencrypted key that only the daemon's user can read)",
    )


def _tls_reason(exc: Exception) -> str:
    import ssl

    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if not reason or "PEM lib" in str(exc):
            return "not a PEM certificate with its matching private key"
        return reason.replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def build_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The client SSL context for `files`: the CA bundle (else the system's CAs) and the
    client certificate. Costs ~1 ms with a CA file, 50-100 ms with the system's CAs: build
    it when the config is loaded or in a worker thread, never per request. Raises TlsError."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=files.ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError("tls_ca_file", f"{files.ca} cannot be loaded: {_tls_reason(exc)}") from None
    if files.cert is not None:
        try:
            context.load_cert_chain(files.cert, files.key, password=_no_passphrase)
        except TlsError as exc:  # an encrypted key, perhaps inside the certificate file
            raise TlsError("tls_key_file" if files.key else "tls_cert_file", str(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            key = f" with {files.key}" if files.key else ""
            message = f"{files.cert}{key} cannot be loaded: {_tls_reason(exc)}"
            raise TlsError("tls_cert_file", message) from None
    return context


@dataclass(frozen=True)
class ProbeSettings:
    """What the probe needs for one repo, prepared once per config load."""

    # None: the built-in rule (HTTP 200 and a JSON object whose "status" is "ok").
    health_expect: tuple[Condition, ...] | None = None
    # None: the Prober's own context (the system's CAs, no client certificate).
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def of(cls, health_expect: list[str] | None, context: ssl.SSLContext | None) -> ProbeSettings:
        conditions = None
        if health_expect is not None:
            conditions = tuple(parse_condition(text) for text in health_expect)
        return cls(conditions, context)


class Defaults(WindowOverrides, ProbeOverrides):
    """`[defaults]`: every key a `[repos.NAME]` table may override."""


class WindowSettings(_Table):
    """The effective window settings of one repo (built-in defaults < [defaults] < repo)."""

    window_s: float = 900
    interval_s: float = 30
    initial_delay_s: float | None = None
    fail_threshold: int = 3
    fail_lookback: int | None = None  # None: fail_threshold (the consecutive rule)
    fivexx_threshold: float = 0.2
    min_samples: int = 6
    min_judged_fraction: float = 0.5
    probe_timeout_s: float = 5
    auto_rollback: bool = False
    rollback_timeout_s: float = 300
    mode: Literal["act", "shadow"] = "act"
    verify_ticks: int = 3  # probes after ROLLBACK_OK that confirm recovery (0: none)
    baseline_interval_s: float = 0  # 0: no baseline is kept
    baseline_keep_s: float = 3600
    baseline_gap_s: float = 60
    latency_increase: float | None = None
    fivexx_increase: float | None = None
    baseline_confidence: float = 0.99
    baseline_min_samples: int | None = None  # None: min_samples

    @property
    def effective_initial_delay_s(self) -> float:
        """`initial_delay_s`, which defaults to the repo's effective `interval_s`."""
        return self.interval_s if self.initial_delay_s is None else self.initial_delay_s

    @property
    def max_ticks(self) -> int:
        """How many ticks a window has: `max(1, floor(window_s / interval_s + 1e-9))`."""
        return max(1, math.floor(self.window_s / self.interval_s + 1e-9))


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Check(_Table):
    name: Annotated[str, Field(pattern=CHECK_NAME_RE)]
    fail_threshold: Annotated[int, Field(ge=1)] | None = None  # default: the repo's
    # default: its fail_threshold (the consecutive rule)
    fail_lookback: Annotated[int, Field(ge=1, le=MAX_LOOKBACK)] | None = None
    timeout_s: PositiveFloat | None = None  # default: the repo's probe_timeout_s
    # Compare the check's number (a Prometheus check's value, an HTTP check's latency) with
    # the baseline's: worse by at least this much relative to the baseline median (0.5:
    # +50 %) and/or by this much absolute (in the number's unit). Unset: not compared.
    baseline_increase: PositiveFloat | None = None
    baseline_min_shift: PositiveFloat | None = None


class HttpCheck(_Check):
    """`[[repos.NAME.checks]]` with `type = "http"` (the default): a request and conditions."""

    type: Literal["http"] = "http"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: UrlPath
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, Annotated[str, Field(pattern=ENV_NAME_RE)]] = Field(
        default_factory=dict
    )  # header name -> environment variable holding its (secret) value
    body: str | None = None
    expect: Conditions = Field(default_factory=lambda: ["status == 200"])
    # The number compared with the baseline (with baseline_increase / baseline_min_shift):
    # the answer's latency, or the number at a JSON path of its body ("$.queue.depth").
    baseline_number: str = "latency_ms"
    # The headers to send, secret values included, read once when the config is loaded.
    _headers: dict[str, str] = PrivateAttr(default_factory=dict)
    _secret_problem: str | None = PrivateAttr(default=None)

    @field_validator("baseline_number")
    @classmethod
    def _number_source(cls, value: str) -> str:
        if value != "latency_ms" and not is_json_path(value):
            raise ValueError(f"{value!r} is neither latency_ms nor a JSON path like $.a.b[0]")
        return value

    @field_validator("headers")
    @classmethod
    def _ascii_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not (name.isascii() and text.isascii()):
                raise ValueError(f"{name!r}: header names and values must be ASCII")
        return value

    @model_validator(mode="after")
    def _read_secrets(self) -> HttpCheck:
        """Read the secret header values now, once per config load (a reload reads them
        again), rather than with blocking I/O on the event loop at every tick. A variable
        unset now makes the check "cannot be judged" until the next reload."""
        headers = dict(self.headers)
        for header, variable in self.headers_env.items():
            value = logs.secret_value(variable)
            if value is None:
                # Our configuration, not the service, is broken: never held against it.
                self._secret_problem = f"environment variable {variable} is not set"
                break
            if not value.isascii():
                self._secret_problem = f"{variable} is not ASCII: it cannot be a header"
                break
            logs.register_secret(value)
            headers[header] = value
        self._headers = headers
        return self

    @property
    def request_headers(self) -> dict[str, str]:
        """The headers to send, secret values included (never log them)."""
        return self._headers

    @property
    def secret_problem(self) -> str | None:
        """Why the check cannot be sent (a secret variable unset when the config was loaded)."""
        return self._secret_problem

    @property
    def conditions(self) -> list[Condition]:
        return [parse_condition(text) for text in self.expect]


class PrometheusCheck(_Check):
    """`type = "prometheus"`: a PromQL query against the operator's Prometheus, bounded."""

    type: Literal["prometheus"]
    url: BaseUrl
    query: Annotated[str, Field(min_length=1)]
    max: float | None = None
    min: float | None = None
    no_data: Literal["ok", "fail"] = "ok"

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


class RepoConfig(WindowOverrides, ProbeOverrides):
    """One `[repos.NAME]` table: the service to watch and how to react."""

    base_url: BaseUrl
    health_path: UrlPath = "/health"
    fivexx_paths: list[str] = Field(default_factory=list)
    self_hosting: bool = False
    rollback_command: Argv | None = None
    rollback_env: dict[str, str] = Field(default_factory=dict)
    checks: list[CheckConfig] = Field(default_factory=list)
    # Something that should always answer (a gateway, a neighbour): when it fails in the same
    # tick as the service, the tick is inconclusive (our own network), never held against it.
    control_url: HttpUrl | None = None
    # The effective probe settings, resolved when the config is loaded (see ProbeSettings).
    _probe: ProbeSettings | None = PrivateAttr(default=None)

    @property
    def resolved_probe(self) -> ProbeSettings | None:
        """The probe settings prepared when the config was loaded, if it was."""
        return self._probe

    def resolve_probe(self) -> ProbeSettings:
        """The probe settings; for a repo validated on its own (not through `parse_config`),
        built from its own keys on the first call (it may read files: not on the event loop).
        Raises ValueError when its TLS files cannot be loaded."""
        if self._probe is None:
            files = TlsFiles(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
            context = build_ssl_context(files) if files.configured else None
            self._probe = ProbeSettings.of(self.health_expect, context)
        return self._probe

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        names = [check.name for check in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique: {', '.join(duplicates)}")
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


class Config(_Table):
    """The whole configuration file."""

    state_dir: Annotated[str, AfterValidator(check_state_dir)]
    enabled: bool = True
    # Finished windows older than this are removed (their whole directory); 0 keeps them.
    retention_days: NonNegativeFloat = 90.0
    defaults: Defaults = Field(default_factory=Defaults)
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
        check_repo_names(value)
        return value

    @property
    def state_path(self) -> Path:
        """`state_dir` as an absolute path (relative to the config file's folder)."""
        return state_path(self.state_dir, self._source)

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


def _tainted(removed: Sequence[tuple[str, ...]], repo: str, keys: Sequence[str]) -> bool:
    """Whether a rule about `repo` that reads `keys` read a value removed as invalid."""
    for path in removed:
        for key in keys:
            for full in (("defaults", key), ("repos", repo, key)):
                if full[: len(path)] == path:
                    return True
    return False


def _effective(config: Config, repo: str, key: str) -> tuple[Any, str]:
    """The effective value of a `[defaults]`/`[repos.NAME]` key and the table it comes from."""
    value = getattr(config.repos[repo], key)
    if value is not None:
        return value, f"repos.{repo}"
    return getattr(config.defaults, key), "defaults"


TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def _cross_key_problems(
    config: Config, removed: Sequence[tuple[str, ...]] = ()
) -> list[tuple[str, str]]:
    """Rules between keys, checked on each repo's merged (effective) settings. A rule that
    would read a key removed as invalid (see `_partial`) is skipped: that key is reported."""
    problems = []
    for name, repo in config.repos.items():
        settings = config.window_settings(name)
        lookback = settings.fail_lookback
        if (
            lookback is not None
            and lookback < settings.fail_threshold
            and not _tainted(removed, name, ("fail_lookback", "fail_threshold"))
        ):
            problems.append(
                (
                    f"repos.{name}.fail_lookback",
                    f"{lookback} is below fail_threshold ({settings.fail_threshold}): "
                    f"{settings.fail_threshold} failures cannot fit in {lookback} probes",
                )
            )
        for i, check in enumerate(repo.checks):
            need = check.fail_threshold or settings.fail_threshold
            if check.fail_lookback is not None and check.fail_lookback < need:
                problems.append(
                    (
                        f"repos.{name}.checks.{i}.fail_lookback",
                        f"{check.fail_lookback} is below the check's fail_threshold ({need})",
                    )
                )
        problems += _baseline_problems(config, name, removed)
        if settings.probe_timeout_s >= settings.interval_s and not _tainted(
            removed, name, ("probe_timeout_s", "interval_s")
        ):
            problems.append(
                (
                    f"repos.{name}.probe_timeout_s",
                    f"{settings.probe_timeout_s:g} must be below interval_s "
                    f"({settings.interval_s:g}), so that a window's probes never overlap",
                )
            )
        if (
            settings.auto_rollback
            and repo.rollback_command is None
            and not repo.self_hosting
            and not _tainted(removed, name, ("auto_rollback", "rollback_command", "self_hosting"))
        ):
            problems.append(
                (f"repos.{name}.rollback_command", "auto_rollback is on but it is unset")
            )
        key_file, key_at = _effective(config, name, "tls_key_file")
        if (
            key_file is not None
            and _effective(config, name, "tls_cert_file")[0] is None
            and not _tainted(removed, name, ("tls_cert_file", "tls_key_file"))
        ):
            problems.append(
                (f"{key_at}.tls_key_file", "is set without tls_cert_file (the key's certificate)")
            )
    return problems


BASELINE_COMPARISONS = ("latency_increase", "fivexx_increase")
CHECK_COMPARISONS = ("baseline_increase", "baseline_min_shift")


def _baseline_problems(
    config: Config, name: str, removed: Sequence[tuple[str, ...]] = ()
) -> list[tuple[str, str]]:
    """The baseline keys of one repo: a comparison set in its own table needs a baseline
    (one set in [defaults] may serve other repos), and the baseline must outlast its gap."""
    settings = config.window_settings(name)
    keys = ("baseline_interval_s", "baseline_keep_s", "baseline_gap_s", *BASELINE_COMPARISONS)
    if _tainted(removed, name, keys):
        return []
    problems = []
    if settings.baseline_interval_s == 0:
        none_kept = "compares with the baseline, but none is kept: set baseline_interval_s above 0"
        for key in BASELINE_COMPARISONS:
            if getattr(config.repos[name], key) is not None:
                problems.append((f"repos.{name}.{key}", none_kept))
        for i, check in enumerate(config.repos[name].checks):
            for key in CHECK_COMPARISONS:
                if getattr(check, key) is not None:
                    problems.append((f"repos.{name}.checks.{i}.{key}", none_kept))
        return problems
    if settings.baseline_keep_s <= settings.baseline_gap_s:
        problems.append(
            (
                f"{_effective(config, name, 'baseline_keep_s')[1]}.baseline_keep_s",
                f"{settings.baseline_keep_s:g} must be above baseline_gap_s "
                f"({settings.baseline_gap_s:g}): no baseline row would be older than the gap",
            )
        )
    if settings.baseline_keep_s < settings.baseline_interval_s:
        problems.append(
            (
                f"{_effective(config, name, 'baseline_keep_s')[1]}.baseline_keep_s",
                f"{settings.baseline_keep_s:g} is below baseline_interval_s "
                f"({settings.baseline_interval_s:g}): not even one row would be kept",
            )
        )
    return problems


def _resolve_probes(
    config: Config, removed: Sequence[tuple[str, ...]] = ()
) -> tuple[dict[str, ProbeSettings], list[tuple[str, str]]]:
    """Each repo's ProbeSettings, and the TLS files that cannot be loaded. Loading them is
    the check; one SSL context is built per distinct (ca, cert, key) triple and shared."""
    built: dict[TlsFiles, ssl.SSLContext | TlsError] = {}
    resolved: dict[str, ProbeSettings] = {}
    problems: list[tuple[str, str]] = []
    for name in config.repos:
        files = TlsFiles(*(_effective(config, name, key)[0] for key in TLS_KEYS))
        context = None
        if files.configured:
            if _tainted(removed, name, TLS_KEYS) or (files.key and not files.cert):
                continue  # reported already
            result = built.get(files)
            if result is None:
                try:
                    result = built[files] = build_ssl_context(files)
                except TlsError as exc:
                    result = built[files] = exc
            if isinstance(result, TlsError):
                problems.append(
                    (f"{_effective(config, name, result.key)[1]}.{result.key}", str(result))
                )
                continue
            context = result
        resolved[name] = ProbeSettings.of(_effective(config, name, "health_expect")[0], context)
    return resolved, problems


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
_UNION_TAGS = {"http", "prometheus", "webhook", "telegram", "slack", "alertmanager", "command"}


def _messages(path: str, errors: list[ErrorDetails]) -> list[str]:
    lines = []
    for item in errors:
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = item.get("ctx", {})
            message = f"type {ctx.get('tag', '?')!r} is not one of {ctx.get('expected_tags', '?')}"
        lines.append(f"{path}: {_dotted(loc)}: {message}")
    return lines


# -- one pass: every problem, even behind a type error ----------------------------------------


def _placeholder(path: tuple[int | str, ...]) -> str | None:
    """A stand-in for a required key that is missing or invalid, so that the rest of its
    table is still checked (no rule between keys reads these two)."""
    if path == ("state_dir",):
        return "."
    if len(path) == 3 and path[0] == "repos" and path[2] == "base_url":
        return "http://placeholder.invalid"
    return None


def _target(data: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The key path in `data` that the error at `loc` is about: the key itself when it holds
    a value or a list, the table holding it when it is missing (a required key) or is not
    a key at all (a union tag). Empty when that is the whole file."""
    if _placeholder(loc[:3]) is not None:
        return tuple(str(part) for part in loc[:3])
    node: Any = data
    path: list[str] = []
    for part in loc:
        if not (isinstance(part, str) and isinstance(node, dict) and part in node):
            break
        path.append(part)
        node = node[part]
        if not isinstance(node, dict):
            break
    return tuple(path)


def _remove(data: dict[str, Any], path: tuple[str, ...]) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    placeholder = _placeholder(path)
    if placeholder is not None:
        node[path[-1]] = placeholder
    else:
        del node[path[-1]]


def _partial(
    raw: dict[str, Any], errors: list[ErrorDetails]
) -> tuple[Config | None, list[tuple[str, ...]]]:
    """The config made of what is valid: what each error is about is removed (see
    `_target`) until the rest validates. The rules between keys are then checked on it
    (skipping those that read a removed key), so a type error never hides them. Also the
    list of removed key paths; None when nothing valid is left to check."""
    data = copy.deepcopy(raw)
    removed: list[tuple[str, ...]] = []
    for _ in range(8):  # each round removes something; nesting is shallow
        round_removed: list[tuple[str, ...]] = []
        for target in sorted({_target(data, tuple(e["loc"])) for e in errors}, key=len):
            if not target:
                return None, removed
            if not any(target[: len(done)] == done for done in round_removed):
                _remove(data, target)
                round_removed.append(target)
        removed += round_removed
        try:
            return Config.model_validate(data), removed
        except ValidationError as exc:
            errors = exc.errors()
    return None, removed


def _finish(
    config: Config, path: str, removed: Sequence[tuple[str, ...]] = ()
) -> tuple[Config, list[str]]:
    """The rules between keys and the probe settings' resolution (TLS files loaded)."""
    problems = _cross_key_problems(config, removed)
    resolved, tls_problems = _resolve_probes(config, removed)
    problems += tls_problems
    for name, settings in resolved.items():
        config.repos[name]._probe = settings
    config._source = Path(path)
    # A problem of [defaults] found through several repos is one line.
    return config, [f"{path}: {key}: {message}" for key, message in dict.fromkeys(problems)]


def _parse(text: str, path: str) -> tuple[Config | None, list[str]]:
    """The config and every problem found. With problems, the config is partial (see
    `_partial`, for warnings) or None."""
    try:
        raw = parse_toml(text, path)
    except ConfigError as exc:
        return None, exc.lines
    try:
        return _finish(Config.model_validate(raw), path)
    except ValidationError as exc:
        errors = exc.errors()
    lines = _messages(path, errors)
    try:
        partial, removed = _partial(raw, errors)
    except RecursionError:  # nested nearly as deep as tomllib allows: report what we have
        return None, lines
    if partial is None:
        return None, lines
    config, more = _finish(partial, path, removed)
    return config, lines + more


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse TOML text into a Config; raises ConfigError with every problem found."""
    config, problems = _parse(text, path)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`; raises ConfigError."""
    return parse_config(read_text(path), str(path))


# -- warnings: valid, but probably not what was meant on this host ----------------------------


def _env_references(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, variable name) of every `*_env` key that names an environment variable
    (`rollback_env` holds values, not names)."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            value = getattr(node, name)
            dotted = f"{key}.{name}" if key else name
            if name.endswith("_env") and name != "rollback_env":
                if isinstance(value, str):
                    yield dotted, value
                elif isinstance(value, dict):
                    for header, variable in value.items():
                        yield f"{dotted}.{header}", variable
            else:
                yield from _env_references(value, dotted)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _env_references(item, f"{key}[{index}]")
    elif isinstance(node, dict):
        for name, item in node.items():
            yield from _env_references(item, f"{key}.{name}")


def program_problem(program: str) -> str | None:
    """Why `program` (an argv[0]) is not an absolute path to an executable file, or None."""
    file = Path(program)
    if not file.is_absolute():
        return f"{program!r} is not an absolute path: the daemon would search its own PATH"
    if not file.exists():
        return f"{program} does not exist"
    if not file.is_file():
        return f"{program} is not a file"
    if not os.access(program, os.X_OK):
        return f"{program} is not executable"
    return None


def config_warnings(
    config: Config, path: str, environ: Mapping[str, str] | None = None
) -> list[str]:
    """`PATH: dotted.key: warning: ...` lines: programs that cannot run as written and
    secret variables that are unset (in `environ`: this process's environment by default)."""
    programs = [
        (f"repos.{name}.rollback_command", repo.rollback_command)
        for name, repo in config.repos.items()
    ]
    programs += [
        (f"alerts[{index}].argv", getattr(sink, "argv", None))
        for index, sink in enumerate(config.alerts)
    ]
    lines = []
    for key, argv in programs:
        problem = program_problem(argv[0]) if argv else None
        if problem is not None:
            lines.append(f"{path}: {key}: warning: {problem}")
    for key, variable in _env_references(config):
        if logs.secret_value(variable, environ) is None:
            lines.append(
                f"{path}: {key}: warning: environment variable {variable} is not set here "
                "(nor a systemd credential of that name)"
            )
    return lines


def check_config_file(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[str], list[str]]:
    """What `postdeploy check-config` reports, in one pass: the config (None when it has
    errors), every error line, and every warning line."""
    try:
        text = read_text(path)
    except ConfigError as exc:
        return None, exc.lines, []
    config, errors = _parse(text, str(path))
    warnings = config_warnings(config, str(path), environ) if config is not None else []
    return (None if errors else config), errors, warnings
