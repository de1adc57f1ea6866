"""`arm` says no when nothing would watch the window, warns when the window will not be
judged, and `cancel` / `show --json` on finished windows; through the real CLI."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Harness


def _cli(pd: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return pd.cli(*args, "--config", str(pd.config_path))


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("arm nowhere w1", "no [repos.nowhere] table"),
        ("arm shop ../w1", "invalid name"),
        ("arm .hidden w1", "invalid name"),
        ("arm shop w1 --meta no-equals", "expected KEY=VALUE"),
        ("arm shop w1 --meta mode=loud", "mode"),
        ("arm shop w1 --timeout 5", "go with --wait"),
    ],
)
def test_arm_refuses_and_writes_nothing(pd: Harness, command: str, needle: str) -> None:
    """`command` (split on spaces) is refused with exit 2, naming the problem."""
    pd.configure()
    pd.state.mkdir()
    result = _cli(pd, *command.split(" "))
    assert result.returncode == 2, result
    assert needle in result.stderr, result.stderr
    assert list(pd.state.iterdir()) == [], "not even a directory may be created"


def test_arm_refuses_a_missing_state_dir(pd: Harness) -> None:
    """From the config or from --state-dir: a state directory that does not exist is not
    created (nothing watches it), exit 2."""
    pd.configure()
    result = _cli(pd, "arm", "shop", "w1")
    assert result.returncode == 2, result
    assert "does not exist" in result.stderr
    assert not pd.state.exists()
    elsewhere = pd.tmp / "typo"
    result = _cli(pd, "arm", "shop", "w1", "--state-dir", str(elsewhere))
    assert result.returncode == 2, result
    assert not elsewhere.exists()


def test_arm_with_the_kill_switch_thrown_warns(pd: Harness) -> None:
    """`enabled = false`: armed anyway (the sentinel is the deploy's record), with a warning;
    `--wait` then reports the DISABLED outcome, exit 3."""
    pd.configure(enabled=False)
    pd.start()
    result = _cli(pd, "arm", "shop", "w1", "--wait")
    assert result.returncode == 3, result.stderr
    assert "kill switch" in result.stderr and "DISABLED" in result.stderr
    assert result.stdout.splitlines()[1].startswith("DISABLED / NONE: ")


def test_arm_on_a_finished_item_warns_and_writes_nothing(pd: Harness) -> None:
    pd.configure()
    run = pd.start()
    pd.arm("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    before = pd.listing(pd.item("shop", "w1"))
    result = _cli(pd, "arm", "shop", "w1", "--meta", "commit=new")
    assert result.returncode == 0, result
    assert "already finished (HEALTHY / NONE)" in result.stderr
    assert pd.listing(pd.item("shop", "w1")) == before
    # With --wait, the existing verdict is the answer, at once.
    again = _cli(pd, "arm", "shop", "w1", "--wait", "--timeout", "0")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1].startswith("HEALTHY / NONE: ")


def test_cancel_on_a_finished_or_rejected_window_says_so(pd: Harness) -> None:
    pd.configure()
    run = pd.start()
    pd.arm("shop", "w1")
    pd.touch_armed("shop", "bad", "not json")
    run.wait_for("window.finished", work_item="w1")
    run.wait_for("sentinel.rejected", work_item="bad")
    for item, needle in (("w1", "already finished (HEALTHY / NONE)"), ("bad", "was rejected")):
        before = pd.listing(pd.item("shop", item))
        result = _cli(pd, "cancel", "shop", item)
        assert result.returncode == 3, result
        assert needle in result.stderr and "nothing written" in result.stderr
        assert pd.listing(pd.item("shop", item)) == before


def test_show_json(pd: Harness) -> None:
    """`show --json`: a finished window (done, window.json, series summary), an open one, and
    a missing one (exit 1)."""
    pd.configure({"shop": pd.repo(), "slow": pd.repo(window_s=60.0)})
    run = pd.start()
    pd.arm("shop", "w1", "commit=abc123")
    pd.arm("slow", "s1", "mode=shadow")
    run.wait_for("window.finished", work_item="w1")
    pd.wait_rows("slow", "s1", 1)

    finished = _cli(pd, "show", "shop", "w1", "--json")
    assert finished.returncode == 0, finished.stderr
    body = json.loads(finished.stdout)
    assert body["state"] == "finished"
    assert body["done"] == pd.done("shop", "w1")
    assert body["window"]["max_ticks"] == 5
    assert body["metadata"] == {"commit": "abc123"}
    rows = pd.rows("shop", "w1")
    series = body["series"]
    assert series["rows"] == series["checks_total"] == len(rows)
    assert series["checks_failed"] == body["done"]["checks_failed"]
    assert set(series["latency_ms"]) == {"min", "median", "max"}

    open_ = json.loads(_cli(pd, "show", "slow", "s1", "--json").stdout)
    assert (open_["state"], open_["done"], open_["mode"]) == ("open", None, "shadow")
    assert open_["series"]["rows"] >= 1

    missing = _cli(pd, "show", "shop", "nope", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["state"] == "missing"
