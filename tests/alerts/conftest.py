"""Helpers for the alert tests: real HTTP receivers on 127.0.0.1, events, waiting on events.

Test modules get them through the `kit` fixture (pytest runs with --import-mode=importlib, so
test files do not import this module by name). The receiver (`support.http.Receiver`: a
`responder(request) -> (code, headers, body)` or `HANG`; `listening=False` until `up()`) and
the blocking `wait_until` are the shared kit's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from postdeploy.alerts import Outbox
from postdeploy.alerts.config import OutboxSettings
from postdeploy.events import Event
from postdeploy.layout import ItemKey
from support.http import HANG, Receiver, ok
from support.wait import wait_until

DEADLINE_S = 20.0


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Make receivers; every one is stopped at the end of the test."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()


def event(
    kind: str = "window.degraded",
    *,
    repo: str = "shop",
    work_item: str = "release-1",
    reason: str = "health failed 3 consecutive probes (threshold 3); last: HTTP 503",
    seq: str = "",
    metadata: dict[str, str] | None = None,
) -> Event:
    return Event(
        kind=kind,
        key=ItemKey(repo, work_item),
        reason=reason,
        at=1795763584.0,
        status="DEGRADED" if kind == "window.degraded" else "",
        action_taken="",
        evidence={
            "health_streak": 3,
            "fail_threshold": 3,
            "fivexx": 0,
            "fivexx_total": 0,
            "fivexx_ratio": 0.0,
            "fivexx_threshold": 0.2,
            "last_probes": [
                {"tick": 2, "health_ok": False, "health_code": 503, "fivexx": 0, "detail": "x"}
            ],
        },
        metadata=metadata if metadata is not None else {"commit": "9ab03d1", "image": "shop:42"},
        seq=seq,
    )


def settings(**overrides: float) -> OutboxSettings:
    values: dict[str, float] = {"retry_initial_s": 0.05, "retry_max_s": 0.2, "max_age_s": 60.0}
    values.update(overrides)
    return OutboxSettings.model_validate(values)


def sinks(*tables: dict[str, Any]) -> list[Any]:
    """Sink configs, validated the way the config file's `[[alerts]]` tables are."""
    from pydantic import TypeAdapter

    from postdeploy.alerts.config import Sinks

    return TypeAdapter(Sinks).validate_python(list(tables))


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll `predicate` until it is true; fail the test with `what` at the deadline."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[Outbox]:
    """Run `outbox` for the body of the `async with` (opened inside the test)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.run)
        try:
            yield outbox
        finally:
            tg.cancel_scope.cancel()


def logged(logs: list[dict[str, Any]], name: str, **fields: Any) -> list[dict[str, Any]]:
    """The captured log entries called `name` whose fields include `fields`."""
    return [
        e for e in logs if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def outbox_dir(root: Path) -> Path:
    return root / ".outbox"


class Kit:
    """The helpers above, for test functions (the `kit` fixture)."""

    Receiver = Receiver
    HANG = HANG
    DEADLINE_S = DEADLINE_S
    event = staticmethod(event)
    settings = staticmethod(settings)
    sinks = staticmethod(sinks)
    wait_for = staticmethod(wait_for)
    wait_until = staticmethod(wait_until)
    running = staticmethod(running)
    logged = staticmethod(logged)
    outbox_dir = staticmethod(outbox_dir)
    ok = staticmethod(ok)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
