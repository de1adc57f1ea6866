"""The `[[alerts]]` sink tables and the `[outbox]` table of the config file.

Secrets never live in the file: a sink names the environment variable that holds each one
(`secret_env`, `bot_token_env`, `url_env`, `headers_env`), and the outbox reads it when it
builds the sink.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from postdeploy.alerts.template import check_template
from postdeploy.urls import check_http_url

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SINK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# RFC 9110 token characters: what a header name may hold.
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
LABEL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Headers the webhook sink sets itself; a config may not override them.
RESERVED_HEADERS = frozenset(
    {"content-length", "host", "idempotency-key", "x-postdeploy-signature", "transfer-encoding"}
)
# Labels the alertmanager sink sets itself.
RESERVED_LABELS = frozenset({"alertname", "repo", "work_item", "kind", "severity"})


def _http_url(value: str) -> str:
    return check_http_url(value).rstrip("/")


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an environment variable name (must match {ENV_NAME_RE.pattern})"
        )
    return value


def _sink_name(value: str) -> str:
    if not SINK_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} must match {SINK_NAME_RE.pattern}")
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name!r} is set by postdeploy itself and cannot be overridden")
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name!r} must not contain CR, LF or NUL")
    return value


def _headers_env(value: dict[str, str]) -> dict[str, str]:
    _headers(dict.fromkeys(value, ""))
    for env in value.values():
        _env_name(env)
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not LABEL_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid label name")
        if name in RESERVED_LABELS:
            raise ValueError(f"{name!r} is set by postdeploy itself")
    return value


def _argv(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise ValueError("must name a program: a non-empty list of strings")
    return argv


def _chat_id(value: Any) -> Any:
    # Telegram chat ids are numbers; TOML users may write them without quotes.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Timeout = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
Headers = Annotated[dict[str, str], AfterValidator(_headers)]
HeadersEnv = Annotated[dict[str, str], AfterValidator(_headers_env)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Sink(_Table):
    # Identifies the sink in delivery marks; defaults to `<type>-<index>`. Name your sinks:
    # reordering `[[alerts]]` changes the default names, and with them the delivery marks.
    name: Annotated[str, AfterValidator(_sink_name)] | None = None
    min_severity: Literal["info", "warning", "critical"] = "warning"


class _UrlSink(_Sink):
    """A sink that posts to one URL, given in the file (`url`) or by the environment
    variable holding it (`url_env`: a URL with a token in it is a secret)."""

    url: HttpUrl | None = None
    url_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_url(self) -> _UrlSink:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url and url_env")
        return self


class WebhookSink(_UrlSink):
    """A JSON POST of the event (or of `body`, a template) to `url`."""

    type: Literal["webhook"]
    secret_env: EnvName | None = None  # HMAC-SHA256 key for X-Postdeploy-Signature
    headers: Headers = Field(default_factory=dict)  # literal values: never put secrets here
    headers_env: HeadersEnv = Field(default_factory=dict)  # header name -> env var holding it
    # A JSON body template (a TOML table); its strings may hold `{placeholder}`s (see
    # template.py). Without it the body is the event itself.
    body: Annotated[dict[str, Any], AfterValidator(check_template)] | None = None
    timeout_s: Timeout = 10.0


class TelegramSink(_Sink):
    """A message through the Telegram Bot API's `sendMessage`."""

    type: Literal["telegram"]
    bot_token_env: EnvName
    chat_id: Annotated[str, BeforeValidator(_chat_id), AfterValidator(_non_empty)]
    api_base: HttpUrl = "https://api.telegram.org"
    timeout_s: Timeout = 10.0


class SlackSink(_UrlSink):
    """A Block Kit message through a Slack incoming webhook (`url_env`: its URL is the
    credential, so prefer the environment or a systemd credential to `url`)."""

    type: Literal["slack"]
    # Where people reach this daemon's pages (the `[metrics] listen` address, or the proxy in
    # front of it): each message links to `<public_url>/w/REPO/ITEM`. Unset: no link.
    public_url: HttpUrl | None = None
    timeout_s: Timeout = 10.0


class AlertmanagerSink(_Sink):
    """An alert posted to Alertmanager's `<url>/api/v2/alerts`."""

    type: Literal["alertmanager"]
    url: HttpUrl
    labels: Annotated[dict[str, str], AfterValidator(_labels)] = Field(default_factory=dict)
    headers: Headers = Field(default_factory=dict)
    headers_env: HeadersEnv = Field(default_factory=dict)
    timeout_s: Timeout = 10.0


class CommandSink(_Sink):
    """A program run with the event JSON on stdin; exit 0 means delivered."""

    type: Literal["command"]
    argv: Annotated[list[str], AfterValidator(_argv)]
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: Timeout = 30.0


SinkConfig = Annotated[
    WebhookSink | TelegramSink | SlackSink | AlertmanagerSink | CommandSink,
    Field(discriminator="type"),
]
AnySink = WebhookSink | TelegramSink | SlackSink | AlertmanagerSink | CommandSink


def sink_names(sinks: Sequence[AnySink]) -> list[str]:
    """Each sink's name: its `name`, or `<type>-<index>` (its place in `[[alerts]]`)."""
    return [s.name or f"{s.type}-{i}" for i, s in enumerate(sinks)]


def _unique_names(sinks: list[AnySink]) -> list[AnySink]:
    seen: set[str] = set()
    for name in sink_names(sinks):
        if name in seen:
            raise ValueError(f"two sinks are named {name!r}; give each a distinct name")
        seen.add(name)
    return sinks


# The `alerts` list with its cross-sink rule (unique names); config.py may use this type.
Sinks = Annotated[list[SinkConfig], AfterValidator(_unique_names)]


class OutboxSettings(_Table):
    retry_initial_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    retry_max_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    # An event still undelivered to a sink this long after it was emitted is given up on for
    # that sink: logged as an error once and kept on disk.
    max_age_s: float = Field(default=86400.0, gt=0, allow_inf_nan=False)
    # Delivered events stay in `.outbox/delivered/` this long (emit stays idempotent meanwhile).
    keep_delivered_s: float = Field(default=7 * 86400.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> OutboxSettings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"retry_max_s ({self.retry_max_s:g}) must not be below "
                f"retry_initial_s ({self.retry_initial_s:g})"
            )
        return self
