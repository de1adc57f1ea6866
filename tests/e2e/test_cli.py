"""The command line around the daemon: config validation, `status --json`, and the log lines."""

from __future__ import annotations

import json
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Harness

VALID = """\
state_dir = "state"

[defaults]
window_s = 1.0
interval_s = 0.2
probe_timeout_s = 0.1

[repos.shop]
base_url = "http://127.0.0.1:9"
"""

# (name, config text or None for a missing file, dotted keys that must be reported)
BROKEN = [
    ("unknown-key", VALID.replace("window_s = 1.0", "windw_s = 1.0"), ["defaults.windw_s"]),
    (
        "unknown-repo-key",
        VALID.replace("base_url", "bse_url"),
        ["repos.shop.bse_url", "repos.shop.base_url"],
    ),
    ("bad-type", VALID.replace("interval_s = 0.2", 'interval_s = "fast"'), ["defaults.interval_s"]),
    ("toml-syntax", VALID.replace('"state"', '"state'), []),
    ("missing-file", None, []),
    ("state-dir-type", VALID.replace('state_dir = "state"', "state_dir = 3"), ["state_dir"]),
    ("repo-name", VALID.replace("[repos.shop]", '[repos."sh op"]'), ["repos"]),
    ("repos-not-a-table", 'state_dir = "state"\nrepos = ["shop"]\n', ["repos"]),
]
# The cases above that `arm` (and `wait`, `cancel`, `rollback`) must refuse: they break the
# keys it reads (the file itself, `state_dir`, `repos`). In the others, only keys it does
# not read are broken.
ARM_REFUSES = {"toml-syntax", "missing-file", "state-dir-type", "repo-name", "repos-not-a-table"}


def problem_lines(path: str, stderr: str) -> list[tuple[str, str]]:
    """Parse `PATH: dotted.key: message` lines; every non-empty line must have that form."""
    pattern = re.compile(rf"^{re.escape(path)}: (\S[^:]*): (\S.*)$")
    found = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        match = pattern.match(line)
        assert match, f"not a `PATH: dotted.key: message` line: {line!r}"
        found.append((match[1], match[2]))
    assert found, "no problem reported"
    return found


@pytest.mark.parametrize(("name", "text", "keys"), BROKEN, ids=[case[0] for case in BROKEN])
def test_check_config_reports_every_problem_and_exits_2(
    pd: Harness, name: str, text: str | None, keys: list[str]
) -> None:
    """`check-config` on a broken file: exit 2, one `PATH: dotted.key: message` per problem."""
    path = pd.tmp / f"{name}.toml"
    if text is not None:
        path.write_text(text)
    result = pd.cli("check-config", str(path))
    assert result.returncode == 2, result
    reported = [key for key, _message in problem_lines(str(path), result.stderr)]
    for key in keys:
        assert key in reported, result.stderr


@pytest.mark.parametrize(("name", "text", "keys"), BROKEN, ids=[case[0] for case in BROKEN])
def test_arm_reads_only_the_keys_it_needs(
    pd: Harness, name: str, text: str | None, keys: list[str]
) -> None:
    """`arm` reads the state directory and the repo names, not the whole config: a file
    broken there is refused with the lines `check-config` prints (exit 2, nothing written);
    a file broken only elsewhere is armed, and left to the daemon (which refuses to start
    on it, or keeps its running config on a reload) and to `check-config`."""
    path = pd.tmp / f"{name}.toml"
    if text is not None:
        path.write_text(text)
    pd.state.mkdir()
    checked = pd.cli("check-config", str(path))
    armed = pd.cli("arm", "shop", "w1", "--config", str(path))
    if name in ARM_REFUSES:
        assert armed.returncode == 2, armed
        assert armed.stderr == checked.stderr
        assert list(pd.state.iterdir()) == []
    else:
        assert armed.returncode == 0, armed.stderr
        assert armed.stdout.strip() == str(pd.item("shop", "w1") / "armed")
        assert checked.returncode == 2


def test_check_config_accepts_a_valid_file(pd: Harness) -> None:
    path = pd.tmp / "good.toml"
    path.write_text(VALID)
    result = pd.cli("check-config", str(path))
    assert result.returncode == 0, result.stderr


def test_run_with_an_invalid_config_exits_2(pd: Harness) -> None:
    """`postdeploy run` refuses a broken config the same way, before touching the state dir."""
    path = pd.tmp / "bad.toml"
    path.write_text(VALID.replace("window_s = 1.0", "windw_s = 1.0"))
    try:
        result = pd.cli("run", "--config", str(path))
    except subprocess.TimeoutExpired:
        pytest.fail("`postdeploy run` with an invalid config did not exit")
    assert result.returncode == 2, result
    assert "defaults.windw_s" in [key for key, _ in problem_lines(str(path), result.stderr)]
    assert not (pd.tmp / "state").exists()


def test_status_json_shows_open_and_finished_windows(pd: Harness) -> None:
    """`status --json` while one window is open and one has finished."""
    pd.configure(
        {
            "fast": pd.repo(window_s=1.0),
            "slow": pd.repo(window_s=30.0, interval_s=0.5, probe_timeout_s=0.4),
        }
    )
    run = pd.start()
    pd.touch_armed("fast", "f1")
    run.wait_for("window.finished", work_item="f1")
    pd.arm("slow", "s1", "commit=abc123")
    pd.wait_rows("slow", "s1", 1)

    result = pd.cli("status", "--json", "--config", str(pd.config_path))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["enabled"] is True
    assert status["active_count"] == len(status["active"]) == 1
    active = status["active"][0]
    assert (active["repo"], active["work_item"]) == ("slow", "s1")
    assert isinstance(active["armed_at"], int | float)
    assert isinstance(active["ticks"], int) and active["ticks"] >= 1
    assert active["max_ticks"] == 60
    assert active["checks_failed"] == 0

    recent = [r for r in status["recent"] if r["work_item"] == "f1"]
    assert len(recent) == 1
    assert recent[0]["repo"] == "fast"
    assert (recent[0]["status"], recent[0]["action_taken"]) == ("HEALTHY", "NONE")
    assert isinstance(recent[0]["finished_at"], str) and recent[0]["finished_at"]
    assert all(r["work_item"] != "s1" for r in status["recent"])


def test_every_log_line_about_a_window_carries_repo_and_work_item(pd: Harness) -> None:
    """Across a rollback, a rejection and a cancel (at debug level), no line about a window
    lacks `repo` or `work_item`."""
    pd.configure(
        {
            "shop": pd.repo(
                auto_rollback=True, rollback_command=pd.hook("ok"), window_s=5.0, fail_threshold=2
            ),
            "blog": pd.repo(window_s=5.0, fail_threshold=100),
        },
        log_level="debug",
    )
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1", '{"commit": "abc123"}')
    pd.touch_armed("blog", "b1")
    pd.touch_armed("shop", "bad", "[1, 2]\n")
    pd.wait_rows("blog", "b1", 1)
    assert pd.cli("cancel", "blog", "b1", "--config", str(pd.config_path)).returncode == 0

    run.wait_for("window.finished", work_item="w1")
    run.wait_for("window.finished", work_item="b1")
    run.wait_for("sentinel.rejected", work_item="bad")
    assert run.stop() == 0

    # Not vacuous: the lines that should be checked are there.
    events = {line.get("event") for line in run.lines}
    assert {"window.armed", "window.finished", "sentinel.rejected"} <= events
    assert any(str(event).startswith("rollback.") for event in events)
    missing = pd.lines_missing_ids(run.lines)
    assert missing == [], "\n".join(json.dumps(line) for line in missing)


def test_config_defaults_to_postdeploy_config_env(pd: Harness) -> None:
    """Without --config, commands read $POSTDEPLOY_CONFIG."""
    config = pd.configure()
    env = {"POSTDEPLOY_CONFIG": str(config)}
    pd.state.mkdir()
    armed = pd.cli("arm", "shop", "w1", env=env)
    assert armed.returncode == 0, armed.stderr
    assert (pd.item("shop", "w1") / "armed").is_file()
    status = pd.cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert [a["work_item"] for a in json.loads(status.stdout)["active"]] == ["w1"]
    assert pd.cli("check-config", env=env).returncode == 0
