"""`postdeploy demo` tells the whole story on this machine and says so in its exit code."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_one_green_and_one_rolled_back_window() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postdeploy", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "catalog/release-41: finished HEALTHY / NONE" in out
    assert "checkout/release-42: finished DEGRADED / ROLLBACK_OK" in out
    assert 'check "catalog"' in out  # the feature check, not /health, caught it
    assert "checked after the rollback: recovered" in out
