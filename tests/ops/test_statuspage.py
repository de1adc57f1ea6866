"""The status page's HTML (`statuspage`, pure): a snapshot in, a page out.

The page is parsed back with the standard library's HTMLParser: what a browser would build
(elements, attributes, text) is what the assertions look at, so an escaping mistake shows up
as an element that should not exist, not as a string that happens to match.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from postdeploy import statuspage

SNAPSHOT = Path(__file__).parent / "status_snapshot.json"
HOSTILE = "</title><script>document.title='pwned'</script><img src=x onerror=alert(1)>"


class Tree(HTMLParser):
    """The start tags (with attributes) and the text of a page."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def snapshot() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    return value


def test_the_fixed_snapshot_shows_windows_outcomes_and_links() -> None:
    page = statuspage.render_status_page(snapshot())
    tree = Tree(page)
    assert page.startswith("<!DOCTYPE html>")
    [refresh] = [m for m in tree.named("meta") if m.get("http-equiv") == "refresh"]
    assert refresh["content"] == str(statuspage.REFRESH_S)
    assert tree.named("script") == []
    links = {a["href"] for a in tree.named("a")}
    assert {
        "/w/shop/deploy-0042",
        "/w/billing/2026-11-27.1",
        "/w/shop/deploy-0041",
        "/w/shop/deploy-0040",
        "/metrics",
    } <= links
    text = tree.text
    for needle in (
        "postdeploy: 2 open windows",
        "DEGRADED",
        "ROLLBACK_OK",
        "health failed 3 consecutive probes (threshold 3); last: health: HTTP 503",
        "health streak 1 / 3",
        "5xx 0.125 / 0.2",
        "last failure: health: HTTP 503",
        "not yet taken up by the daemon",
        "no probes yet",
        "Rejected sentinels",
        "armed is not valid JSON",
    ):
        assert needle in text, needle
    [bar, _] = tree.named("progress")
    assert (bar["value"], bar["max"]) == ("4", "10")


@pytest.mark.parametrize(
    ("probes", "ok_bars", "failed_bars", "gaps"),
    [
        ([], 0, 0, 0),
        ([{"tick": 0, "latency_ms": 5.0, "ok": True}], 1, 0, 0),
        ([{"tick": 0, "latency_ms": 0.0, "ok": False}], 0, 1, 0),
        # tick 2 has no row: a grey gap between the passing and the failed ticks
        (
            [
                {"tick": 0, "latency_ms": 10.0, "ok": True},
                {"tick": 1, "latency_ms": 80.0, "ok": True},
                {"tick": 3, "latency_ms": 150.0, "ok": False},
            ],
            2,
            1,
            1,
        ),
        # 40 ticks: only the last SPARK_TICKS slots are drawn
        ([{"tick": t, "latency_ms": 3.0, "ok": t % 10 != 9} for t in range(40)], 21, 3, 0),
        # rows a hand-edited file could hold: no tick, a bool tick, a string latency
        ([{"latency_ms": 1.0, "ok": True}, {"tick": True, "ok": True}], 0, 0, 0),
        ([{"tick": 0, "latency_ms": "slow", "ok": True}], 1, 0, 0),
    ],
)
def test_sparkline_colours_each_tick_by_its_result(
    probes: list[dict[str, Any]], ok_bars: int, failed_bars: int, gaps: int
) -> None:
    svg = statuspage.sparkline(probes)
    fills = re.findall(r'fill="(#[0-9a-f]{6})"', svg)
    assert fills.count(statuspage.OK_COLOUR) == ok_bars
    assert fills.count(statuspage.FAILED_COLOUR) == failed_bars
    assert fills.count(statuspage.GAP_COLOUR) == gaps
    if not probes or not ok_bars + failed_bars:
        assert "<svg" not in svg
    else:
        assert len(Tree(svg).named("svg")) == 1


def test_sparkline_heights_follow_latency_and_failures_are_full_height() -> None:
    svg = statuspage.sparkline(
        [
            {"tick": 0, "latency_ms": 10.0, "ok": True},
            {"tick": 1, "latency_ms": 40.0, "ok": True},
            {"tick": 2, "latency_ms": 1.0, "ok": False},
        ]
    )
    heights = [float(h) for h in re.findall(r'height="([0-9.]+)" fill', svg)]
    full = statuspage.SPARK_H - 2
    assert heights == [pytest.approx(full / 4), full, full]


@pytest.mark.parametrize(
    ("ticks", "max_ticks", "shown", "bar"),
    [
        (4, 10, "4 / 10", ("4", "10")),
        (0, 30, "0 / 30", ("0", "30")),
        (12, 10, "12 / 10", ("10", "10")),  # a catch-up probe past the schedule
        (3, None, "3 / ?", None),  # not yet recorded by the daemon, repo not configured
        (3, 0, "3 / ?", None),
    ],
)
def test_progress(ticks: Any, max_ticks: Any, shown: str, bar: tuple[str, str] | None) -> None:
    html = statuspage.progress(ticks, max_ticks)
    tree = Tree(html)
    assert shown in tree.text
    bars = [(b["value"], b["max"]) for b in tree.named("progress")]
    assert bars == ([bar] if bar else [])


@pytest.mark.parametrize(
    ("repo", "item", "href"),
    [
        ("shop", "release-1", "/w/shop/release-1"),
        ("shop", "1.2_x-y", "/w/shop/1.2_x-y"),
        ("shop", "..", None),  # the name rule: never a link outside /w/REPO/ITEM
        ("shop", "a/b", None),
        ("shop", '"><script>', None),
        ("sh op", "x", None),
        (None, "x", None),
    ],
)
def test_window_links_only_for_valid_names(repo: Any, item: Any, href: str | None) -> None:
    tree = Tree(statuspage.window_link(repo, item))
    assert [a["href"] for a in tree.named("a")] == ([href] if href else [])
    assert tree.named("script") == []
    assert tree.text == f"{'' if repo is None else repo}/{item}"


def test_every_value_from_the_state_directory_is_escaped() -> None:
    """Metadata, reasons, error texts, names: shown as text, never parsed as markup."""
    snap = snapshot()
    window = snap["active"][0]
    window["metadata"] = {"commit": HOSTILE, "deployed_by": HOSTILE}
    window["last_failure"] = HOSTILE
    window["failing_checks"] = {HOSTILE: {"streak": 1, "detail": "x"}}
    snap["recent"][0]["reason"] = HOSTILE
    snap["recent"][0]["status"] = HOSTILE
    snap["recent"][1]["commit"] = HOSTILE
    snap["rejected"][0]["reason"] = HOSTILE
    snap["unreadable"] = [{"path": HOSTILE, "error": HOSTILE}]
    snap["state_dir"] = HOSTILE
    snap["deliveries"] = {"error": HOSTILE}
    page = statuspage.render_status_page(snap)
    tree = Tree(page)
    assert tree.named("script") == [] and tree.named("img") == []
    head = page[: page.index("</head>")]
    assert re.findall(r"<title>(.*?)</title>", head) == ["postdeploy: 2 open windows"]
    assert all("onerror" not in attrs for _, attrs in tree.tags)
    assert tree.text.count(HOSTILE) >= 6  # shown literally, as text
    assert "<script>" not in page


@pytest.mark.parametrize(
    ("snap", "needles"),
    [
        ({}, ["postdeploy: 0 open windows", "No window is open.", "No window has finished"]),
        ({"enabled": False}, ["Disabled (enabled = false)"]),
        (
            {"deliveries": {"pending": 2, "expired": 1, "items": []}},
            ["2 deliveries pending, 1 expired"],
        ),
        ({"deliveries": {"pending": 0, "expired": 0}}, ["nothing waiting for delivery"]),
        (
            {"unreadable": [{"path": "shop/x", "error": "is a symlink; never followed"}]},
            ["Unreadable work items", "shop/x", "is a symlink"],
        ),
        # a window with nothing but its names (a snapshot from an older postdeploy)
        (
            {"active": [{"repo": "r", "work_item": "i"}]},
            ["postdeploy: 1 open window", "0 failed", "? / ?"],
        ),
        (
            {"recent": [{"repo": "r", "work_item": "i", "status": None, "action_taken": None}]},
            ["?"],
        ),
    ],
)
def test_odd_and_partial_snapshots(snap: dict[str, Any], needles: list[str]) -> None:
    text = Tree(statuspage.render_status_page(snap)).text
    for needle in needles:
        assert needle in text, needle


def test_the_same_snapshot_makes_the_same_page() -> None:
    assert statuspage.render_status_page(snapshot()) == statuspage.render_status_page(snapshot())


def test_error_page_escapes_its_message() -> None:
    tree = Tree(statuspage.render_error_page("404", HOSTILE))
    assert tree.named("script") == [] and HOSTILE in tree.text
