"""`postdeploy wait`, `arm --wait` and the rollback client, through the real CLI; the waits
run against the real daemon, the rollback client against the daemon's answers written by
hand (the daemon's side of a person's rollback is tested with the daemon)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support.env import child_env
from support.toml import render_toml

if TYPE_CHECKING:
    from e2e.conftest import Harness

DEADLINE_S = 30.0
ROOT = Path(__file__).resolve().parents[2]
TICK_LINE = re.compile(r"^tick \d+/5: health (ok \(200, \d+ ms\)|FAILED \()")


class Waiter:
    """A `postdeploy ...` subprocess whose stderr is read line by line as it comes."""

    def __init__(self, *args: str, cwd: Path, user: tuple[int, int] | None = None) -> None:
        argv = [sys.executable, "-m", "postdeploy", *args]
        if user is not None:
            uid, gid = user
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=child_env({"PYTHONDONTWRITEBYTECODE": "1"}),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.out: list[str] = []
        # Both pipes are read by threads of their own (communicate() would race the stderr
        # reader for the same pipe).
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.out.append(self.proc.stdout.read())

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_line(self, needle: str) -> str:
        """The first stderr line containing `needle`; waits for it."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(needle in line for line in self.lines) or self._eof, DEADLINE_S
            )
            found = [line for line in self.lines if needle in line]
        assert ok and found, f"no stderr line with {needle!r}: {self.lines}"
        return found[0]

    def finish(self) -> tuple[int, str, list[str]]:
        """Exit code, stdout, stderr lines."""
        try:
            self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the command did not finish: {self.lines}") from None
        for reader in self._readers:
            reader.join(DEADLINE_S)
        return self.proc.returncode, "".join(self.out), self.lines


def _cli(pd: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return pd.cli(*args, "--config", str(pd.config_path))


def _tick_lines(stderr: str | list[str]) -> list[str]:
    lines = stderr.splitlines() if isinstance(stderr, str) else stderr
    return [line for line in lines if line.startswith("tick ")]


# -- every exit code of `wait` --------------------------------------------------------------


def test_wait_healthy_exit_0_with_a_progress_line_per_tick(pd: Harness) -> None:
    pd.configure()
    run = pd.start()
    pd.arm("shop", "w1", "commit=abc123")
    result = _cli(pd, "wait", "shop", "w1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HEALTHY / NONE: "), result.stdout
    ticks = _tick_lines(result.stderr)
    assert ticks and all(TICK_LINE.match(line) for line in ticks), result.stderr
    assert len(ticks) == len(pd.rows("shop", "w1"))  # one line per probed tick, none twice
    # A finished item answers at once, with no daemon running: --timeout 0 still answers.
    assert run.stop() == 0
    again = _cli(pd, "wait", "shop", "w1", "--timeout", "0", "--json")
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert body == {**pd.done("shop", "w1"), "repo": "shop", "work_item": "w1"}


def test_wait_degraded_exit_1(pd: Harness) -> None:
    pd.configure()
    pd.service.set(health="fail")
    pd.start()
    pd.arm("shop", "w1")
    result = _cli(pd, "wait", "shop", "w1", "--json")
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)
    assert (body["status"], body["action_taken"]) == ("DEGRADED", "ALERT_ONLY")
    assert (body["repo"], body["work_item"]) == ("shop", "w1")
    assert any("health FAILED (503" in line for line in _tick_lines(result.stderr))


def test_wait_shadow_degraded_exit_0(pd: Harness) -> None:
    pd.configure({"shop": pd.repo(mode="shadow")})
    pd.service.set(health="fail")
    pd.start()
    pd.arm("shop", "w1")
    result = _cli(pd, "wait", "shop", "w1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DEGRADED / SHADOW: "), result.stdout


def test_wait_rejected_exit_3(pd: Harness) -> None:
    pd.configure()
    pd.start()
    pd.touch_armed("shop", "bad", "[1, 2]\n")
    result = _cli(pd, "wait", "shop", "bad")
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("REJECTED: armed must hold a JSON object"), result.stdout


def test_wait_cancelled_exit_3_and_timeout_124(pd: Harness) -> None:
    """A long window: a `wait` with a short --timeout gives up with 124 (the window goes on);
    another one follows it until it is cancelled: 3."""
    pd.configure({"shop": pd.repo(window_s=60.0)})
    pd.start()
    pd.arm("shop", "w1")
    waiter = Waiter("wait", "shop", "w1", "--config", str(pd.config_path), cwd=pd.tmp)
    waiter.wait_line("tick 1/300: health ok")  # it follows the window as it goes
    timed_out = _cli(pd, "wait", "shop", "w1", "--timeout", "0.3")
    assert timed_out.returncode == 124, timed_out.stderr
    assert timed_out.stdout == ""
    assert "no verdict within 0.3s" in timed_out.stderr
    assert _cli(pd, "cancel", "shop", "w1").returncode == 0
    code, out, _lines = waiter.finish()
    assert code == 3
    assert out.startswith("CANCELLED / NONE: "), out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["wait", "shop", "../etc"], "invalid name"),
        (["wait", "nowhere", "w1"], "no [repos.nowhere] table"),
        (["wait", "shop", "w1", "--timeout", "soon"], "not a number"),
        (["wait", "shop", "w1", "--config", "/nonexistent/config.toml"], "config.toml"),
        (["wait", "shop", "w1", "--state-dir", "/nonexistent/state"], "does not exist"),
    ],
)
def test_wait_usage_and_config_errors_exit_2(pd: Harness, args: list[str], needle: str) -> None:
    pd.configure()
    pd.state.mkdir()
    result = pd.cli(*args, *([] if "--config" in args else ["--config", str(pd.config_path)]))
    assert result.returncode == 2, result
    assert needle in result.stderr, result.stderr


def test_wait_before_the_item_exists(pd: Harness) -> None:
    """`wait` first, with not even the repo directory there; then the deploy arms."""
    pd.configure()
    pd.start()
    assert not (pd.state / "shop").exists()
    waiter = Waiter("wait", "shop", "w1", "--config", str(pd.config_path), cwd=pd.tmp)
    waiter.wait_line("shop/w1: not armed yet")  # printed once its watches are in place
    pd.arm("shop", "w1")
    code, out, lines = waiter.finish()
    assert code == 0, lines
    assert out.startswith("HEALTHY / NONE: ")
    assert "shop/w1: window open: waiting for its ticks of 5" in lines, "\n".join(lines)
    assert _tick_lines(lines)


def test_arm_wait(pd: Harness) -> None:
    """`arm --wait` prints the sentinel's path, then the verdict; its exit code is wait's.
    With `--json`, stdout is the verdict's JSON object alone (the path goes to stderr)."""
    pd.configure({"shop": pd.repo(), "api": pd.repo(fail_threshold=1, health_path="/nope")})
    pd.start()
    healthy = _cli(pd, "arm", "shop", "w1", "--wait", "--timeout", "60")
    assert healthy.returncode == 0, healthy.stderr
    path, outcome = healthy.stdout.splitlines()
    assert path == str(pd.item("shop", "w1") / "armed")
    assert outcome.startswith("HEALTHY / NONE: ")
    degraded = _cli(pd, "arm", "api", "w1", "--wait", "--json")
    assert degraded.returncode == 1, degraded.stderr
    body = json.loads(degraded.stdout)
    assert (body["status"], body["repo"], body["work_item"]) == ("DEGRADED", "api", "w1")
    assert str(pd.item("api", "w1") / "armed") in degraded.stderr.splitlines()


# -- a user who may only read the state directory --------------------------------------------


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory outside pytest's private tmp tree (0700), readable by every user."""
    path = Path(tempfile.mkdtemp(prefix="pd-wait-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_wait_as_a_user_who_can_only_read(pd: Harness, world_readable: Path) -> None:
    """`wait --state-dir` as `nobody`, who can read but not write anything below the state
    directory: it follows the window from before the item exists to its verdict."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user `nobody`")
    state = world_readable / "state"
    pd.state = state
    data: dict[str, Any] = {
        "state_dir": str(state),
        "defaults": {"window_s": 1.0, "interval_s": 0.2, "initial_delay_s": 0.1},
        "daemon": {"rescan_interval_s": 0.25},
        "repos": {"shop": pd.repo()},
    }
    data["defaults"]["probe_timeout_s"] = 0.15
    pd.config_path.write_text(render_toml(data))
    old = os.umask(0o022)  # the daemon's files readable by others, whatever the caller's umask
    try:
        pd.start()
    finally:
        os.umask(old)
    state.chmod(0o755)
    waiter = Waiter(
        "wait",
        "shop",
        "w1",
        "--state-dir",
        str(state),
        cwd=Path("/"),
        user=(nobody.pw_uid, nobody.pw_gid),
    )
    waiter.wait_line("shop/w1: not armed yet")
    pd.arm("shop", "w1")
    code, out, lines = waiter.finish()
    assert code == 0, lines
    assert out.startswith("HEALTHY / NONE: ")
    assert _tick_lines(lines)
    # Nothing below the state directory belongs to `nobody`: it wrote nothing.
    for path in state.rglob("*"):
        assert path.lstat().st_uid != nobody.pw_uid, path
    mode = (pd.item("shop", "w1")).stat().st_mode
    assert not mode & stat.S_IWOTH, "the test is void if others may write the item directory"


# -- the README's deploy script ----------------------------------------------------------------


def _readme_deploy_script() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Gate a pipeline on the verdict\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no ```sh block in the README's 'Gate a pipeline' section"
    script = match[1]
    assert 'ssh "$DEPLOY_HOST" postdeploy arm' in script
    return script


def test_readme_deploy_script(pd: Harness) -> None:
    """The README's deploy script, as written, with `ssh HOST CMD` run by a local shell and
    `postdeploy` this checkout's: exit 0 on a healthy deploy, 1 on a degraded one."""
    script = pd.tmp / "deploy.sh"
    script.write_text(_readme_deploy_script())
    bin_dir = pd.tmp / "bin"
    bin_dir.mkdir()
    fake_ssh = bin_dir / "ssh"  # `ssh HOST WORDS...` runs WORDS in a shell, as sshd does
    fake_ssh.write_text('#!/bin/sh\nshift\nexec sh -c "$*"\n')
    postdeploy = bin_dir / "postdeploy"
    postdeploy.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m postdeploy "$@"\n')
    for path in (fake_ssh, postdeploy):
        path.chmod(0o755)
    pd.configure()
    pd.start()

    def deploy(item: str) -> subprocess.CompletedProcess[str]:
        env = child_env(
            {
                "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "POSTDEPLOY_CONFIG": str(pd.config_path),
                "CI_PIPELINE_ID": item,
                "GIT_SHA": "9ab03d1",
            }
        )
        return subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, env=env, timeout=DEADLINE_S
        )

    healthy = deploy("1001")
    assert healthy.returncode == 0, healthy.stderr
    assert "post-deploy check passed" in healthy.stdout
    assert json.loads((pd.item("shop", "1001") / "window.json").read_text())["metadata"] == {
        "commit": "9ab03d1"
    }
    pd.service.set(health="fail")
    degraded = deploy("1002")
    assert degraded.returncode == 1, degraded.stderr
    assert "DEGRADED" in degraded.stderr
    assert pd.done("shop", "1002")["status"] == "DEGRADED"


# -- the rollback client through the CLI (answers written by hand) ----------------------------


def _finished(pd: Harness, item: str, done: dict[str, Any]) -> Path:
    path = pd.item("shop", item)
    path.mkdir(parents=True)
    (path / "armed").write_text("")
    (path / "done").write_text(json.dumps(done))
    return path


def test_rollback_cli_refusals_and_usage_errors(pd: Harness) -> None:
    pd.configure()
    pd.state.mkdir()
    healthy = _finished(pd, "ok", {"status": "HEALTHY", "action_taken": "NONE"})
    result = _cli(pd, "rollback", "shop", "ok", "--reason", "why not")
    assert result.returncode == 3, result
    assert "not DEGRADED" in result.stderr
    assert not (healthy / "rollback.request").exists()
    assert _cli(pd, "rollback", "nowhere", "w1").returncode == 2
    assert _cli(pd, "rollback", "shop", "../x").returncode == 2
    assert _cli(pd, "rollback", "shop", "missing").returncode == 2


def test_rollback_cli_answered_by_done(pd: Harness) -> None:
    pd.configure()
    pd.state.mkdir()
    done = {"status": "DEGRADED", "action_taken": "ALERT_ONLY", "reason": "health failed"}
    item = _finished(pd, "w1", done)
    waiter = Waiter(
        "rollback", "shop", "w1", "--reason", "p99", "--config", str(pd.config_path), cwd=pd.tmp
    )
    waiter.wait_line("rollback requested")
    request = json.loads((item / "rollback.request").read_text())
    assert request["reason"] == "p99"
    answer = {**done, "manual_rollback": {"action": "ROLLBACK_OK", "detail": "exit code 0"}}
    tmp = item / ".done.tmp"
    tmp.write_text(json.dumps(answer))
    tmp.rename(item / "done")  # as the daemon writes it: renamed into place
    code, out, lines = waiter.finish()
    assert (code, out) == (0, "rollback ROLLBACK_OK: exit code 0\n"), lines
    # Asked again: refused at once, nothing written.
    again = _cli(pd, "rollback", "shop", "w1")
    assert again.returncode == 3
    assert "already ran" in again.stderr


def test_progress_counts_failures_as_of_each_tick(pd: Harness) -> None:
    """Rows that arrive in one read (a wait started mid-window) each say how many ticks had
    failed up to them: 1, 2, 3, not the total three times."""
    pd.configure({"shop": pd.repo(fail_threshold=50)}, defaults={"window_s": 20.0})
    pd.service.set(health="fail")
    run = pd.start()
    pd.touch_armed("shop", "w1")
    pd.wait_rows("shop", "w1", 3)
    run.stop()
    result = pd.cli("wait", "shop", "w1", "--timeout", "0.3", "--config", str(pd.config_path))
    assert result.returncode == 124
    counts = [int(n) for n in re.findall(r"; (\d+) failed so far", result.stderr)]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) >= 3, result.stderr
