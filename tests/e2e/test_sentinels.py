"""The state directory is untrusted input: bad sentinels are rejected, symlinks and bad names
are never followed nor written through, and arming is idempotent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2e.conftest import Harness


def check_rejected_file(pd: Harness, item: Path) -> str:
    """`rejected` holds exactly one non-empty line; the window was never started."""
    # The log line may come just before the file: wait for the file itself.
    pd.wait_until(f"{item}/rejected", (item / "rejected").exists)
    text = (item / "rejected").read_text()
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert text.strip()
    for name in ("series.jsonl", "done", "report.md"):
        assert not (item / name).exists(), name
    return text.strip()


def test_bad_sentinels_are_rejected_with_a_reason(pd: Harness) -> None:
    """Invalid JSON, a non-object, a bad key, a non-string value, over 64 KiB, a repo without
    a config section: each gets `rejected` and a log line, and no window starts."""
    pd.configure()
    run = pd.start()
    pd.touch_armed("shop", "badjson", "{not json\n")
    pd.touch_armed("shop", "nonstring", '{"commit": 123}\n')
    pd.touch_armed("shop", "nonobject", '["commit", "abc"]\n')
    pd.touch_armed("shop", "badkey", '{"bad-key": "x"}\n')
    pd.touch_armed("shop", "huge", json.dumps({"blob": "x" * 70_000}))
    pd.touch_armed("ghost", "w1", "")

    cases = ["badjson", "nonstring", "nonobject", "badkey", "huge"]
    for repo, work_item in [("shop", case) for case in cases] + [("ghost", "w1")]:
        line = run.wait_for("sentinel.rejected", repo=repo, work_item=work_item)
        reason = check_rejected_file(pd, pd.item(repo, work_item))
        assert reason, line
    assert "commit" in check_rejected_file(pd, pd.item("shop", "nonstring"))
    assert "ghost" in check_rejected_file(pd, pd.item("ghost", "w1"))
    assert not run.find("window.armed")
    assert pd.service.hits("/health") == 0
    assert pd.lines_missing_ids(run.lines) == []


def test_armed_written_in_pieces_is_read_once_quiet(pd: Harness) -> None:
    """`armed` is read once nothing has written to it for 100 ms (the contract): a writer
    that pauses 20 ms between two halves of the JSON gets its whole metadata, not a
    rejection of the first half."""
    pd.configure()
    run = pd.start()
    directory = pd.item("shop", "w1")
    directory.mkdir(parents=True)
    with open(directory / "armed", "w") as f:
        f.write('{"branch": "ma')
        f.flush()
        time.sleep(0.02)  # the writer's pause; far below the 100 ms quiet time
        f.write('in", "commit": "abc"}\n')
    line = run.wait_for("window.armed", repo="shop", work_item="w1")
    assert line["metadata"] == {"branch": "main", "commit": "abc"}
    assert not run.find("sentinel.rejected")


def test_symlinked_armed_is_rejected_and_its_target_untouched(pd: Harness) -> None:
    """`armed` that is a symlink is rejected; nothing is written at or through its target."""
    pd.configure()
    outside = pd.tmp / "outside"
    outside.mkdir()
    target = outside / "target.txt"
    target.write_text("precious\n")
    long_ago = time.time() - 3600
    os.utime(target, (long_ago, long_ago))
    before = pd.listing(outside)

    run = pd.start()
    item = pd.item("shop", "linked")
    item.mkdir(parents=True)
    (item / "armed").symlink_to(target)

    run.wait_for("sentinel.rejected", repo="shop", work_item="linked")
    check_rejected_file(pd, item)
    assert (item / "armed").is_symlink()
    assert target.read_text() == "precious\n"
    assert pd.listing(outside) == before
    assert not run.find("window.armed")


def test_symlinked_directories_are_ignored_and_never_written_through(pd: Harness) -> None:
    """An item (or repo) directory that is a symlink to a directory outside the state dir is
    logged and ignored; nothing lands in the directory it points to."""
    pd.configure({"shop": pd.repo(window_s=1.0)})
    outside = pd.tmp / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "armed").write_text("")
    (outside / "repo-victim" / "w1").mkdir(parents=True)
    (outside / "repo-victim" / "w1" / "armed").write_text("")
    before = pd.listing(outside)

    run = pd.start()
    (pd.state / "shop").mkdir()
    (pd.state / "shop" / "evil").symlink_to(outside / "victim", target_is_directory=True)
    (pd.state / "evilrepo").symlink_to(outside / "repo-victim", target_is_directory=True)

    item_line = run.wait_for("sentinel.ignored", path=str(pd.state / "shop" / "evil"))
    repo_line = run.wait_for("sentinel.ignored", path=str(pd.state / "evilrepo"))
    assert item_line.get("problem") and repo_line.get("problem")

    # A real window run to its end spans several rescans: time enough for a wrong write.
    pd.touch_armed("shop", "ok")
    run.wait_for("window.finished", work_item="ok")
    assert pd.listing(outside) == before
    assert not run.find("window.armed", work_item="evil")
    assert not run.find("window.armed", repo="evilrepo")
    assert not run.find("sentinel.rejected")


def test_invalid_names_are_ignored_and_logged(pd: Harness) -> None:
    """Repo or work item names outside the name rule are logged and never started."""
    pd.configure({"shop": pd.repo(window_s=1.0)})
    run = pd.start()
    bad = [("-bad", "w1"), ("shop", "with space"), ("shop", "x" * 129), ("shop", "ünïcode")]
    for repo, work_item in bad:
        pd.touch_armed(repo, work_item)

    for repo, work_item in bad:
        # An invalid repo directory is reported as such; an invalid item below a valid repo too.
        path = pd.state / repo if repo.startswith("-") else pd.item(repo, work_item)
        run.wait_for("sentinel.ignored", path=str(path))
    pd.touch_armed("shop", "ok")
    run.wait_for("window.finished", work_item="ok")
    for repo, work_item in bad:
        assert sorted(p.name for p in pd.item(repo, work_item).iterdir()) == ["armed"]
        assert not run.find("window.armed", work_item=work_item)
    assert not run.find("sentinel.rejected")


def test_a_clean_state_dir_logs_no_ignored_sentinels(pd: Harness) -> None:
    """Nothing but valid sentinels (and the daemon's own files): no `sentinel.ignored` noise."""
    pd.configure({"shop": pd.repo(window_s=1.0, fail_threshold=2)})
    run = pd.start()
    pd.touch_armed("shop", "w1")
    run.wait_for("window.finished", work_item="w1")
    pd.service.set(health="fail")
    pd.touch_armed("shop", "w2")
    run.wait_for("window.finished", work_item="w2")
    assert run.stop() == 0
    assert run.find("sentinel.ignored") == []


def test_arm_is_idempotent(pd: Harness) -> None:
    """A second `postdeploy arm` leaves the sentinel, its content and its mtime unchanged."""
    pd.configure()
    pd.state.mkdir()
    armed = pd.arm("shop", "w1", "commit=first", "deployed_by=ci")
    assert json.loads(armed.read_text()) == {"commit": "first", "deployed_by": "ci"}
    content, mtime = armed.read_bytes(), armed.stat().st_mtime_ns

    again = pd.cli("arm", "shop", "w1", "--meta", "commit=second", "--config", str(pd.config_path))
    assert again.returncode == 0, again.stderr
    assert armed.read_bytes() == content
    assert armed.stat().st_mtime_ns == mtime


def test_arm_before_the_daemon_ever_ran_is_refused(pd: Harness) -> None:
    """`arm` says no when nothing will watch: before the daemon first created the state
    directory, it exits 2 and creates nothing (a typo in the path must not start a state
    directory nobody watches). Once the daemon has run, it arms."""
    pd.configure()
    assert not pd.state.exists()
    refused = pd.cli("arm", "shop", "w1", "--config", str(pd.config_path))
    assert refused.returncode == 2, refused
    assert "does not exist" in refused.stderr
    assert not pd.state.exists()
    pd.start()
    assert pd.arm("shop", "w1").is_file()
