"""The `[[alerts]]` sink tables and the `[outbox]` table of the config file."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sink(_Table):
    name: str | None = None  # identifies the sink in delivery marks; defaults to type + index
    min_severity: Literal["info", "warning", "critical"] = "warning"


class WebhookSink(_Sink):
    type: Literal["webhook"]
    url: str
    secret_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = 10.0


class TelegramSink(_Sink):
    type: Literal["telegram"]
    bot_token_env: str
    chat_id: str
    api_base: str = "https://api.telegram.org"
    timeout_s: float = 10.0


class AlertmanagerSink(_Sink):
    type: Literal["alertmanager"]
    url: str
    timeout_s: float = 10.0


class CommandSink(_Sink):
    type: Literal["command"]
    argv: list[str]
    timeout_s: float = 30.0


SinkConfig = Annotated[
    WebhookSink | TelegramSink | AlertmanagerSink | CommandSink, Field(discriminator="type")
]


class OutboxSettings(_Table):
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    max_age_s: float = Field(default=86400.0, gt=0)
