"""Fixtures every test directory may use (helpers, which need no fixture machinery, are in
`support/`).

- `service`: the watched service of the end-to-end suites, the package's `DemoService` (the
  one `postdeploy demo` watches). `tests/checks` overrides it with a scripted
  `support.http.Service`.
- `prober`: a default `Prober`, closed after the test.
- `transport`: a `LeanTransport` whose idle connections never expire (only a test's server
  or the transport's own checks close them), closed after the test.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from postdeploy.demo_service import DemoService
from postdeploy.probe import Prober
from postdeploy.transport import LeanTransport

NO_EXPIRY_S = 3600.0  # keep-alive expiry: never what closes a connection in a test


@pytest.fixture
def service() -> Iterator[DemoService]:
    """The watched service: healthy until a test says otherwise."""
    svc = DemoService().start()
    yield svc
    # shutdown() waits for the server loop's next poll (up to 0.5 s): let it happen aside.
    threading.Thread(target=svc.stop, daemon=True).start()


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    """A default Prober, closed (its HTTP clients and pooled connections) after the test."""
    instance = Prober()
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
async def transport() -> AsyncIterator[LeanTransport]:
    """A LeanTransport whose idle connections never expire, closed after the test."""
    instance = LeanTransport(keepalive_expiry=NO_EXPIRY_S)
    try:
        yield instance
    finally:
        await instance.aclose()
