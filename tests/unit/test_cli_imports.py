"""What each command imports: a command loads only the libraries it uses.

`postdeploy --help`, `arm` and `wait` run on every deploy; before, each paid for the whole
daemon (pydantic, httpx, anyio, structlog and rich, prometheus_client: ~0.4 s, ~45 MB), and
then for the config's pydantic models (~0.2 s). Each case runs the real command line in a
fresh interpreter and lists which of the heavy modules ended up in `sys.modules`. No time is
measured here (docs/PERFORMANCE.md has the figures); a module list does not depend on how
loaded the machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# The libraries that make a start-up slow or a process big, and the stdlib modules that
# only they (or the daemon) need.
HEAVY = (
    "aiofiles",
    "anyio",
    "asyncio",
    "concurrent.futures",  # durable's fsync threads, made when a group commit needs them
    "h11",
    "httpcore",
    "httpx",
    "inotify_simple",
    "postdeploy.config",  # the config's models
    "prometheus_client",
    "pydantic",
    "pydantic_core",
    "rich",
    "ssl",
    "structlog",
    "yaml",
)
# A command that validates the whole config needs pydantic, and nothing that serves or probes.
CONFIG_ONLY = tuple(m for m in HEAVY if m not in ("pydantic", "pydantic_core", "postdeploy.config"))
# A command that waits needs inotify and nothing else.
WAITS = tuple(m for m in HEAVY if m != "inotify_simple")

# Runs `cli.main(argv)` and writes the exit code and the heavy modules loaded to a file
# (stdout and stderr stay the command's own).
CHILD = f"""
import json, sys
from postdeploy import cli
try:
    code = cli.main(sys.argv[2:])
except SystemExit as exc:  # argparse's --help and usage errors
    code = exc.code
loaded = sorted(m for m in {HEAVY!r} if sys.modules.get(m) is not None)
with open(sys.argv[1], "w") as f:
    json.dump({{"code": code, "loaded": loaded}}, f)
"""


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]  # {state} and {config} are filled in
    code: int
    forbidden: tuple[str, ...]


CASES = [
    Case("help", ["--help"], 0, HEAVY),
    Case("arm --help", ["arm", "--help"], 0, HEAVY),
    Case("wait --help", ["wait", "--help"], 0, HEAVY),
    # Read-only, no config: the state directory and inotify only. Exit 124: no verdict.
    Case(
        "wait --state-dir",
        ["wait", "--state-dir", "{state}", "shop", "w1", "--timeout=0"],
        124,
        WAITS,
    ),
    Case("cancel --state-dir", ["cancel", "--state-dir", "{state}", "shop", "w1"], 1, HEAVY),
    # The state directory and the repo names, read from the config with tomllib alone.
    Case("arm", ["arm", "shop", "w1", "--config", "{config}"], 0, HEAVY),
    Case("arm, unknown repo", ["arm", "nope", "w1", "--config", "{config}"], 2, HEAVY),
    Case("arm, not TOML", ["arm", "shop", "w1", "--config", "{not_toml}"], 2, HEAVY),
    Case("arm, bad repos", ["arm", "shop", "w1", "--config", "{bad_repos}"], 2, HEAVY),
    # Broken only in keys `arm` does not read: it arms (README, "Command line").
    Case("arm, other keys broken", ["arm", "shop", "w2", "--config", "{broken}"], 0, HEAVY),
    Case(
        "arm --wait",
        ["arm", "shop", "w3", "--config", "{config}", "--wait", "--timeout=0"],
        124,
        WAITS,
    ),
    Case("wait", ["wait", "shop", "w1", "--config", "{config}", "--timeout", "0"], 124, WAITS),
    Case("cancel", ["cancel", "shop", "w4", "--config", "{config}"], 1, HEAVY),
    Case("rollback", ["rollback", "shop", "w4", "--config", "{config}"], 2, HEAVY),
    Case("check-config", ["check-config", "{config}"], 0, CONFIG_ONLY),
]


@pytest.fixture
def paths(tmp_path: Path, state_root: Path) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'state_dir = "{state_root}"\n\n[repos.shop]\nbase_url = "http://127.0.0.1:9"\n'
    )
    broken = tmp_path / "broken.toml"
    broken.write_text(f'state_dir = "{state_root}"\n\n[repos.shop]\nbase_ur = "x"\n')
    not_toml = tmp_path / "not.toml"
    not_toml.write_text(f'state_dir = "{state_root}\n')
    bad_repos = tmp_path / "bad_repos.toml"
    bad_repos.write_text(f'state_dir = "{state_root}"\nrepos = ["shop"]\n')
    return {
        "state": str(state_root),
        "config": str(config),
        "broken": str(broken),
        "not_toml": str(not_toml),
        "bad_repos": str(bad_repos),
    }


def _env() -> dict[str, str]:
    """This environment without what would change the commands' behaviour."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTDEPLOY_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_command_imports_only_what_it_uses(
    case: Case, paths: dict[str, str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    argv = [arg.format(**paths) for arg in case.argv]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["code"] == case.code, done.stderr
    assert [m for m in result["loaded"] if m in case.forbidden] == [], done.stderr


def _postdeploy(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postdeploy", *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_arm_still_writes_armed_and_reports_config_errors(paths: dict[str, str]) -> None:
    """The light imports change nothing a user sees: `arm` writes `armed` and prints its path;
    a config that is not TOML is reported (exit 2) and nothing is written."""
    armed = _postdeploy("arm", "shop", "w2", "--config", paths["config"])
    assert armed.returncode == 0, armed.stderr
    assert armed.stdout.strip() == str(Path(paths["state"], "shop", "w2", "armed"))
    assert Path(armed.stdout.strip()).is_file()
    broken = _postdeploy("arm", "shop", "w3", "--config", paths["not_toml"])
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"{paths['not_toml']}: (toml): ")
    assert broken.stdout == ""
    assert not Path(paths["state"], "shop", "w3").exists()


# `postdeploy run` with a pipe for stdout (as under systemd): once the daemon is ready, a
# thread of its own reports which heavy modules are loaded, then ends the process.
RUN_CHILD = f"""
import json, os, sys, threading

def report():
    sys.stdin.readline()  # the test writes a line once it has read `daemon.ready`
    loaded = sorted(m for m in {HEAVY!r} if sys.modules.get(m) is not None)
    with open(sys.argv[1], "w") as f:
        json.dump(loaded, f)
    os._exit(0)

threading.Thread(target=report, daemon=True).start()
from postdeploy import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def test_the_daemon_logging_json_does_not_import_rich(
    paths: dict[str, str], tmp_path: Path
) -> None:
    """structlog imports rich for its console renderer whether or not it is used; the daemon
    whose stdout is not a terminal logs JSON lines and keeps rich out (~4 MB)."""
    report = tmp_path / "loaded.json"
    with subprocess.Popen(
        [sys.executable, "-c", RUN_CHILD, str(report), "run", "--config", paths["config"]],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("{") and json.loads(line).get("event") == "daemon.ready":
                break
        else:
            pytest.fail(f"the daemon stopped before it was ready:\n{''.join(lines)}")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    loaded = json.loads(report.read_text())
    assert "rich" not in loaded
    assert {"anyio", "structlog", "pydantic"} <= set(loaded)  # it really is the daemon
