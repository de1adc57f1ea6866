"""The environment a child process (the daemon, the CLI, a target) starts with.

Every test suite, the benchmarks and the demo start children through `child_env`, so the
filter below is the one place that says what of the test runner's environment a child must not
inherit.
"""

from __future__ import annotations

import os

# What a child does not inherit from the test runner, and why. A test that wants one of these
# passes it explicitly (`child_env({"NOTIFY_SOCKET": ...})`): what it passes is never dropped.
DROPPED_PREFIXES = (
    # The daemon's own settings (`POSTDEPLOY_CONFIG`) and the secrets a config names by
    # variable: a test decides which are set, the developer's shell must not.
    "POSTDEPLOY_",
    # Variables the tests themselves name in configs (`secret_env = "PD_TEST_SET"`) and may set
    # in their own process: a child has one only when the test passes it, so "unset" is unset.
    "PD_",
    # systemd's protocol with the service it started: a runner started by systemd (a CI agent
    # unit) would otherwise have the daemon notify the runner's manager, arm its watchdog,
    # prefix log lines for its journal, take its sockets or read its credentials.
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "JOURNAL_STREAM",
    "LISTEN_",
    "CREDENTIALS_",
    # The chaos suite's knobs (`CHAOS_MODE` from `make chaos`; `CHAOS_CRASH`, ... read by its
    # fault injector): a daemon gets a fault only when a test asks for it.
    "CHAOS_",
    # libfaketime's settings: a clock the runner was started under is not the daemon's.
    "FAKETIME",
)
# A library preloaded into the runner (faketime, a sanitizer, a test's DNS shim) would change
# the daemon's clock, I/O or name lookups.
DROPPED_NAMES = ("LD_PRELOAD",)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: the variables above dropped, output unbuffered,
    then `extra` added.

    `PYTHONPATH` is kept (the child imports the same `postdeploy` as this process); a
    `PYTHONPATH` in `extra` goes in front of it (a fault injector, a patched copy to compare).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_NAMES
    }
    env["PYTHONUNBUFFERED"] = "1"
    extra = dict(extra or {})
    paths = [extra.pop("PYTHONPATH", ""), env.pop("PYTHONPATH", "")]
    if any(paths):
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env
