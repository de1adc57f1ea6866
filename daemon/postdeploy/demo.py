"""`postdeploy demo`: the whole story on this machine, in well under a minute.

Two bundled services start on 127.0.0.1 and the real daemon (`postdeploy run`, in its own
process, started and followed by the same harness as the tests': `postdeploy.testing`)
watches a deploy of each. "catalog" stays green. "checkout" passes its health
check, then its catalog starts coming back empty while `/health` still says ok: its feature
check fails three ticks in a row, the window goes DEGRADED, and the (demo) rollback command
restores it; probes after the rollback confirm the recovery.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postdeploy import layout
from postdeploy.demo_service import DemoService
from postdeploy.layout import ItemKey
from postdeploy.store import ItemStore
from postdeploy.testing.daemon import DaemonProcess
from postdeploy.testing.wait import WaitTimeout

CONFIG = """\
state_dir = "state"

[defaults]
window_s = 5.0
interval_s = 0.5
initial_delay_s = 0.5
probe_timeout_s = 0.4
fail_threshold = 3
fivexx_threshold = 0.2
min_samples = 4

[repos.catalog]
base_url = "{catalog}"
fivexx_paths = ["/status", "/queue"]

[repos.checkout]
base_url = "{checkout}"
fivexx_paths = ["/status", "/queue"]
auto_rollback = true
rollback_command = {rollback}
rollback_timeout_s = 10

[[repos.checkout.checks]]            # what "working" means: the catalog lists products
name = "catalog"
path = "/feature"
expect = ["status == 200", "$.items length > 0"]
"""

_NARRATE = {
    "daemon.ready": "daemon ready, watching {state_dir}",
    "window.armed": "{repo}/{work_item}: window armed, {max_ticks} ticks every {interval_s}s",
    "window.degraded": "{repo}/{work_item}: DEGRADED -> {decision}: {reason}",
    "rollback.started": "{repo}/{work_item}: running the rollback command",
    "rollback.finished": "{repo}/{work_item}: rollback finished: {action} ({detail})",
    "rollback.verification": "{repo}/{work_item}: checked after the rollback: {reason}",
    "window.finished": "{repo}/{work_item}: finished {status} / {action_taken}",
}


def _narrate(console: Console, line: dict[str, Any], started: float) -> None:
    if line.get("_raw") is not None:  # not a JSON log line: shown as printed
        console.print(line["_raw"], markup=False)
        return
    template = _NARRATE.get(str(line.get("event")))
    if template is None:
        return
    try:
        text = template.format(**line)
    except (KeyError, IndexError):
        return
    style = {"critical": "bold red", "error": "red", "warning": "yellow"}.get(
        str(line.get("level")), "green"
    )
    console.print(f"[dim]{time.monotonic() - started:5.1f}s[/] [{style}]{escape(text)}[/]")


def _arm(root: Path, key: ItemKey, meta: dict[str, str]) -> None:
    store = ItemStore(root, key)
    store.write_atomic_sync(layout.ARMED, json.dumps(meta).encode(), create_dirs=True)


def run(keep: bool = False) -> int:
    """Run the demo; returns the exit code (0 when both windows ended as expected)."""
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="postdeploy-demo-"))
    catalog, checkout = DemoService().start(), DemoService().start()
    rollback = [
        sys.executable,
        "-m",
        "postdeploy.demo_service",
        "set",
        checkout.url,
        "feature=ok",
    ]
    config = workdir / "config.toml"
    config.write_text(
        CONFIG.format(catalog=catalog.url, checkout=checkout.url, rollback=json.dumps(rollback))
    )
    root = workdir / "state"
    console.print(f"[bold]postdeploy demo[/] in {workdir}")
    console.print(f"  catalog  service at {catalog.url} (will stay green)")
    console.print(f"  checkout service at {checkout.url} (will go red under traffic)\n")
    started = time.monotonic()
    daemon = DaemonProcess(
        config,
        workdir / "daemon.stderr",
        on_line=lambda line: _narrate(console, line, started),
    )
    try:
        try:
            daemon.wait_ready()
        except WaitTimeout:
            _failed(console, daemon, "the daemon did not start")
            return 1
        _arm(root, ItemKey("catalog", "release-41"), {"commit": "4f1c2e0", "deployed_by": "demo"})
        _arm(root, ItemKey("checkout", "release-42"), {"commit": "9ab03d1", "deployed_by": "demo"})
        time.sleep(1.6)
        console.print(
            "[dim]  ... checkout's catalog starts coming back empty; /health still says 200 ok[/]"
        )
        checkout.set(feature="broken")
        try:
            daemon.wait_count("window.finished", 2, timeout=45)
        except WaitTimeout:
            _failed(console, daemon, "the windows did not both finish")
    finally:
        daemon.close(signal.SIGTERM, timeout=15)
        catalog.stop()
        checkout.stop()
    finished = {str(line.get("repo")): line for line in daemon.find("window.finished")}
    ok = _summary(console, root, finished)
    if keep:
        console.print(
            f"Each window's files are in {root}/<repo>/<work_item>/: armed, series.jsonl, "
            "report.md, done."
        )
        console.print(f"The rolled-back window's timeline: {root}/checkout/release-42/timeline.svg")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        console.print("The demo's files are removed; `postdeploy demo --keep` keeps them.")
    return 0 if ok else 1


def _failed(console: Console, daemon: DaemonProcess, why: str) -> None:
    """Say what went wrong, with the end of what the daemon wrote on stderr."""
    console.print(f"[red]{why}[/]")
    console.print(daemon.stderr_text()[-3000:], markup=False)


def _summary(console: Console, root: Path, finished: dict[str, dict[str, Any]]) -> bool:
    table = Table(title="\nOutcomes", title_justify="left")
    for column in ("window", "status", "action", "why"):
        table.add_column(column, overflow="fold")
    for repo, item in (("catalog", "release-41"), ("checkout", "release-42")):
        done_file = root / repo / item / layout.DONE
        done = json.loads(done_file.read_text()) if done_file.exists() else {}
        table.add_row(
            f"{repo}/{item}",
            str(done.get("status", "(unfinished)")),
            str(done.get("action_taken", "")),
            escape(str(done.get("reason", ""))),
        )
    console.print(table)
    expected = {"catalog": ("HEALTHY", "NONE"), "checkout": ("DEGRADED", "ROLLBACK_OK")}
    return all(
        (finished.get(repo, {}).get("status"), finished.get(repo, {}).get("action_taken")) == want
        for repo, want in expected.items()
    )
