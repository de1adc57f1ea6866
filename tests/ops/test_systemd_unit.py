"""The unit file: `systemd-analyze verify` accepts it (alone and with every example drop-in),
it says what the operations contract needs, and its exposure figure is the one documented."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = ROOT / "systemd"
UNIT = UNIT_DIR / "postdeploy.service"
DROPINS = UNIT_DIR / "postdeploy.service.d"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
INSTALLED = "/opt/postdeploy/venv/bin/postdeploy"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def _settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given in a unit file (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_says_what_operations_need() -> None:
    s = _settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert _seconds(one["WatchdogSec"]) > 0
    assert one["ExecStart"] == f"{INSTALLED} run --config /etc/postdeploy/config.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "2"
    # SIGTERM reaches the daemon only, not a rollback's process group. A rollback in progress
    # outlives `systemctl stop` because the daemon extends the stop timeout while it runs
    # (EXTEND_TIMEOUT_USEC, tests/ops/test_systemd_notify.py), not by a hand-set long one:
    # no drop-in raises it.
    assert 30 <= _seconds(one["TimeoutStopSec"]) < 300
    for dropin in DROPINS.glob("*.conf"):
        assert "TimeoutStopSec" not in _settings(dropin.read_text()), dropin
    assert one["KillMode"] == "mixed"
    assert (one["User"], one["DynamicUser"]) == ("postdeploy", "no")
    assert one["StateDirectory"] == "postdeploy"
    assert one["StateDirectoryMode"] == "2770"
    assert one["UMask"] == "0007"
    assert one["Group"]
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert one["CapabilityBoundingSet"] == ""
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["SystemCallFilter"] == "@system-service"
    assert one["SystemCallArchitectures"] == "native"


def _copy_with_existing_binary(tmp_path: Path, dropins: bool) -> Path:
    """A copy of the unit (and drop-ins) whose ExecStart names this venv's `postdeploy`:
    verify insists that the binary exists, and /opt/postdeploy is not installed here."""
    binary = Path(sys.executable).parent / "postdeploy"
    assert binary.is_file(), binary
    target = tmp_path / ("with-dropins" if dropins else "alone")
    target.mkdir()
    files = [UNIT] + (sorted(DROPINS.glob("*.conf")) if dropins else [])
    for source in files:
        dest = target / source.relative_to(UNIT_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(source.read_text().replace(INSTALLED, str(binary)))
    return target / UNIT.name


@needs_analyze
@pytest.mark.parametrize("dropins", [False, True], ids=["alone", "with-dropins"])
def test_systemd_analyze_verify(tmp_path: Path, dropins: bool) -> None:
    """No error and no warning about our files (verify exits 0 on an unknown key or a bad
    value, so its messages are checked too)."""
    unit = _copy_with_existing_binary(tmp_path, dropins)
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "postdeploy" in line or str(tmp_path) in line
    ]
    assert result.returncode == 0, result.stderr
    assert not ours, "\n".join(ours)
    if dropins:
        assert len(list((unit.parent / DROPINS.name).glob("*.conf"))) >= 2


@needs_analyze
def test_the_documented_exposure_figure_is_current(tmp_path: Path) -> None:
    """docs/OPERATIONS.md quotes `systemd-analyze security --offline=true` on the unit as
    shipped (no drop-ins); it must be today's figure, and stay "OK" or better."""
    unit = _copy_with_existing_binary(tmp_path, dropins=False)
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for postdeploy\.service: ([\d.]+) (\w+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    figure, verdict = float(match.group(1)), match.group(2)
    assert verdict == "OK" and figure <= 2.0, match.group(0)
    documented = re.search(r"exposure level[^\n]*?\b(\d\.\d) OK", OPERATIONS.read_text())
    assert documented, "docs/OPERATIONS.md does not quote the exposure figure"
    assert float(documented.group(1)) == figure
