"""Fixtures for the unit tests of postdeploy's pure core and its small file helpers.

Helpers that build probe rows live in each test module (pytest runs with
--import-mode=importlib, so test modules cannot import each other); only fixtures live here.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    """An empty state directory on the real file system."""
    root = tmp_path / "state"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the state directory, for symlinks to point at."""
    path = tmp_path / "outside"
    path.mkdir()
    return path
