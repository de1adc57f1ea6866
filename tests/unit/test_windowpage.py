"""One window's HTML page (`windowpage.py`, `postdeploy show REPO ITEM --html`): built from the
real files of a state directory, self-contained, every piece of text escaped."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from postdeploy import cli, layout
from postdeploy.config import Config, parse_config
from postdeploy.layout import ItemKey
from postdeploy.windowpage import render_window_page, window_page

ARMED = 1_795_766_400.0
KEY = ItemKey("shop", "ORCH-21")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & ]]>'


def probe(k: int, ok: bool = True, **extra: Any) -> dict[str, Any]:
    at = ARMED + 30 + 30 * k
    return {
        "tick": k,
        "scheduled_ts": at,
        "ts": at + 0.01,
        "health_ok": ok,
        "health_code": 200 if ok else 503,
        "total": 2,
        "fivexx": 0,
        "latency_ms": 12.5 if ok else 4.0,
        "detail": "health ok" if ok else f"health 503 {HOSTILE}",
        **extra,
    }


def write(item: Path, name: str, data: Any) -> None:
    if isinstance(data, list):
        text = "".join(json.dumps(line) + "\n" for line in data)
    else:
        text = data if isinstance(data, str) else json.dumps(data)
    (item / name).write_text(text)


@pytest.fixture
def item(state_root: Path) -> Path:
    """An open window's files: armed with hostile metadata, window.json, three probes."""
    path = state_root / KEY.repo / KEY.work_item
    path.mkdir(parents=True)
    metadata = {"commit": "4f1c2e0", "deployed_by": HOSTILE}
    write(path, layout.ARMED, metadata)
    start = {"armed_at": ARMED, "initial_delay_s": 30, "interval_s": 30, "max_ticks": 30}
    write(path, layout.WINDOW, {**start, "metadata": metadata})
    write(path, layout.SERIES, [probe(0), probe(1), probe(2, ok=False)])
    return path


def finish(item: Path) -> None:
    """The window ends DEGRADED and is rolled back, as the daemon writes it (no timeline.svg:
    a window finished before pictures existed)."""
    write(item, layout.SERIES, [probe(0), *(probe(k, ok=False) for k in (1, 2, 3))])
    write(item, layout.ROLLBACK_INTENT, {"argv": ["/bin/true"], "started_at": ARMED + 125})
    write(item, layout.ROLLBACK_RESULT, {"exit_code": 0, "detail": "exited 0", "duration_s": 2.5})
    write(item, layout.VERIFY, [probe(k) | {"ts": ARMED + 160 + 30 * k} for k in range(3)])
    reason = f"health failed 3 consecutive probes (threshold 3); last: {HOSTILE}"
    done = {
        "status": "DEGRADED",
        "action_taken": "ROLLBACK_OK",
        "reason": reason,
        "checks_total": 4,
        "checks_failed": 3,
        "window_s": 900,
        "finished_at": "2026-11-27T08:04:30+00:00",
        "rollback": {"exit_code": 0, "verification": {"recovered": True, "reason": "recovered"}},
    }
    write(item, layout.DONE, done)


def config(state_root: Path) -> Config:
    return parse_config(
        f'state_dir = "{state_root}"\n[repos.shop]\nbase_url = "http://127.0.0.1:9"\n'
        "probe_timeout_s = 2\n"
    )


def element_text(page: str, element_id: str) -> str:
    match = re.search(rf'<(\w+) id="{element_id}"[^>]*>(.*?)</\1>', page, re.S)
    assert match, element_id
    return match.group(2)


class Tags(HTMLParser):
    """Every element of a page with its attributes, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_self_contained(page: str) -> None:
    """No script, no event handler, nothing fetched from anywhere."""
    tags = Tags(page).tags
    assert "script" not in {tag for tag, _ in tags}
    attributes = {name for _, attrs in tags for name in attrs}
    assert not [a for a in attributes if a.startswith("on")], "an event handler"
    assert not attributes & {"src", "href", "xlink:href", "srcset", "action"}, "a resource"
    # The only URL is the SVG namespace, which names and fetches nothing.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "<script" not in page.lower()  # not even as text a parser might misread


def svg_of(page: str) -> ET.Element:
    match = re.search(r"<svg .*?</svg>", page, re.S)
    assert match, "the page has the picture inline"
    return ET.fromstring(match.group(0))  # our own output


def test_a_finished_window_without_a_picture_gets_one_drawn_from_its_files(
    item: Path, state_root: Path
) -> None:
    finish(item)
    assert not (item / layout.TIMELINE).exists()
    page = render_window_page(state_root, KEY, config(state_root))
    assert_self_contained(page)
    assert element_text(page, "verdict") == "DEGRADED"
    reason = element_text(page, "reason")
    assert "health failed 3 consecutive probes" in reason and "&lt;script&gt;" in reason
    picture = svg_of(page)
    classes = [set((e.get("class") or "").split()) for e in picture.iter()]
    assert {"tick", "failed"} in classes and {"tick", "ok"} in classes
    assert {"rollback", "ok"} in classes and {"verify", "ok"} in classes
    assert {"timeout-line"} in classes  # the config's probe timeout
    ids = {e.get("id") for e in picture.iter()} - {None}
    assert ids == {"tl-verdict", "tl-reason"}  # never the page's own ids twice
    assert page.count('<tr class="failed">') == 3 and page.count('<tr class="ok">') >= 1 + 3
    assert 'id="verification"' in page and "recovered" in page


def test_an_open_window_shows_its_ticks_so_far(item: Path, state_root: Path) -> None:
    page = render_window_page(state_root, KEY)
    assert_self_contained(page)
    assert element_text(page, "verdict") == "OPEN"
    assert "3 of 30" in page
    picture = svg_of(page)
    assert not [e for e in picture.iter() if "verdict-line" in (e.get("class") or "")]
    assert "&lt;script&gt;" in element_text(page, "metadata")


def test_other_states_have_a_page_too(item: Path, state_root: Path) -> None:
    missing = window_page(state_root, ItemKey("shop", "nope"))
    assert missing[0] == "missing" and element_text(missing[1], "verdict") == "MISSING"
    write(item, layout.REJECTED, f"armed is not valid JSON {HOSTILE}")
    state, page = window_page(state_root, KEY)
    assert state == "rejected" and element_text(page, "verdict") == "REJECTED"
    assert_self_contained(page)


def test_show_html_prints_the_page(
    item: Path, state_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finish(item)
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{state_root}"\n[repos.shop]\nbase_url = "http://127.0.0.1:9"\n')
    assert cli.main(["show", "shop", "ORCH-21", "--html", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!doctype html>") and element_text(out, "verdict") == "DEGRADED"
    assert cli.main(["show", "shop", "nope", "--html", "--config", str(path)]) == 1
    with pytest.raises(SystemExit):
        cli.main(["show", "shop", "ORCH-21", "--html", "--json", "--config", str(path)])
