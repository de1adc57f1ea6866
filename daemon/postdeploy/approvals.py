"""A person's rollback, the daemon's side: the requests `postdeploy rollback` leaves, and
their answers (the rules are `manual`'s, pure; the rollback itself is `reaction`'s).

`postdeploy rollback REPO ITEM` writes `<item>/rollback.request`, then an empty poke
`<state_dir>/.requests/<repo>~<item>`: the daemon watches that one directory (inotify, and a
look at start-up and at each rescan), so it hears of a request at once, even for a finished
window whose directory it no longer watches. A request is answered by the window's runner
(an open window ends DEGRADED and rolls back), by a rollback of the finished window, or by
`rollback.refused`; the poke is removed once the answer is on disk, so a daemon that stops
first answers after its restart.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path

import anyio
import structlog

from postdeploy import layout, manual, reaction
from postdeploy.config import Config
from postdeploy.events import Event
from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.rollback import rollback_env
from postdeploy.runner import WindowRunner
from postdeploy.store import ItemStore

log = structlog.get_logger("postdeploy.approvals")


class Approvals:
    """Every request being answered, at most one per work item at a time."""

    def __init__(
        self,
        root: Path,
        *,
        config: Callable[[], Config],
        runners: Mapping[ItemKey, WindowRunner],
        emit: Callable[[Event], Awaitable[None]],
        spawn: Callable[..., None],
        report: Callable[[str, str], None],
        shutdown: anyio.Event,
    ) -> None:
        self.root = root
        self.dir = root / layout.REQUESTS_DIR
        self._config = config  # the config in force now (a reload replaces it)
        self._runners = runners
        self._emit = emit
        self._spawn = spawn
        self._report = report
        self._shutdown = shutdown
        self._requesting: set[ItemKey] = set()

    def make_dir(self) -> None:
        with contextlib.suppress(FileExistsError):
            self.dir.mkdir(0o2775)
            self.dir.chmod(0o2775)  # the deploy group may leave requests

    async def take(self) -> None:
        """Handle every poke in `.requests` that is not being handled yet."""
        try:
            names = await anyio.to_thread.run_sync(_list_pokes, self.root)
        except OSError as exc:
            log.error("requests.unreadable", path=str(self.dir), error=str(exc))
            return
        for name in names:
            key = manual.key_of_poke(name)
            if key is None:
                self._report(str(self.dir / name), "not REPO~WORK_ITEM")
            elif key not in self._requesting:
                self._requesting.add(key)
                self._spawn(self._handle_request, key)

    async def _handle_request(self, key: ItemKey) -> None:
        """Carry out, or refuse, a person's rollback of `key`; the poke is removed once it is
        answered (it stays for the restart when the daemon stops first)."""
        bound = structlog.contextvars.bound_contextvars(repo=key.repo, work_item=key.work_item)
        try:
            with bound:
                if await self._answer_request(key):
                    await anyio.to_thread.run_sync(_unpoke, self.root, manual.poke_name(key))
        except reaction.Interrupted:
            log.warning("rollback.request_paused", note="answered after the restart")
        except (OSError, UnsafePath, ValueError) as exc:
            log.error("rollback.request_failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug here must not stop the daemon or other windows
            log.exception("rollback.request_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._requesting.discard(key)

    async def _answer_request(self, key: ItemKey) -> bool:
        """True once the request is answered for good."""
        store = ItemStore(self.root, key)
        data = await store.read(layout.ROLLBACK_REQUEST)
        if data is None:
            return True  # nothing asked (a stray poke)
        request = manual.parse_request(data)
        log.warning("rollback.requested", requested_by=request.requested_by, reason=request.reason)
        runner = self._runners.get(key)
        if runner is not None:
            taken = runner.request_rollback(request)
            await runner.ended.wait()
            if not runner.completed:
                return False  # shut down (or vanished) first: asked again after a restart
            if taken:
                return True
        return await self._manual_rollback(key, store, request)

    async def _manual_rollback(
        self, key: ItemKey, store: ItemStore, request: manual.Request
    ) -> bool:
        """A person's rollback of a work item that has no open window."""
        done = await store.read_json(layout.DONE)
        repo = self._config().repos.get(key.repo)
        decision = manual.judge_finished(
            done,
            armed=await store.exists(layout.ARMED),
            intent=await store.exists(layout.ROLLBACK_INTENT),
            refused=await store.exists(layout.ROLLBACK_REFUSED),
            command=bool(repo and repo.rollback_command),
        )
        if isinstance(decision, manual.Refuse):
            log.warning(
                "rollback.refused",
                reason=decision.reason,
                requested_by=request.requested_by,
                request_reason=request.reason,
            )
            await reaction.durably(
                layout.ROLLBACK_REFUSED,
                partial(
                    store.write_atomic, layout.ROLLBACK_REFUSED, decision.reason.encode() + b"\n"
                ),
                self._shutdown,
            )
            await self._emit(
                Event(
                    "rollback.refused",
                    key,
                    decision.reason,
                    time.time(),
                    evidence=request.to_dict(),
                )
            )
            return True
        assert done is not None and repo is not None and repo.rollback_command
        start = await store.read_json(layout.WINDOW)
        metadata = start.get("metadata", {}) if start else {}
        metadata = {k: v for k, v in metadata.items() if isinstance(v, str)}
        status, action_was = str(done.get("status")), str(done.get("action_taken"))
        await self._emit(
            Event(
                "rollback.manual",
                key,
                f"{request.requested_by} asked for the rollback: "
                f"{request.reason or '(no reason given)'}",
                time.time(),
                status=status,
                action_taken=action_was,
                evidence=request.to_dict(),
                metadata=metadata,
            )
        )
        env = rollback_env(
            os.environ,
            repo.rollback_env,
            repo=key.repo,
            work_item=key.work_item,
            reason=request.reason or str(done.get("reason", "")),
            metadata=metadata,
        )
        settings = self._config().window_settings(key.repo)
        action, result = await reaction.rollback(
            store,
            list(repo.rollback_command),
            env,
            settings.rollback_timeout_s,
            self._shutdown,
            manual=True,
        )
        detail = reaction.detail_of(result)
        await self._emit(
            Event(
                reaction.ROLLBACK_EVENT[action],
                key,
                f"a person's rollback {action}: {detail}",
                time.time(),
                status=status,
                action_taken=str(action),
                evidence={"rollback": result.to_json() if result else None, **request.to_dict()},
                metadata=metadata,
            )
        )
        record = reaction.ManualRollback(request, action, result).to_json()
        await reaction.durably(
            layout.DONE,
            partial(store.write_json, layout.DONE, {**done, "manual_rollback": record}),
            self._shutdown,
        )
        log.warning("rollback.manual_finished", action=str(action), detail=detail)
        return True


@contextlib.contextmanager
def _requests_fd(root: Path) -> Iterator[int]:
    """The `.requests` directory's descriptor; never through a symlink."""
    fd = os.open(
        root / layout.REQUESTS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    )
    try:
        yield fd
    finally:
        os.close(fd)


def _list_pokes(root: Path) -> list[str]:
    try:
        with _requests_fd(root) as fd:
            return sorted(e.name for e in os.scandir(fd) if not e.name.startswith("."))
    except FileNotFoundError:
        return []


def _unpoke(root: Path, name: str) -> None:
    with _requests_fd(root) as fd, contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)
