"""The daemon process harness: the package's (`postdeploy.testing.daemon`, which the demo uses
too), under the kit's name."""

from postdeploy.testing.daemon import (
    UNHANDLED_EVENTS,
    DaemonPool,
    DaemonProcess,
    matches,
    run_argv,
)

__all__ = ["UNHANDLED_EVENTS", "DaemonPool", "DaemonProcess", "matches", "run_argv"]
