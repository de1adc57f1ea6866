"""A person's rollback through the real daemon: a finished ALERT_ONLY window, an open window
(on a self-hosting repo too), a second request refused, a request made while the daemon was
down, and a request for a HEALTHY window refused.

Every request goes through the real command line (`postdeploy rollback`), which writes the
request, notifies the daemon and waits for its answer: exit 0 ROLLBACK_OK, 3 refused.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e.conftest import Harness


def ask(
    pd: Harness, repo: str, item: str, reason: str, who: str = "alice", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`postdeploy rollback REPO ITEM --reason TEXT` as `who` (through $SUDO_USER)."""
    return pd.cli(
        "rollback",
        repo,
        item,
        "--reason",
        reason,
        "--timeout",
        str(timeout),
        "--config",
        str(pd.config_path),
        env={"SUDO_USER": who},
    )


def wait_answer(pd: Harness, repo: str, item: str) -> dict[str, Any]:
    """The daemon's answer: {"refused": reason} or done's `manual_rollback`."""
    directory = pd.item(repo, item)

    def answered() -> bool:
        if (directory / "rollback.refused").exists():
            return True
        done = directory / "done"
        return done.exists() and "manual_rollback" in json.loads(done.read_text())

    pd.wait_until("the answer to the rollback request", answered)
    if (directory / "rollback.refused").exists():
        return {"refused": (directory / "rollback.refused").read_text().strip()}
    manual: dict[str, Any] = pd.done(repo, item)["manual_rollback"]
    return manual


def test_finished_alert_only_window_is_rolled_back_once_on_request(pd: Harness) -> None:
    pd.configure({"shop": pd.repo(auto_rollback=False, rollback_command=pd.hook("ok"))})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    assert pd.done("shop", "w1")["action_taken"] == "ALERT_ONLY"
    assert pd.hook_calls() == []
    result = ask(pd, "shop", "w1", "checkout is broken", who="alice")
    assert result.returncode == 0, result.stderr
    assert "ROLLBACK_OK" in result.stdout
    answer = wait_answer(pd, "shop", "w1")
    assert answer["action"] == "ROLLBACK_OK"
    assert (answer["requested_by"], answer["reason"]) == ("alice", "checkout is broken")
    [call] = pd.hook_calls()
    assert call["POSTDEPLOY_REASON"] == "checkout is broken"
    done = pd.done("shop", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ALERT_ONLY")  # kept
    assert json.loads((pd.item("shop", "w1") / "rollback.json").read_text())["manual"] is True
    run.wait_for("rollback.manual_finished", work_item="w1")
    poke = pd.state / ".requests" / "shop~w1"
    pd.wait_until("the poke is removed once answered", lambda: not poke.exists())
    # A second request, whoever asks, is refused and runs nothing: by the command line...
    again = ask(pd, "shop", "w1", "again", who="bob")
    assert again.returncode == 3
    assert "refused" in again.stderr
    # ... and by the daemon itself, for a request written past the command line's checks.
    (pd.item("shop", "w1") / "rollback.request").write_text('{"reason": "by hand"}')
    (pd.state / ".requests" / "shop~w1").touch()
    refused = pd.item("shop", "w1") / "rollback.refused"
    pd.wait_until("the daemon's refusal", refused.exists)
    assert "already ran" in refused.read_text()
    assert len(pd.hook_calls()) == 1


def test_open_window_on_a_self_hosting_repo_ends_degraded_and_rolls_back(
    pd: Harness,
) -> None:
    """A person decided: the window ends DEGRADED at once and the hook runs, although the
    repo is self-hosting (which an automatic verdict never rolls back)."""
    pd.configure(
        {"infra": pd.repo(self_hosting=True, rollback_command=pd.hook("ok"))},
        defaults={"window_s": 20.0},
    )
    run = pd.start_window("infra", "w1")
    result = ask(pd, "infra", "w1", "bad migration", who="carol")
    assert result.returncode == 0, result.stderr
    answer = wait_answer(pd, "infra", "w1")
    assert answer["action"] == "ROLLBACK_OK"
    done = pd.done("infra", "w1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert "a person asked for the rollback (carol): bad migration" in done["reason"]
    assert len(pd.hook_calls()) == 1
    assert run.find("rollback.requested", work_item="w1")


def test_request_made_while_the_daemon_was_down_is_answered_after_the_restart(
    pd: Harness,
) -> None:
    """The command line asks while the daemon is down, and keeps waiting: the restarted
    daemon answers it, and the hook runs once."""
    pd.configure({"shop": pd.repo(rollback_command=pd.hook("ok"))})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    run.stop()
    results: list[subprocess.CompletedProcess[str]] = []
    asking = threading.Thread(
        target=lambda: results.append(ask(pd, "shop", "w1", "seen in the dashboards"))
    )
    asking.start()
    poke = pd.state / ".requests" / "shop~w1"  # written after the request
    pd.wait_until("the request is written", poke.exists)
    pd.start()
    asking.join(60)
    [result] = results
    assert result.returncode == 0, result.stderr
    assert wait_answer(pd, "shop", "w1")["action"] == "ROLLBACK_OK"
    assert len(pd.hook_calls()) == 1


def test_request_for_a_healthy_window_is_refused(pd: Harness) -> None:
    pd.configure({"shop": pd.repo(rollback_command=pd.hook("ok"))})
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1", status="HEALTHY")
    result = ask(pd, "shop", "w1", "just in case")
    assert result.returncode == 3
    assert "HEALTHY" in result.stderr
    assert pd.hook_calls() == []
    assert "manual_rollback" not in pd.done("shop", "w1")


def test_poke_through_a_symlinked_requests_dir_is_never_followed(
    pd: Harness, tmp_path: Path
) -> None:
    """A `.requests` that is a symlink is not listed or written through."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shop~w1").touch()
    pd.state.mkdir(parents=True, exist_ok=True)
    (pd.state / ".requests").symlink_to(elsewhere)
    pd.configure({"shop": pd.repo(rollback_command=pd.hook("ok"))})
    run = pd.start()
    run.wait_for("requests.unreadable")
    assert (elsewhere / "shop~w1").exists()
