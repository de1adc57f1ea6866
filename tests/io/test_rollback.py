"""The rollback runner against real subprocesses, real files and real signals.

Hooks are small shell or Python scripts written to tmp_path. Where a test needs to know what
happened inside a hook (its pid, its process group, its environment), the hook writes it to a
file, atomically (write a temporary name, then rename), and the test reads that file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from postdeploy.rollback import RollbackResult, rollback_env, run_command
from postdeploy.verdict import Action, rollback_action

DEADLINE_S = 20.0  # only reached when something is broken
LONG_TIMEOUT_S = 30.0  # a rollback timeout that must never be what ends a test


def script(path: Path, text: str, mode: int = 0o755) -> Path:
    """Write an executable script (shebang included in `text`)."""
    path.write_text(text)
    path.chmod(mode)
    return path


def base_env() -> dict[str, str]:
    """A small, explicit "daemon environment", so tests can compare environments exactly.
    PYTHONCOERCECLOCALE=0 stops a Python hook from adding LC_CTYPE to its own environment
    where the C.UTF-8 locale is missing."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONCOERCECLOCALE": "0",
    }


async def run(
    argv: list[str],
    log: Path | None = None,
    timeout: float = LONG_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> RollbackResult:
    """run_command with output appended to `log` (a real file), bounded by DEADLINE_S."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log else None
    try:
        with anyio.fail_after(DEADLINE_S):
            return await run_command(argv, env or base_env(), timeout, fd)
    finally:
        if fd is not None:
            os.close(fd)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, sid) of a process from /proc, or None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ")".
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2]), int(fields[3])


def alive(pid: int) -> bool:
    """Whether `pid` is a running process. A zombie counts as gone: it is dead, only waiting
    for whichever process inherited it to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session is `sid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[2] == sid and stat[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


async def wait_until_gone(pids: list[int]) -> None:
    """Poll until none of `pids` runs (reaping an orphaned zombie may take a moment)."""
    with anyio.fail_after(DEADLINE_S):
        while any(alive(pid) for pid in pids):
            await anyio.sleep(0.05)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


@pytest.fixture
def reaper() -> Iterator[list[Path]]:
    """Pid files of processes a test may leave behind (on purpose, or when it fails): each
    one still running at the end is SIGKILLed with its whole group, unless that group is
    ours, in which case only the process itself is."""
    pid_files: list[Path] = []
    yield pid_files
    for pid_file in pid_files:
        if not pid_file.exists() or not alive(pid := read_pid(pid_file)):
            continue
        try:
            pgid = os.getpgid(pid)
            if pgid == os.getpgrp():
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------
# Exit codes and failures to start
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (0, Action.ROLLBACK_OK),
        (1, Action.ROLLBACK_FAILED),
        (2, Action.ROLLBACK_FAILED),
        (255, Action.ROLLBACK_FAILED),
    ],
)
async def test_exit_code_maps_to_action(tmp_path: Path, code: int, action: Action) -> None:
    """The hook's exit status is reported as is, and 0 alone means ROLLBACK_OK."""
    hook = script(tmp_path / "hook.sh", f"#!/bin/sh\nexit {code}\n")
    result = await run([str(hook)])
    assert result.exit_code == code
    assert result.detail == f"exited with {code}"
    assert result.duration_s >= 0
    assert rollback_action(result.exit_code) is action
    assert result.to_dict()["exit_code"] == code


async def test_hook_killed_by_a_signal_is_a_failure(tmp_path: Path) -> None:
    """A hook that dies of a signal is not a success (asyncio reports -signal)."""
    hook = script(tmp_path / "hook.sh", "#!/bin/sh\nkill -KILL $$\n")
    result = await run([str(hook)])
    assert result.exit_code == -signal.SIGKILL
    assert rollback_action(result.exit_code) is Action.ROLLBACK_FAILED


@pytest.mark.parametrize(
    "kind", ["missing", "not-executable", "directory", "bad-interpreter", "not-on-path"]
)
async def test_program_that_cannot_start(tmp_path: Path, kind: str) -> None:
    """Nothing to run: exit_code None, a detail naming the program, ROLLBACK_FAILED."""
    program = {
        "missing": str(tmp_path / "no-such-hook"),
        "not-executable": str(script(tmp_path / "hook.sh", "#!/bin/sh\nexit 0\n", mode=0o644)),
        "directory": str(tmp_path),
        "bad-interpreter": str(script(tmp_path / "hook", "#!/nonexistent/interpreter\nexit 0\n")),
        "not-on-path": "postdeploy-test-no-such-hook-on-path",
    }[kind]
    result = await run([program, "--rollback"])
    assert result.exit_code is None
    assert result.detail.startswith(f"could not start {program!r}: "), result.detail
    assert rollback_action(result.exit_code) is Action.ROLLBACK_FAILED


# --------------------------------------------------------------------------------------------
# Timeout, process group, session
# --------------------------------------------------------------------------------------------

# The hook and its grandchild ignore SIGTERM (the grandchild inherits the ignored disposition
# across fork and exec), so only the SIGKILL to the whole group after the grace can end them.
STUBBORN_HOOK = """#!/bin/sh
trap '' TERM
dir="$1"
sh -c 'echo $$ > "$1/grandchild.tmp" && mv "$1/grandchild.tmp" "$1/grandchild.pid"
       while :; do sleep 1; done' grandchild "$dir" &
echo $$ > "$dir/hook.tmp" && mv "$dir/hook.tmp" "$dir/hook.pid"
while :; do sleep 1; done
"""


async def test_timeout_kills_the_whole_process_group(tmp_path: Path, reaper: list[Path]) -> None:
    """At the timeout the hook and every descendant are killed, even ones that ignore
    SIGTERM; the result is exit_code None with a detail that says it timed out."""
    hook = script(tmp_path / "hook.sh", STUBBORN_HOOK)
    reaper.extend([tmp_path / "hook.pid", tmp_path / "grandchild.pid"])
    result = await run([str(hook), str(tmp_path)], timeout=1.5)
    # Both pid files were written well within the 1.5 s the hook had.
    hook_pid = read_pid(tmp_path / "hook.pid")
    grandchild_pid = read_pid(tmp_path / "grandchild.pid")

    assert result.exit_code is None
    assert result.detail == "timed out after 1.5s; process group killed"
    assert rollback_action(result.exit_code) is Action.ROLLBACK_FAILED
    await wait_until_gone([hook_pid, grandchild_pid])
    with pytest.raises(ProcessLookupError):
        os.kill(hook_pid, 0)  # the leader was reaped by the runner itself
    # Nothing at all is left in the hook's session (the `sleep`s included).
    with anyio.fail_after(DEADLINE_S):
        while session_members(hook_pid):
            await anyio.sleep(0.05)


PGID_HOOK = """import json, os, sys
out = sys.argv[1]
with open(out + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "pgid": os.getpgrp(), "sid": os.getsid(0)}, f)
os.rename(out + ".tmp", out)
"""


async def test_command_runs_in_its_own_session_and_group(tmp_path: Path) -> None:
    """The hook leads a new session and process group, so a group kill cannot hit the
    daemon, and a terminal's signals never reach the hook."""
    hook = script(tmp_path / "ids.py", PGID_HOOK, mode=0o644)
    result = await run([sys.executable, str(hook), str(tmp_path / "ids.json")])
    assert result.exit_code == 0
    ids = json.loads((tmp_path / "ids.json").read_text())
    assert ids["pgid"] == ids["pid"] == ids["sid"]
    assert ids["pgid"] != os.getpgrp()
    assert ids["sid"] != os.getsid(0)


# --------------------------------------------------------------------------------------------
# Environment and argv: metadata reaches the hook only as environment values
# --------------------------------------------------------------------------------------------

ENV_DUMP = """import os, sys
out = sys.argv[1]
with open(out + ".tmp", "wb") as f:
    f.write(b"\\0".join(k + b"=" + v for k, v in os.environb.items()))
os.rename(out + ".tmp", out)
"""


def read_env_dump(path: Path) -> dict[bytes, bytes]:
    entries = path.read_bytes().split(b"\0")
    return dict(entry.split(b"=", 1) for entry in entries if entry)


def evil_metadata(tmp_path: Path) -> dict[str, str]:
    """Values that would create `PWNED` (or delete `canary/`) if any shell evaluated them."""
    marker, canary = tmp_path / "PWNED", tmp_path / "canary"
    return {
        "subst": f"$(touch {marker})",
        "backtick": f"`touch {marker}`",
        "semi": f"x; rm -rf {canary}; touch {marker}",
        "newline": f"line one\nline two\n$(touch {marker})\n; touch {marker}\n",
        "quotes": "'\"\\ $HOME ${PATH} *?[a] | & < > # ~ !",
        "unicode": "ünïcödé ✓ 部署",
        "deployed_by": "alice",
        "Commit": "abc123",
    }


async def test_environment_is_daemon_env_plus_rollback_env_plus_postdeploy_values(
    tmp_path: Path,
) -> None:
    """The hook's environment is exactly the daemon's, overlaid with rollback_env, then the
    POSTDEPLOY_ values (which rollback_env cannot spoof); metadata values full of shell
    metacharacters arrive byte-identical and are never evaluated."""
    (tmp_path / "canary").mkdir()
    metadata = evil_metadata(tmp_path)
    daemon = {**base_env(), "DAEMON_ONLY": "1", "TARGET_SERVICE": "from-daemon"}
    extra = {"TARGET_SERVICE": "shop", "EMPTY": "", "POSTDEPLOY_REPO": "spoofed"}
    reason = "health failed 3 times in a row (threshold 3); last: HTTP 503 `$(id)`"
    env = rollback_env(
        daemon, extra, repo="shop", work_item="PR-42", reason=reason, metadata=metadata
    )
    expected = {
        **daemon,
        "TARGET_SERVICE": "shop",
        "EMPTY": "",
        "POSTDEPLOY_REPO": "shop",
        "POSTDEPLOY_WORK_ITEM": "PR-42",
        "POSTDEPLOY_REASON": reason,
        **{f"POSTDEPLOY_META_{key.upper()}": value for key, value in metadata.items()},
    }
    assert env == expected
    assert "POSTDEPLOY_META_COMMIT" in env and "POSTDEPLOY_META_DEPLOYED_BY" in env

    hook = script(tmp_path / "dump.py", ENV_DUMP, mode=0o644)
    result = await run([sys.executable, str(hook), str(tmp_path / "env.bin")], env=env)
    assert result.exit_code == 0, result.detail
    seen = read_env_dump(tmp_path / "env.bin")
    assert seen == {key.encode(): value.encode() for key, value in expected.items()}
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "canary").is_dir()


SHELL_HOOK = """#!/bin/sh
# A typical shell hook: it reads the metadata from its environment, quoted.
for name in SUBST BACKTICK SEMI NEWLINE QUOTES; do
    eval "value=\\"\\$POSTDEPLOY_META_$name\\""
    printf '%s' "$value" > "$OUT_DIR/$name.txt"
done
echo unquoted: $POSTDEPLOY_META_SUBST $POSTDEPLOY_META_BACKTICK
"""


async def test_shell_hook_reads_metadata_without_evaluating_it(tmp_path: Path) -> None:
    """Even a shell hook that expands the values (quoted or not) gets them as data: no
    command substitution happens on a parameter's value."""
    (tmp_path / "canary").mkdir()
    metadata = evil_metadata(tmp_path)
    env = rollback_env(
        base_env(),
        {"OUT_DIR": str(tmp_path)},
        repo="shop",
        work_item="PR-42",
        reason="because",
        metadata=metadata,
    )
    hook = script(tmp_path / "hook.sh", SHELL_HOOK)
    result = await run([str(hook)], log=tmp_path / "rollback.log", env=env)
    assert result.exit_code == 0, result.detail
    for name in ("subst", "backtick", "semi", "newline", "quotes"):
        assert (tmp_path / f"{name.upper()}.txt").read_text() == metadata[name]
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "canary").is_dir()
    assert f"$(touch {tmp_path / 'PWNED'})" in (tmp_path / "rollback.log").read_text()


async def test_argv_is_not_given_to_a_shell(tmp_path: Path) -> None:
    """argv goes to exec as is: shell syntax in an argument is just text."""
    marker = tmp_path / "PWNED"
    args = [f"$(touch {marker})", f"`touch {marker}`", ";", "touch", str(marker), "&&", "|"]
    log = tmp_path / "rollback.log"
    result = await run(["/bin/echo", *args], log=log)
    assert result.exit_code == 0
    assert log.read_text() == " ".join(args) + "\n"
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


async def test_output_goes_to_the_log_file(tmp_path: Path) -> None:
    """stdout and stderr both land in the given log file, in order, appended."""
    log = tmp_path / "rollback.log"
    log.write_text("earlier line\n")
    hook = script(tmp_path / "hook.sh", "#!/bin/sh\necho to stdout\necho to stderr >&2\nexit 3\n")
    result = await run([str(hook)], log=log)
    assert result.exit_code == 3
    assert log.read_text() == "earlier line\nto stdout\nto stderr\n"


async def test_without_a_log_output_is_discarded(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With no log fd the hook's output goes nowhere: not to the daemon's stdout or stderr
    (which journald reads as the daemon's own JSON log lines)."""
    hook = script(
        tmp_path / "hook.sh", "#!/bin/sh\necho hook-stdout-line\necho hook-stderr-line >&2\n"
    )
    result = await run([str(hook)], log=None)
    assert result.exit_code == 0
    out, err = capfd.readouterr()
    assert "hook-stdout-line" not in out + err
    assert "hook-stderr-line" not in out + err


BACKGROUND_HOOK = """#!/bin/sh
dir="$1"
echo "hook: starting a background child"
sh -c 'echo "child: holding stdout open"
       echo $$ > "$1/child.tmp" && mv "$1/child.tmp" "$1/child.pid"
       exec sleep 300' child "$dir" &
# Leave only once the child runs (and so holds our stdout), so the test is exact.
while [ ! -e "$dir/child.pid" ]; do sleep 0.01; done
echo "hook: done"
exit 0
"""


async def test_background_child_is_ended_with_its_group_when_the_hook_exits(
    tmp_path: Path, reaper: list[Path]
) -> None:
    """A hook that exits 0 while a child it started still holds stdout open: the runner ends
    the hook's whole process group as soon as the hook exits, so the child is gone when the
    result arrives, and its output is in the log."""
    log = tmp_path / "rollback.log"
    hook = script(tmp_path / "hook.sh", BACKGROUND_HOOK)
    reaper.append(tmp_path / "child.pid")  # the child sleeps on after the test otherwise
    result = await run([str(hook), str(tmp_path)], log=log)
    assert result.exit_code == 0
    await wait_until_gone([read_pid(tmp_path / "child.pid")])
    assert log.read_text().splitlines() == [
        "hook: starting a background child",
        "child: holding stdout open",
        "hook: done",
    ]


STUBBORN_CHILD_HOOK = """#!/bin/sh
dir="$1"
sh -c 'trap "" TERM
       echo $$ > "$1/child.tmp" && mv "$1/child.tmp" "$1/child.pid"
       while :; do sleep 1; done' child "$dir" >/dev/null 2>&1 &
while [ ! -e "$dir/child.pid" ]; do sleep 0.01; done
exit 0
"""


async def test_child_that_ignores_sigterm_does_not_outlive_a_successful_hook(
    tmp_path: Path, reaper: list[Path]
) -> None:
    """ROLLBACK_OK means the hook is over: a background child that ignores SIGTERM is
    SIGKILLed with the group after the grace period."""
    hook = script(tmp_path / "hook.sh", STUBBORN_CHILD_HOOK)
    reaper.append(tmp_path / "child.pid")
    result = await run([str(hook), str(tmp_path)], log=tmp_path / "rollback.log")
    assert result.exit_code == 0
    assert not alive(read_pid(tmp_path / "child.pid"))


ESCAPED_CHILD_HOOK = """#!/bin/sh
dir="$1"
setsid sh -c 'echo $$ > "$1/child.tmp" && mv "$1/child.tmp" "$1/child.pid"
              exec sleep 300' child "$dir" &
while [ ! -e "$dir/child.pid" ]; do sleep 0.01; done
echo "hook: done"
"""


async def test_child_that_left_the_group_holding_output_does_not_block(
    tmp_path: Path, reaper: list[Path]
) -> None:
    """A child that made its own session (so the group kill cannot reach it) and keeps the
    output pipe open: the result still arrives (the output is read for a grace period only),
    with what the hook printed."""
    log = tmp_path / "rollback.log"
    hook = script(tmp_path / "hook.sh", ESCAPED_CHILD_HOOK)
    reaper.append(tmp_path / "child.pid")
    result = await run([str(hook), str(tmp_path)], log=log)
    assert result.exit_code == 0
    assert "hook: done" in log.read_text()


async def test_huge_output_is_capped_head_and_tail(tmp_path: Path) -> None:
    """A hook printing 20 MB leaves at most twice the cap in rollback.log: its first and its
    last lines, and a line saying how much was left out."""
    from postdeploy.process import OUTPUT_LIMIT

    hook = script(
        tmp_path / "hook.py",
        f"#!{sys.executable}\n"
        "import sys\n"
        "out = sys.stdout\n"
        "out.write('FIRST LINE\\n')\n"
        "for i in range(200_000):\n"
        "    out.write('x' * 99 + '\\n')\n"
        "out.write('LAST LINE\\n')\n",
    )
    log = tmp_path / "rollback.log"
    result = await run([str(hook)], log=log)
    assert result.exit_code == 0
    data = log.read_bytes()
    assert len(data) <= 2 * OUTPUT_LIMIT + 100
    assert data.startswith(b"FIRST LINE\n")
    assert data.endswith(b"LAST LINE\n")
    assert b"bytes of output left out" in data
