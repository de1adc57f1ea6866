"""The git report commits the window's picture with its report (`gitreport.py`), in a real
git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from postdeploy import gitreport
from postdeploy.config import GitReportSettings
from postdeploy.layout import ItemKey
from postdeploy.report import Outcome
from postdeploy.verdict import Action, Status
from support.outcome import outcome

SVG = '<svg xmlns="http://www.w3.org/2000/svg"/>\n'


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    ).stdout


def healthy(item: str) -> Outcome:
    """A HEALTHY window of shop/`item` whose picture names the item."""
    return outcome(
        key=ItemKey("shop", item),
        status=Status.HEALTHY,
        action_taken=Action.NONE,
        reason="ok",
        timeline=SVG.replace("/>", f"><title>{item}</title></svg>"),
    )


def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "shop"
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    return path


async def test_the_picture_is_committed_beside_the_report(tmp_path: Path) -> None:
    tree = worktree(tmp_path)
    settings = GitReportSettings(worktree=str(tree))
    report = "# r\n\n![timeline](timeline.svg)\n"
    assert await gitreport.publish(settings, healthy("r1"), report, "")
    folder = tree / "docs" / "work-items" / "r1"
    assert (folder / "post-deploy-log.md").read_text() == report
    assert "<title>r1</title>" in (folder / "timeline.svg").read_text()
    committed = git("show", "--name-only", "--format=", "HEAD", cwd=tree).split()
    assert committed == ["docs/work-items/r1/post-deploy-log.md", "docs/work-items/r1/timeline.svg"]


async def test_reports_sharing_a_folder_keep_their_own_pictures(tmp_path: Path) -> None:
    tree = worktree(tmp_path)
    settings = GitReportSettings(worktree=str(tree), path="deploys/{work_item}.md")
    for item in ("r1", "r2"):
        report = f"# {item}\n\n![timeline](timeline.svg)\n"
        assert await gitreport.publish(settings, healthy(item), report, "")
    for item in ("r1", "r2"):
        text = (tree / "deploys" / f"{item}.md").read_text()
        assert f"![timeline]({item}.timeline.svg)" in text  # the link follows the picture
        picture = (tree / "deploys" / f"{item}.timeline.svg").read_text()
        assert f"<title>{item}</title>" in picture
    assert not (tree / "deploys" / "timeline.svg").exists()


async def test_a_window_without_a_picture_commits_its_report_alone(tmp_path: Path) -> None:
    tree = worktree(tmp_path)
    settings = GitReportSettings(worktree=str(tree))
    plain = Outcome(**{**healthy("r1").__dict__, "timeline": ""})
    assert await gitreport.publish(settings, plain, "# r1\n", "")
    committed = git("show", "--name-only", "--format=", "HEAD", cwd=tree).split()
    assert committed == ["docs/work-items/r1/post-deploy-log.md"]
