"""The pages on the metrics listener: `/` (the status page) and `/w/REPO/ITEM` (a window's).

First the listener's application in this process, on a state directory made by hand (broken
item directories, symlinks, odd paths), then the real daemon: the page over HTTP, its
headers, the routing, and the same page after a restart.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from postdeploy import metrics, status
from postdeploy.config import Config, parse_config
from support.browser import fetch

if TYPE_CHECKING:
    from ops.conftest import Ops

# Paths that must never reach the disk: each breaks the name rule somewhere.
BAD_PATHS = [
    "/w/shop",
    "/w/shop/",
    "/w/shop/green/x",
    "/w/shop/..",
    "/w/../shop/green",
    "/w/shop/%2e%2e",
    "/w/shop/..%2f..%2fetc",
    "/w/.hidden/x",
    "/w//green",
    "/w/shop/a%00b",
    "/w/sh%20op/green",
]


def config_for(tmp_path: Path) -> Config:
    return parse_config(
        'state_dir = "state"\n[defaults]\nwindow_s = 60\ninterval_s = 2\nprobe_timeout_s = 1\n'
        '[repos.shop]\nbase_url = "http://127.0.0.1:1"\n',
        str(tmp_path / "config.toml"),
    )


def call(
    app: Callable[..., Any], path: str, method: str = "GET"
) -> tuple[str, dict[str, str], str]:
    """One request to a WSGI application: (status line, headers, body text)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
    setup_testing_defaults(environ)
    environ["wsgi.errors"] = io.StringIO()
    answer: dict[str, Any] = {}

    def start_response(code: str, headers: list[tuple[str, str]]) -> None:
        answer["code"], answer["headers"] = code, dict(headers)

    body = b"".join(app(environ, start_response))
    return answer["code"], answer["headers"], body.decode()


def finished(item: Path, status_: str = "HEALTHY", reason: str = "fine") -> None:
    item.mkdir(parents=True)
    (item / "armed").write_text("")
    done = {"status": status_, "action_taken": "NONE", "reason": reason}
    (item / "done").write_text(json.dumps({**done, "finished_at": "2026-11-27T07:00:00+00:00"}))


def test_broken_item_directories_are_listed_as_unreadable(tmp_path: Path) -> None:
    """A symlinked item, an item that is a file, a series that is a directory, a bad name:
    the page still answers 200, lists each as unreadable, and the good window as usual."""
    config = config_for(tmp_path)
    state = config.state_path
    finished(state / "shop" / "good", "DEGRADED", "health failed 3 consecutive probes")
    elsewhere = tmp_path / "elsewhere"
    finished(elsewhere, "HEALTHY", "SECRET-OUTSIDE-THE-STATE-DIR")
    (state / "shop" / "link").symlink_to(elsewhere)
    (state / "shop" / "afile").write_text("not a directory")
    (state / "shop" / "bad name").mkdir()
    series_dir = state / "shop" / "dirseries"
    (series_dir / "series.jsonl").mkdir(parents=True)
    (series_dir / "armed").write_text("")

    snap = status.collect(config)
    problems = {u["path"]: u["error"] for u in snap["unreadable"]}
    assert "symlink" in problems["shop/link"]
    assert "not a directory" in problems["shop/afile"]
    assert "name does not match" in problems["shop/bad name"]
    assert "Is a directory" in problems["shop/dirseries"]
    assert [r["work_item"] for r in snap["recent"]] == ["good"]

    code, headers, page = call(metrics.Pages(lambda: config), "/")
    assert code == "200 OK"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    for needle in ("Unreadable work items", "shop/link", "shop/dirseries", "DEGRADED"):
        assert needle in page, needle
    assert "SECRET-OUTSIDE-THE-STATE-DIR" not in page  # the symlink was never followed
    # ... and its window page is never served either.
    code, _, page = call(metrics.Pages(lambda: config), "/w/shop/link")
    assert code.startswith("404") and "SECRET-OUTSIDE" not in page


@pytest.mark.parametrize("path", BAD_PATHS)
def test_window_paths_that_break_the_name_rule_are_404(tmp_path: Path, path: str) -> None:
    config = config_for(tmp_path)
    finished(config.state_path / "shop" / "green")
    code, headers, _ = call(metrics.Pages(lambda: config), path)
    assert code.startswith("404")
    assert headers["X-Content-Type-Options"] == "nosniff"


def counting_collect(monkeypatch: pytest.MonkeyPatch, *faults: Exception) -> list[int]:
    """Count the reads of the state directory (`status.collect` calls); the first ones raise
    `faults`, in order. Returns the list that grows by one per read."""
    calls: list[int] = []
    real = status.collect

    def collect(config: Config, now: float | None = None) -> dict[str, Any]:
        calls.append(1)
        if len(calls) <= len(faults):
            raise faults[len(calls) - 1]
        return real(config, now)

    monkeypatch.setattr(status, "collect", collect)
    return calls


def test_a_failing_read_is_a_500_page_and_the_next_request_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_for(tmp_path)
    counting_collect(monkeypatch, RuntimeError("<disk on fire>"))
    monkeypatch.setattr(metrics, "SNAPSHOT_REUSE_S", 0.0)
    pages = metrics.Pages(lambda: config)
    code, _, page = call(pages, "/")
    assert code.startswith("500") and "&lt;disk on fire&gt;" in page
    code, _, page = call(pages, "/")
    assert code == "200 OK" and "0 open windows" in page


def test_requests_close_together_share_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_for(tmp_path)
    calls = counting_collect(monkeypatch)
    pages = metrics.Pages(lambda: config)
    for _ in range(5):
        assert call(pages, "/")[0] == "200 OK"
    assert len(calls) == 1
    monkeypatch.setattr(metrics, "SNAPSHOT_REUSE_S", 0.0)
    call(pages, "/")
    assert len(calls) == 2


def test_window_page_is_rendered_by_windowpage(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    finished(config.state_path / "shop" / "green", "DEGRADED", "health <b>failed</b>")
    code, headers, page = call(metrics.Pages(lambda: config), "/w/shop/green")
    assert code == "200 OK" and headers["Content-Type"].startswith("text/html")
    assert "<b>failed</b>" not in page


def test_status_page_on_a_real_daemon_and_after_a_restart(ops: Ops) -> None:
    """The daemon serves / beside /metrics: the open window with its progress, the recent
    outcomes with their reasons, security headers; a restarted daemon shows the same from
    the files."""
    ops.write_config(
        repos={
            "shop": ops.repo(),
            "api": ops.repo(fail_threshold=2),
            "slow": ops.repo(window_s=60.0),
        },
        metrics={"listen": "127.0.0.1:0"},
    )
    daemon = ops.start()
    address = daemon.wait_for("metrics.serving")["listen"]
    daemon.wait_for("daemon.ready")
    ops.arm("shop", "green", {"commit": "abc1234", "deployed_by": "ci"})
    assert ops.wait_done("shop", "green")["status"] == "HEALTHY"
    ops.service.set(health="fail")
    ops.arm("api", "red")
    red = ops.wait_done("api", "red")
    assert red["status"] == "DEGRADED"
    ops.service.set(health="ok")
    ops.arm("slow", "open", {"commit": "fedcba9", "deployed_by": "<b>alice</b>"})
    ops.wait_until(lambda: len(ops.rows("slow", "open")) >= 2, "two probes of slow/open")

    page = fetch(address, "/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for needle in (
        'href="/w/slow/open"',
        'href="/w/api/red"',
        'href="/w/shop/green"',
        "<progress",
        "<svg",
        "DEGRADED",
        red["reason"].replace("'", "&#x27;").replace('"', "&quot;"),
        "by &lt;b&gt;alice&lt;/b&gt;",
        '<meta http-equiv="refresh"',
    ):
        assert needle in page.text, needle
    assert "<script" not in page.text

    head = fetch(address, "/", method="HEAD")
    assert head.status == 200 and head.body == b""
    post = fetch(address, "/", method="POST")
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
    for path in (
        "/w/../../etc/passwd",
        "/w/slow/../../x",
        "/w/%2e%2e/%2e%2e/etc",  # the server decodes %-escapes: still the name rule
        "/w/slow%2f..%2f../x",
        "/w/slow/missing",
    ):
        assert fetch(address, path).status == 404, path
    window = fetch(address, "/w/slow/open")
    assert window.status == 200 and "slow/open" in window.text
    assert window.headers["content-security-policy"] == csp
    prom = fetch(address, "/metrics")
    assert prom.status == 200 and prom.headers["content-type"].startswith("text/plain")
    assert "postdeploy_open_windows 1.0" in prom.text

    assert daemon.stop(signal.SIGTERM) == 0
    again = ops.start(name="again")
    address = again.wait_for("metrics.serving")["listen"]
    again.wait_for("daemon.ready")
    page = fetch(address, "/")
    assert page.status == 200
    for needle in ('href="/w/slow/open"', 'href="/w/api/red"', "DEGRADED", "HEALTHY"):
        assert needle in page.text, needle
    assert again.unhandled() == [] and daemon.unhandled() == []
