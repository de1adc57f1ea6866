"""`child_env`: the package's (`postdeploy.testing.env`, which the demo uses too), under the
kit's name."""

from postdeploy.testing.env import DROPPED_NAMES, DROPPED_PREFIXES, child_env

__all__ = ["DROPPED_NAMES", "DROPPED_PREFIXES", "child_env"]
