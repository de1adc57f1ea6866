"""`wait_until` and the kit's deadline: the package's (`postdeploy.testing.wait`, which the demo
uses too), under the kit's name."""

from postdeploy.testing.wait import DEADLINE_S, POLL_S, WaitTimeout, Watched, wait_until

__all__ = ["DEADLINE_S", "POLL_S", "WaitTimeout", "Watched", "wait_until"]
