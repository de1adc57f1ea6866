"""After the verdict: rollback verification, shadow mode, and the report published into git."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2e.conftest import Harness

# Health fails from the first tick; a window long enough that the verdict comes well before
# its end, and the three verification probes after the rollback run at the same pace.
BROKEN = {"window_s": 3.0, "fail_threshold": 2}


def restore_hook(url: str) -> list[str]:
    """A rollback command that really fixes the demo service (exit 0)."""
    return [sys.executable, "-m", "postdeploy.demo_service", "set", url, "health=ok"]


def test_a_rollback_that_fixes_the_service_is_verified(pd: Harness) -> None:
    pd.configure(
        {"shop": pd.repo(auto_rollback=True, rollback_command=restore_hook(pd.service.url))},
        defaults=BROKEN,
    )
    pd.service.set(health="fail")
    run = pd.start()
    pd.arm("shop", "r1")
    line = run.wait_for("rollback.verification", work_item="r1")
    assert line["recovered"] is True, line
    run.wait_for("window.finished", work_item="r1")
    done = pd.done("shop", "r1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    verification = done["rollback"]["verification"]
    assert verification["recovered"] is True and verification["checks"] == 3
    verify_rows = (pd.item("shop", "r1") / "verify.jsonl").read_text().splitlines()
    assert len(verify_rows) == 3
    # The report shows the verification probes too, in a table of their own.
    report = (pd.item("shop", "r1") / "report.md").read_text()
    after = report.split("## After the rollback: verification probes", 1)[1]
    assert after.count("| 200 ok |") == 3


def test_a_rollback_that_does_not_fix_the_service_says_so_and_is_not_repeated(
    pd: Harness,
) -> None:
    pd.configure(
        {"shop": pd.repo(auto_rollback=True, rollback_command=pd.hook("ok"))}, defaults=BROKEN
    )
    pd.service.set(health="fail")  # the hook exits 0 but changes nothing
    run = pd.start()
    pd.arm("shop", "r1")
    line = run.wait_for("rollback.verification", work_item="r1")
    assert line["recovered"] is False and line["level"] == "critical", line
    assert "still degraded after the rollback" in line["reason"]
    assert line["reason"].count("last:") == 1
    run.wait_for("window.finished", work_item="r1")
    done = pd.done("shop", "r1")
    assert (done["status"], done["action_taken"]) == ("DEGRADED", "ROLLBACK_OK")
    assert done["rollback"]["verification"]["recovered"] is False
    # Never a second automatic rollback, not even after a restart.
    run.stop()
    pd.start()
    assert [call["POSTDEPLOY_WORK_ITEM"] for call in pd.hook_calls()] == ["r1"]


def test_shadow_mode_judges_but_runs_nothing(pd: Harness) -> None:
    pd.configure(
        {
            "shop": pd.repo(auto_rollback=True, rollback_command=pd.hook("ok"), mode="shadow"),
            "cart": pd.repo(auto_rollback=True, rollback_command=pd.hook("ok")),
        },
        defaults=BROKEN,
    )
    pd.service.set(health="fail")
    run = pd.start()
    pd.arm("shop", "s1")
    pd.arm("cart", "c1", "mode=shadow")  # shadow asked for by the deploy, in the sentinel
    for repo, item in (("shop", "s1"), ("cart", "c1")):
        line = run.wait_for("window.degraded", work_item=item)
        assert line["shadow"] is True and line["decision"] == "ROLLBACK", line
        run.wait_for("window.finished", work_item=item)
        done = pd.done(repo, item)
        assert (done["status"], done["action_taken"]) == ("DEGRADED", "SHADOW")
    assert pd.hook_calls() == []


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout


def test_the_report_is_committed_and_pushed_into_the_worktree(pd: Harness) -> None:
    remote, worktree = pd.tmp / "remote.git", pd.tmp / "checkouts" / "shop"
    git("init", "-q", "--bare", str(remote), cwd=pd.tmp)
    worktree.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=worktree)
    git("remote", "add", "origin", str(remote), cwd=worktree)
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "base",
        cwd=worktree,
    )
    config = pd.configure({"shop": pd.repo()})
    with config.open("a") as f:
        f.write(f'\n[git_report]\nworktree = "{pd.tmp}/checkouts/{{repo}}"\npush = true\n')
    run = pd.start()
    pd.arm("shop", "r1", "branch=main")
    run.wait_for("gitreport.published")
    report = worktree / "docs" / "work-items" / "r1" / "post-deploy-log.md"
    assert report.read_text() == (pd.item("shop", "r1") / "report.md").read_text()
    picture = report.parent / "timeline.svg"  # the picture report.md links, committed with it
    assert picture.read_text() == (pd.item("shop", "r1") / "timeline.svg").read_text()
    assert "timeline.svg" in git("show", "--stat", "--format=", "main", cwd=remote)
    assert "post-deploy HEALTHY/NONE for r1" in git("log", "--oneline", "main", cwd=remote)
