"""The sinks: one delivery attempt of one event, reported as a `Result`, never raised.

Each sink reads its secrets from the environment once, when it is built, and registers them
with the log masking. A missing secret does not stop the daemon: the sink is built with a
`problem`, delivers nothing, and its deliveries wait on disk (see the outbox).

HTTP sinks keep a client of their own, so a hanging receiver can only hold its own
connections. Redirects are never followed: a 3xx is a failed delivery, like any non-2xx.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import anyio
import httpx

from postdeploy import __version__, logs
from postdeploy.alerts.config import (
    AlertmanagerSink,
    AnySink,
    CommandSink,
    SlackSink,
    TelegramSink,
    WebhookSink,
)
from postdeploy.alerts.format import (
    alertmanager_alert,
    format_telegram,
    slack_message,
    template_values,
)
from postdeploy.alerts.template import render_template
from postdeploy.errors import error_text
from postdeploy.process import KILL_GRACE_S, CappedOutput, run_in_group
from postdeploy.text import clip

SIGNATURE_HEADER = "X-Postdeploy-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = f"postdeploy/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class Result:
    """One delivery attempt: `ok`, a short `detail`, and a `retry_after` the receiver asked for."""

    ok: bool
    detail: str
    retry_after: float | None = None


def dump_event(event: Mapping[str, Any]) -> bytes:
    """The exact bytes a sink sends for an event (stable: same event, same bytes)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    """The `X-Postdeploy-Signature` value: `sha256=<hex HMAC-SHA256 of body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


class MissingSecret(Exception):
    """An environment variable a sink needs is not set (the message names it, not a value)."""


def read_secret(env: Mapping[str, str], name: str) -> str:
    """The secret `name` (an environment variable, else the systemd credential of that name),
    registered with the log masking."""
    value = logs.secret_value(name, env)
    if not value:
        raise MissingSecret(
            f"environment variable {name} is not set or empty (nor a systemd credential {name})"
        )
    logs.register_secret(value)
    return value


class Sink:
    """One configured sink. `deliver` makes one attempt and reports it; it never raises."""

    def __init__(self, name: str, config: AnySink) -> None:
        self.name = name
        self.config = config
        self.problem: str | None = None  # why this sink cannot deliver at all, e.g. no secret

    @property
    def attempt_timeout_s(self) -> float:
        """The hard bound on one attempt (the outbox enforces it)."""
        return self.config.timeout_s + 1.0

    def describe(self) -> dict[str, Any]:
        """What identifies the sink in log lines (never a secret)."""
        return {"sink": self.name, "sink_type": self.config.type}

    async def deliver(self, event: dict[str, Any]) -> Result:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the sink holds (connections)."""


class _HttpSink(Sink):
    def __init__(self, name: str, config: AnySink) -> None:
        super().__init__(name, config)
        self._client: httpx.AsyncClient | None = None
        self._secrets: list[str] = []

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout_s),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._client

    async def post(self, url: str, body: bytes, headers: httpx.Headers) -> tuple[int, str, bytes]:
        """POST and read at most MAX_RESPONSE_BYTES of the answer: (code, Retry-After, body)."""
        async with self.client().stream("POST", url, content=body, headers=headers) as response:
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= MAX_RESPONSE_BYTES:
                    break
            return (
                response.status_code,
                response.headers.get("Retry-After", ""),
                bytes(data[:MAX_RESPONSE_BYTES]),
            )

    async def attempt(self, url: str, body: bytes, headers: httpx.Headers) -> Result:
        try:
            code, retry_after, answer = await self.post(url, body, headers)
        except (httpx.HTTPError, OSError) as exc:
            return Result(False, self._redact(error_text(exc)))
        if 200 <= code < 300:
            return Result(True, f"HTTP {code}")
        text = clip(answer.decode("utf-8", errors="replace"), 200, fold=True)
        retry = parse_retry_after(retry_after, dt.datetime.now(dt.UTC).timestamp())
        return Result(False, self._redact(f"HTTP {code}: {text}"), retry)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _headers(config: WebhookSink | AlertmanagerSink, env: Mapping[str, str]) -> dict[str, str]:
    headers = dict(config.headers)
    for header, variable in config.headers_env.items():
        headers[header] = read_secret(env, variable)
    return headers


def origin(url: str) -> str:
    """`scheme://host:port` of `url`: what log lines show (a path or query may hold a secret)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid url)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def sink_url(config: WebhookSink | SlackSink, env: Mapping[str, str]) -> str:
    """The URL a sink posts to: `url`, or the http(s) URL held by `url_env` (a secret,
    registered with the log masking); MissingSecret if the variable does not hold one."""
    if not config.url_env:
        return config.url or ""
    url = read_secret(env, config.url_env).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise MissingSecret(f"environment variable {config.url_env} does not hold an http(s) URL")
    return url


class WebhookSender(_HttpSink):
    config: WebhookSink

    def __init__(self, name: str, config: WebhookSink, env: Mapping[str, str]) -> None:
        super().__init__(name, config)
        self.url = ""
        self._secret: str | None = None
        self._headers: dict[str, str] = {}
        try:
            self.url = sink_url(config, env)
            if config.secret_env:
                self._secret = read_secret(env, config.secret_env)
            self._headers = _headers(config, env)
        except MissingSecret as exc:
            self.problem = str(exc)
        secret_url = self.url if config.url_env else None
        self._secrets = [s for s in (self._secret, secret_url, *self._headers.values()) if s]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "to": origin(self.url) if self.url else None}

    def body(self, event: dict[str, Any]) -> bytes:
        if self.config.body is None:
            return dump_event(event)
        return dump_event(render_template(self.config.body, template_values(event)))

    async def deliver(self, event: dict[str, Any]) -> Result:
        try:
            body = self.body(event)
        except (KeyError, ValueError, TypeError) as exc:
            return Result(False, f"body template failed: {type(exc).__name__}: {exc}")
        headers = httpx.Headers({"Content-Type": "application/json"})
        headers.update(self._headers)
        headers[IDEMPOTENCY_HEADER] = str(event.get("id", ""))
        headers["X-Postdeploy-Event"] = str(event.get("kind", ""))
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        return await self.attempt(self.url, body, headers)


class TelegramSender(_HttpSink):
    config: TelegramSink

    def __init__(self, name: str, config: TelegramSink, env: Mapping[str, str]) -> None:
        super().__init__(name, config)
        self._token = ""
        try:
            self._token = read_secret(env, config.bot_token_env)
        except MissingSecret as exc:
            self.problem = str(exc)
        self._secrets = [self._token] if self._token else []

    def describe(self) -> dict[str, Any]:
        # Never the URL: it holds the bot token.
        return {
            **super().describe(),
            "to": origin(self.config.api_base),
            "chat_id": self.config.chat_id,
        }

    async def deliver(self, event: dict[str, Any]) -> Result:
        payload = {
            "chat_id": self.config.chat_id,
            "text": format_telegram(event),
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
            "disable_notification": event.get("severity") == "info",
        }
        url = f"{self.config.api_base}/bot{self._token}/sendMessage"
        headers = httpx.Headers({"Content-Type": "application/json"})
        try:
            code, retry_header, answer = await self.post(url, dump_event(payload), headers)
        except (httpx.HTTPError, OSError) as exc:
            return Result(False, self._redact(error_text(exc)))
        try:
            reply = json.loads(answer)
        except (json.JSONDecodeError, UnicodeDecodeError):
            reply = None
        reply = reply if isinstance(reply, dict) else {}
        if code == 200 and reply.get("ok") is True:
            return Result(True, "HTTP 200")
        retry = parse_retry_after(retry_header, dt.datetime.now(dt.UTC).timestamp())
        parameters = reply.get("parameters")
        if isinstance(parameters, dict):
            value = parameters.get("retry_after")
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                retry = min(float(value), MAX_RETRY_AFTER_S)
        description = clip(
            str(reply.get("description") or answer.decode(errors="replace")), 200, fold=True
        )
        return Result(False, self._redact(f"HTTP {code}: {description}"), retry)


class SlackSender(_HttpSink):
    """A Block Kit message posted to a Slack incoming webhook. Slack answers 200 `ok`, or an
    error code with a short text (`invalid_blocks`, `no_service`, ...), or 429 with
    Retry-After: the shared HTTP attempt reports each, and the outbox retries."""

    config: SlackSink

    def __init__(self, name: str, config: SlackSink, env: Mapping[str, str]) -> None:
        super().__init__(name, config)
        self.url = ""
        try:
            self.url = sink_url(config, env)
        except MissingSecret as exc:
            self.problem = str(exc)
        # The webhook's URL is its credential, written in the file or not: masked in logs.
        if self.url:
            logs.register_secret(self.url)
        self._secrets = [self.url] if self.url else []

    def describe(self) -> dict[str, Any]:
        # Never the URL: its path is the token.
        return {**super().describe(), "to": origin(self.url) if self.url else None}

    async def deliver(self, event: dict[str, Any]) -> Result:
        body = dump_event(slack_message(event, self.config.public_url))
        headers = httpx.Headers({"Content-Type": "application/json"})
        return await self.attempt(self.url, body, headers)


class AlertmanagerSender(_HttpSink):
    config: AlertmanagerSink

    def __init__(self, name: str, config: AlertmanagerSink, env: Mapping[str, str]) -> None:
        super().__init__(name, config)
        self._headers: dict[str, str] = {}
        try:
            self._headers = _headers(config, env)
        except MissingSecret as exc:
            self.problem = str(exc)
        self._secrets = list(self._headers.values())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "to": origin(self.config.url)}

    async def deliver(self, event: dict[str, Any]) -> Result:
        body = dump_event_list([alertmanager_alert(event, self.config.labels)])
        headers = httpx.Headers({"Content-Type": "application/json"})
        headers.update(self._headers)
        return await self.attempt(f"{self.config.url}/api/v2/alerts", body, headers)


def dump_event_list(items: list[dict[str, Any]]) -> bytes:
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()


def _tempfile(data: bytes) -> IO[bytes]:
    """An unnamed temporary file holding `data`, the command's stdin. A file rather than a
    pipe: a command that never reads its stdin can then never block the daemon."""
    stdin = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the caller)
    stdin.write(data)
    stdin.flush()
    stdin.seek(0)
    return stdin


class CommandSender(Sink):
    config: CommandSink

    def __init__(self, name: str, config: CommandSink, env: Mapping[str, str]) -> None:
        super().__init__(name, config)
        self._env = dict(env)

    @property
    def attempt_timeout_s(self) -> float:
        return self.config.timeout_s + KILL_GRACE_S + 5.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "argv0": self.config.argv[0]}

    def environment(self, event: dict[str, Any]) -> dict[str, str]:
        env = {**self._env, **self.config.env}
        for key in ("id", "kind", "severity", "repo", "work_item"):
            prefix = "POSTDEPLOY_EVENT_" if key in ("id", "kind", "severity") else "POSTDEPLOY_"
            env[prefix + key.upper()] = str(event.get(key, ""))
        return env

    async def deliver(self, event: dict[str, Any]) -> Result:
        data = dump_event(event) + b"\n"
        stdin = await anyio.to_thread.run_sync(_tempfile, data)
        try:
            output = CappedOutput(limit=4096)
            finished = await run_in_group(
                self.config.argv,
                self.environment(event),
                self.config.timeout_s,
                output=output,
                stdin=stdin,
            )
        finally:
            stdin.close()
        if finished.exit_code == 0:
            return Result(True, "exit 0")
        text = clip(output.last_text(400), 400, fold=True)
        return Result(False, finished.detail + (f": {text}" if text else ""))


def build_sink(name: str, config: AnySink, env: Mapping[str, str]) -> Sink:
    """The sink for one `[[alerts]]` table; secrets are read from `env` now."""
    if isinstance(config, WebhookSink):
        return WebhookSender(name, config, env)
    if isinstance(config, TelegramSink):
        return TelegramSender(name, config, env)
    if isinstance(config, SlackSink):
        return SlackSender(name, config, env)
    if isinstance(config, AlertmanagerSink):
        return AlertmanagerSender(name, config, env)
    return CommandSender(name, config, env)
