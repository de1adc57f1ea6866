"""A reload, or a bug, in the moment a batch of new windows is being recorded.

The intake judges a new window, then writes its `window.json` (a worker-thread hop), then
starts it. A SIGHUP reload can land in between: the window must then get what the reload gives
the open windows (new settings, the judged ones if its repo was removed, DISABLED if the kill
switch was thrown), and the daemon must not stop. `CHAOS_HOLD` (inject/sitecustomize.py)
holds the write until the test has reloaded, so the race is hit every time, not by luck.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support.wait import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from chaos.conftest import Target
    from support.daemon import DaemonPool


def _config(kit: Any, urls: dict[str, str], *, enabled: bool, fail_threshold: int) -> str:
    return str(
        kit.render_toml(
            {
                "state_dir": "state",
                "enabled": enabled,
                "defaults": {
                    "window_s": 0.6,
                    "interval_s": 0.1,
                    "initial_delay_s": 0.05,
                    "probe_timeout_s": 0.09,
                    "fail_threshold": fail_threshold,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "repos": {name: {"base_url": url} for name, url in urls.items()},
            }
        )
    )


@pytest.mark.parametrize("change", ["repo-removed", "kill-switch", "threshold"])
def test_reload_while_a_new_window_is_recorded(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], change: str
) -> None:
    """(Regressions: "repo-removed" stopped the daemon with a KeyError; "kill-switch" let the
    new window run on, probing, with postdeploy disabled.)"""
    shop, other = targets(), targets()
    if change == "threshold":
        shop.set(health="fail")
    urls = {"shop": shop.url, "other": other.url}
    path = tmp_path / "config.toml"
    path.write_text(_config(kit, urls, enabled=True, fail_threshold=50))
    gate = tmp_path / "release"
    run = daemons.start(path, {"PYTHONPATH": str(kit.INJECT_DIR), "CHAOS_HOLD": str(gate)})

    item = tmp_path / "state" / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "armed").touch()
    wait_until(
        Path(f"{gate}.held").exists, "the held write of window.json", daemon=run, while_alive=True
    )

    if change == "repo-removed":
        path.write_text(_config(kit, {"other": other.url}, enabled=True, fail_threshold=50))
    elif change == "kill-switch":
        path.write_text(_config(kit, urls, enabled=False, fail_threshold=50))
    else:
        path.write_text(_config(kit, urls, enabled=True, fail_threshold=2))
    mark = run.count()
    run.send(signal.SIGHUP)
    run.wait_for("config.reloaded", after=mark)
    gate.touch()

    wait_until((item / "done").exists, "done", daemon=run, while_alive=True)
    done = json.loads((item / "done").read_text())
    if change == "repo-removed":
        # The window keeps the settings it was judged with, and runs to its end.
        assert done["status"] == "HEALTHY", done
        run.wait_for("config.repo_removed", repo="shop", work_item="w1")
    elif change == "kill-switch":
        assert done["status"] == "DISABLED", done
        assert done["checks_total"] == 0, done
    else:
        assert done["status"] == "DEGRADED", done
        assert done["checks_failed"] == 2, done  # the reloaded threshold, not the judged 50
    assert run.alive
    assert run.unhandled() == []
    assert run.stop() == 0


def test_a_bug_while_recording_a_batch_is_contained(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """An unexpected exception in the intake's group commit is logged with its traceback;
    the daemon goes on, and the next rescan starts the window. (Regression: the exception
    ended the daemon.)"""
    shop = targets()
    path = tmp_path / "config.toml"
    path.write_text(_config(kit, {"shop": shop.url}, enabled=True, fail_threshold=3))
    run = daemons.start(path, {"PYTHONPATH": str(kit.INJECT_DIR), "CHAOS_BUG": "window.json:1"})
    item = tmp_path / "state" / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "armed").touch()

    failed = run.wait_for("intake.batch_failed")
    assert failed is not None
    assert "injected bug" in failed["error"], failed
    assert failed["work_items"] == ["shop/w1"], failed
    # The traceback is in the log line, down to the frame that raised.
    frames = [frame["name"] for exc in failed["exception"] for frame in exc["frames"]]
    assert "write_all" in frames, failed["exception"]
    wait_until((item / "done").exists, "done", daemon=run, while_alive=True)
    assert json.loads((item / "done").read_text())["status"] == "HEALTHY"
    assert run.alive
    assert run.stop() == 0
