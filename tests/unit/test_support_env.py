"""The test kit's `child_env`: what a child of the test runner inherits and what it does not."""

from __future__ import annotations

import pytest

from support.env import child_env

DROPPED = [
    "POSTDEPLOY_CONFIG",
    "POSTDEPLOY_WEBHOOK_SECRET",
    "PD_TEST_SET",
    "PD_E2E_SECRET",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "CREDENTIALS_DIRECTORY",
    "CHAOS_MODE",
    "CHAOS_CRASH",
    "FAKETIME",
    "LD_PRELOAD",
]


@pytest.mark.parametrize("name", DROPPED)
def test_a_runner_variable_that_changes_the_daemon_is_not_inherited(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "from-the-runner")
    assert name not in child_env()
    # ... and a test that passes it gets it.
    assert child_env({name: "from-the-test"})[name] == "from-the-test"


def test_everything_else_is_inherited_and_output_is_unbuffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME_LIKE", "kept")
    monkeypatch.setenv("PYTHONUNBUFFERED", "0")
    env = child_env({"EXTRA": "1"})
    assert (env["HOME_LIKE"], env["EXTRA"], env["PYTHONUNBUFFERED"]) == ("kept", "1", "1")


@pytest.mark.parametrize(
    ("inherited", "passed", "expected"),
    [
        (None, None, None),
        ("/runner", None, "/runner"),
        (None, "/inject", "/inject"),
        ("/runner", "/inject", "/inject:/runner"),  # the test's path first
    ],
)
def test_pythonpath_is_kept_with_a_passed_one_in_front(
    inherited: str | None,
    passed: str | None,
    expected: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if inherited is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", inherited)
    env = child_env({"PYTHONPATH": passed} if passed is not None else None)
    assert env.get("PYTHONPATH") == expected
