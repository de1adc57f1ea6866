"""What the daemon's units share: the state directory, the config in force, each work item's
state (`lifecycle.WorkItems`), the task group their tasks run in, and the one report of a
problem with a path. The daemon makes one and hands it to each unit it builds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.abc
import structlog

from postdeploy import layout
from postdeploy.config import Config
from postdeploy.layout import ItemKey
from postdeploy.lifecycle import WorkItems

log = structlog.get_logger("postdeploy.daemon")


@dataclass(eq=False)
class Context:
    root: Path  # the state directory
    config: Config  # in force now: a reload replaces it
    items: WorkItems = field(default_factory=WorkItems)
    windows: anyio.abc.TaskGroup | None = None  # where the units' tasks run, once serving
    closing: bool = False  # set at shutdown: nothing new is taken in or started
    _reported: set[tuple[str, str]] = field(default_factory=set)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` as a task in `windows`; nothing once the daemon is closing."""
        if self.windows is not None and not self.closing:
            self.windows.start_soon(fn, *args)

    def report(self, path: str, problem: str) -> None:
        """A problem with something in the state directory, logged once per daemon life."""
        if (path, problem) not in self._reported:
            self._reported.add((path, problem))
            log.warning("sentinel.ignored", path=path, problem=problem)

    def valid(self, key: ItemKey) -> bool:
        """Whether both of `key`'s names are valid (an invalid one is reported)."""
        if layout.valid_name(key.repo) and layout.valid_name(key.work_item):
            return True
        self.report(str(self.root / key.repo / key.work_item), "invalid name")
        return False
