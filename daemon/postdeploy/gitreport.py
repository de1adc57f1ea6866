"""Publishing a finished window's report into a git worktree (optional, best-effort).

As the seed did: the report lands in the repo's worktree next to the work item's other
documents, is committed, and optionally pushed. It runs after `done` is written, so it can
never delay or change a verdict; every git command has a timeout and runs without a shell.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import structlog

from postdeploy.config import GitReportSettings
from postdeploy.layout import TIMELINE
from postdeploy.report import Outcome

log = structlog.get_logger("postdeploy.gitreport")
PICTURE_LINK = f"]({TIMELINE})"  # how report.md links the picture beside it

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "postdeploy",
    "GIT_AUTHOR_EMAIL": "postdeploy@localhost",
    "GIT_COMMITTER_NAME": "postdeploy",
    "GIT_COMMITTER_EMAIL": "postdeploy@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}


async def _git(worktree: Path, args: list[str], timeout: float) -> tuple[int | None, str]:
    """Run `git -C worktree ARGS`; returns (exit code or None on timeout, output tail)."""
    env = {**os.environ, **_GIT_ENV}
    with anyio.move_on_after(timeout):
        result = await anyio.run_process(
            ["git", "-C", str(worktree), *args],
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        return result.returncode, output[-300:]
    return None, f"timed out after {timeout:g}s"


async def publish(settings: GitReportSettings, outcome: Outcome, report: str, branch: str) -> bool:
    """Write `report` into the worktree, commit it, push if configured; True on success."""
    key = outcome.key
    fields = {"repo": key.repo, "work_item": key.work_item}
    worktree = Path(settings.worktree.format(**fields))
    relative = settings.path.format(**fields)
    target = worktree / relative
    files = {relative: report}
    if outcome.timeline:
        picture = picture_path(settings.path, relative)
        if Path(picture).name != TIMELINE:  # the report's link follows the picture
            files[relative] = report.replace(PICTURE_LINK, f"]({Path(picture).name})", 1)
        files[picture] = outcome.timeline
    try:
        for name, text in files.items():
            await anyio.to_thread.run_sync(_write, worktree, worktree / name, text)
    except OSError as exc:
        log.warning("gitreport.write_failed", path=str(target), error=str(exc))
        return False
    message = f"post-deploy {outcome.status}/{outcome.action_taken} for {key.work_item}"
    steps = [["add", "--", *files], ["commit", "-m", message, "--", *files]]
    if settings.push:
        steps.append(["push", settings.remote, f"HEAD:{branch}" if branch else "HEAD"])
    for args in steps:
        code, output = await _git(worktree, args, settings.timeout_s)
        if code != 0:
            log.warning("gitreport.git_failed", command=args[0], exit_code=code, output=output)
            return False
    log.info("gitreport.published", path=str(target), pushed=settings.push)
    return True


def picture_path(template: str, report: str) -> str:
    """Where the window's picture goes in the worktree: `timeline.svg` beside the report when
    each work item has a folder of its own (as by default), else named after the report
    (`docs/ORCH-1.md` -> `docs/ORCH-1.timeline.svg`), so reports sharing a folder keep
    their own pictures."""
    if "{work_item}" in str(Path(template).parent):
        return str(Path(report).with_name(TIMELINE))
    return str(Path(report).with_suffix(".timeline.svg"))


def _write(worktree: Path, target: Path, text: str) -> None:
    if not worktree.is_dir():
        raise FileNotFoundError(f"worktree {worktree} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
