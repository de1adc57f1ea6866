"""Fixtures shared by the I/O edge tests (the HTTP prober and the rollback runner).

These tests talk to real parts only: TCP servers on 127.0.0.1 started inside each test, real
subprocesses and real files. Helpers that need no fixture machinery live in the test modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from postdeploy.probe import Prober


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    """A default Prober, closed (its HTTP clients and pooled connections) after the test."""
    instance = Prober()
    try:
        yield instance
    finally:
        await instance.aclose()
