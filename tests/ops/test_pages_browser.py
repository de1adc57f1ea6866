"""The status page in a real headless Chromium, against a real daemon: what a person sees.

Chromium (Debian's `chromium`, installed by `.ci/run`) loads the daemon's `/`, and the tests
look at the DOM it built and at the screenshot it took: the page is not blank, the verdict
and the reason are there, the failed ticks are drawn red and the passing ones green. Deploy
metadata full of markup is shown as text and runs nothing; a control page with the same
markup unescaped proves the test would see it run. Skipped, with the reason, where Chromium
cannot run.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from postdeploy import statuspage, timeline
from support.browser import Chromium, chromium_missing, hex_rgb

if TYPE_CHECKING:
    from ops.conftest import Ops

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

PWNED = "pwned"
HOSTILE = {
    "commit": "<script>document.title='pwned'</script>",
    "deployed_by": "<img src=x onerror=\"document.title='pwned'\">",
    "branch": "</title><script>document.title='pwned'</script>",
    "image": '"><svg onload="document.title=\'pwned\'">',
}


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    workdir = tmp_path / "chromium"
    workdir.mkdir()
    return Chromium(workdir)


def title_of(dom: str) -> str:
    found = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert found, dom[:500]
    return html.unescape(found.group(1))


def start(ops: Ops, **repos: dict[str, object]) -> str:
    """A daemon with the listener on a free port; returns its address."""
    ops.write_config(repos=repos, metrics={"listen": "127.0.0.1:0"})
    daemon = ops.start()
    address: str = daemon.wait_for("metrics.serving")["listen"]
    daemon.wait_for("daemon.ready")
    return address


def failed_rows(ops: Ops, repo: str, item: str) -> int:
    return sum(1 for r in ops.rows(repo, item) if not r["health_ok"])


def test_status_page_shows_the_verdict_the_reason_and_red_failed_ticks(
    ops: Ops, chromium: Chromium
) -> None:
    # `slow/open` stays open with passing and failing ticks (its threshold is out of reach);
    # `api/red` ends DEGRADED while the service fails.
    address = start(
        ops,
        api=ops.repo(fail_threshold=2),
        slow=ops.repo(window_s=120.0, fail_threshold=1000, fivexx_threshold=1.0),
    )
    ops.arm("slow", "open", {"commit": "fedcba9", "deployed_by": "ci"})
    ops.wait_until(lambda: len(ops.rows("slow", "open")) >= 4, "four passing ticks")
    ops.service.set(health="fail")
    ops.arm("api", "red")
    red = ops.wait_done("api", "red")
    assert red["status"] == "DEGRADED"
    ops.wait_until(lambda: failed_rows(ops, "slow", "open") >= 4, "four failed ticks")
    ops.service.set(health="ok")
    rows = len(ops.rows("slow", "open"))
    ops.wait_until(lambda: len(ops.rows("slow", "open")) >= rows + 2, "passing ticks again")

    url = f"http://{address}/"
    dom = chromium.dump_dom(url)
    assert title_of(dom) == "postdeploy: 1 open window"
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "DEGRADED" in text
    assert red["reason"] in text
    assert "slow/open" in text and "api/red" in text

    shot = chromium.screenshot(url)
    colours = shot.colours()
    white = colours.get((255, 255, 255), 0)
    assert len(colours) > 20 and white < shot.width * shot.height * 0.98, "a blank page"
    green = shot.count_near(hex_rgb(statuspage.OK_COLOUR))
    red_px = shot.count_near(hex_rgb(statuspage.FAILED_COLOUR))
    # A failed tick is a full-height bar (26 x 5 px), a passing one at least 2 px high; the
    # peak latency's bar is full height too.
    assert red_px >= 4 * 100, (red_px, green)
    assert green >= 100, (red_px, green)


def test_markup_in_deploy_metadata_runs_nothing(ops: Ops, chromium: Chromium) -> None:
    """Metadata holding script and markup, on an open window and a finished one, and a key
    full of markup (its rejection reason names it): the page's title stays, no element from
    the metadata exists, the text is shown literally."""
    address = start(ops, shop=ops.repo(), slow=ops.repo(window_s=120.0))
    ops.arm("shop", "done", HOSTILE)
    ops.wait_done("shop", "done")
    ops.arm("slow", "open", HOSTILE)
    ops.wait_until(lambda: len(ops.rows("slow", "open")) >= 1, "a probe of slow/open")
    bad = ops.item("shop", "badkey")
    bad.mkdir(parents=True)
    (bad / "armed").write_text('{"<img src=x onerror=alert(1)>": "x"}')
    ops.wait_until((bad / "rejected").is_file, "the rejection")

    dom = chromium.dump_dom(f"http://{address}/")
    assert title_of(dom) == "postdeploy: 1 open window"
    assert PWNED not in title_of(dom)
    assert "<script" not in dom.lower()
    assert not re.search(r"<img\b", dom, re.I)
    assert not re.search(r"<[a-z][^>]*\son\w+=", dom, re.I), "an element with a handler"
    # Shown as text: escaped in the serialised DOM, literal once unescaped.
    assert html.escape(HOSTILE["deployed_by"], quote=False)[:40] in dom
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert HOSTILE["deployed_by"] in text
    assert "<img src=x onerror=alert(1)>" in text  # the rejection reason, as text

    # The control: the same markup in a page that does not escape it runs in this browser,
    # so the assertions above would have seen it.
    control = "<title>postdeploy</title><p>" + HOSTILE["commit"] + "</p>"
    dom = chromium.dump_dom("data:text/html," + urllib.parse.quote(control))
    assert title_of(dom) == PWNED


# -- a window's page and its timeline picture ------------------------------------------------

RED, GREEN = hex_rgb(timeline.COLOUR["failed"]), hex_rgb(timeline.COLOUR["ok"])


def test_window_page_and_timeline_show_failed_ticks_red(ops: Ops, chromium: Chromium) -> None:
    """A window that passed a few ticks, then failed until DEGRADED: its page (through the
    listener) shows the verdict and the reason over its picture; its `timeline.svg`, opened
    alone, draws the failed ticks red and the passing ones green, where a healthy window's
    picture has no red at all."""
    address = start(ops, shop=ops.repo(), api=ops.repo(window_s=30.0, fail_threshold=2))
    ops.arm("shop", "green")
    assert ops.wait_done("shop", "green")["status"] == "HEALTHY"
    ops.arm("api", "red", {"commit": "9ab03d1"})
    ops.wait_until(lambda: len(ops.rows("api", "red")) >= 3, "three passing ticks")
    ops.service.set(health="fail")
    red = ops.wait_done("api", "red")
    assert red["status"] == "DEGRADED"

    url = f"http://{address}/w/api/red"
    dom = chromium.dump_dom(url)
    assert title_of(dom).startswith("api/red: DEGRADED")
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert red["reason"] in text and "9ab03d1" in text
    assert "<svg" in dom and "<script" not in dom.lower()
    page = chromium.screenshot(url, "window.png")
    assert len(page.colours()) > 20, "a blank page"

    degraded = chromium.screenshot((ops.item("api", "red") / "timeline.svg").as_uri(), "red.png")
    healthy = chromium.screenshot(
        (ops.item("shop", "green") / "timeline.svg").as_uri(), "green.png"
    )
    assert len(degraded.colours()) > 20 and len(healthy.colours()) > 20, "a blank picture"
    assert degraded.count_near(RED) >= 50, degraded.count_near(RED)
    assert degraded.count_near(GREEN) >= 20, degraded.count_near(GREEN)
    assert healthy.count_near(GREEN) >= 20
    assert healthy.count_near(RED) < degraded.count_near(RED) / 5, (
        healthy.count_near(RED),
        degraded.count_near(RED),
    )


def test_markup_in_metadata_runs_nothing_on_the_window_page_or_picture(
    ops: Ops, chromium: Chromium
) -> None:
    address = start(ops, shop=ops.repo())
    ops.arm("shop", "done", HOSTILE)
    ops.wait_done("shop", "done")
    dom = chromium.dump_dom(f"http://{address}/w/shop/done")
    assert title_of(dom).startswith("shop/done: HEALTHY")
    assert "<script" not in dom.lower() and not re.search(r"<img\b", dom, re.I)
    assert not re.search(r"<[a-z][^>]*\son\w+=", dom, re.I), "an element with a handler"
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert HOSTILE["deployed_by"] in text
    picture = chromium.dump_dom((ops.item("shop", "done") / "timeline.svg").as_uri())
    assert "<script" not in picture.lower() and "pwned" not in title_of_svg(picture)


def title_of_svg(dom: str) -> str:
    """What a script that ran would have changed: the SVG document's first <title>."""
    found = re.search(r"<title>(.*?)</title>", dom, re.S)
    return html.unescape(found.group(1)) if found else ""
