"""A test's own daemon workspace: the base of the end-to-end (`tests/e2e`) and operations
(`tests/ops`) harnesses.

It holds the test's directory, the target service, where the state directory and the config
file go (`state` and `config.toml` in the test's directory), the pool of daemons the test
starts, and reads a window's directory and series from the state directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from postdeploy.demo_service import DemoService
from support.daemon import DaemonPool
from support.files import read_jsonl


class Workspace:
    """One test's directory, target service, config path, state directory and daemons."""

    def __init__(self, tmp_path: Path, service: DemoService, daemons: DaemonPool) -> None:
        self.tmp = tmp_path
        self.service = service
        self.state = tmp_path / "state"
        self.config_path = tmp_path / "config.toml"
        self.daemons = daemons

    def item(self, repo: str, work_item: str) -> Path:
        """A window's directory in the state directory."""
        return self.state / repo / work_item

    def rows(self, repo: str, work_item: str) -> list[dict[str, Any]]:
        """The window's `series.jsonl` rows ([] before the first)."""
        return read_jsonl(self.item(repo, work_item) / "series.jsonl")
