"""New work items, taken in: the quiet wait for `armed`, then the batched intake.

A new `armed` reported by inotify waits in a heap until it can be quiet (nothing wrote to it
for `intake.QUIET_S`), then joins the batch due with it; the rescan hands over everything else
it finds. A batch is looked at in worker threads (`intake.look_all`), each item judged
(`intake.judge`, pure), the rejections and the new windows' starts written as one group
commit (`Recorder`), and the windows started once no other batch is being recorded.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio
import structlog

from postdeploy import events, history, intake, layout
from postdeploy.alerts import Outbox
from postdeploy.config import Config
from postdeploy.context import Context
from postdeploy.intake import Arm, Look, Quiet, Reject, Resume, Settled
from postdeploy.layout import ItemKey, UnsafePath
from postdeploy.lifecycle import Event, State
from postdeploy.watcher import Watcher
from postdeploy.window import WindowStart

log = structlog.get_logger("postdeploy.daemon")

BATCH_EVERY_S = 0.005  # due `armed` files are taken in together, at most this often
# New windows start once no intake batch is being recorded, so that starting the windows of
# one batch (a log line and a task each) does not hold up the writes of the next: in a burst
# of sentinels every window is on disk first. A steady stream of sentinels waits no longer.
MAX_START_DELAY_S = 0.25

StartWindow = Callable[..., None]


@dataclass
class _Waiting:
    """A new `armed` written to less than QUIET_S ago: looked at again when `due`."""

    first_seen_at: float  # wall time: when the daemon first noticed it (the window's "seen")
    deadline: float  # monotonic: past it, `armed` is read as it is (a writer that never stops)
    due: float  # monotonic: the next look
    identity: intake.Identity | None = None  # `armed` at the last look; None: not looked at
    spare: intake.Spare | None = None  # window.json's temporary file, made during the wait


@dataclass(eq=False)
class QuietWait:
    """New `armed` files that cannot be quiet yet, in a heap by when each is next due."""

    waiting: dict[ItemKey, _Waiting] = field(default_factory=dict)
    _due: list[tuple[float, ItemKey]] = field(default_factory=list)  # (_Waiting.due, key)
    _due_changed: anyio.Event = field(default_factory=anyio.Event)

    def push_due(self, key: ItemKey, due: float) -> None:
        """Look at `key` (waiting) again at `due` (monotonic)."""
        self.waiting[key].due = due
        if not self._due or due < self._due[0][0]:
            self._due_changed.set()
        heapq.heappush(self._due, (due, key))

    async def next_due(self, busy: Callable[[ItemKey], bool]) -> list[ItemKey]:
        """Wait until keys are due; all those due now, in due order. A `busy` key (being
        taken in, or running) is pushed back by QUIET_S."""
        while True:
            self._due_changed = anyio.Event()
            delay = self._due[0][0] - time.monotonic() if self._due else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._due_changed.wait()
                continue
            now = time.monotonic()
            keys: list[ItemKey] = []
            while self._due and self._due[0][0] <= now:
                due, key = heapq.heappop(self._due)
                waiting = self.waiting.get(key)
                if waiting is None or waiting.due != due:
                    continue  # taken in meanwhile, or looked at again later
                if busy(key):
                    self.push_due(key, now + intake.QUIET_S)  # after the intake under way
                    continue
                keys.append(key)
            if keys:
                return keys


@dataclass(eq=False)
class Recorder:
    """The intake's writes: each batch's rejections and new windows' starts, as one group
    commit per file name (the new windows' `window.armed` events first)."""

    outbox: Outbox
    failed: Callable[[ItemKey, Exception], None]  # a write failed: looked at again later
    rejected: Callable[[ItemKey], None]  # `rejected` is written

    async def write_all(
        self,
        name: str,
        items: Sequence[tuple[ItemKey, Look, bytes]],
        spares: dict[ItemKey, intake.Spare] | None = None,
    ) -> list[Exception | None]:
        """Write file `name` in each looked-at directory, atomically and durably, as one
        group commit; the error of each, None if written. The items' `spares` (taken out
        of the dict) serve as their temporary files."""
        errors: list[Exception | None] = [None] * len(items)
        known: list[int] = []  # the items whose look kept their directory open
        triples: list[tuple[int, bytes, intake.Spare | None]] = []
        for i, (key, look, data) in enumerate(items):
            if look.fd is None:  # only a look that ended early has none; judge never asks
                errors[i] = UnsafePath(f"{key}: its directory was not kept open")
            else:
                known.append(i)
                spare = spares.pop(key, None) if spares is not None else None
                triples.append((look.fd, data, spare))
        with anyio.CancelScope(shield=True):  # it owns the spares from here on
            written = await anyio.to_thread.run_sync(intake.write_all, name, triples)
        for i, error in zip(known, written, strict=True):
            errors[i] = error
        return errors

    async def reject_all(self, rejects: Sequence[tuple[ItemKey, str, Look]]) -> None:
        for key, reason, _ in rejects:
            log.warning("sentinel.rejected", repo=key.repo, work_item=key.work_item, reason=reason)
        errors = await self.write_all(
            layout.REJECTED,
            [
                (key, look, reason.replace("\n", " ").encode() + b"\n")
                for key, reason, look in rejects
            ],
        )
        for (key, _, _), error in zip(rejects, errors, strict=True):
            if error is None:
                self.rejected(key)
            else:
                self.failed(key, error)

    async def record_all(
        self,
        arms: Sequence[tuple[ItemKey, Arm, Look, float]],
        spares: dict[ItemKey, intake.Spare],
        judged: Config,
    ) -> list[tuple[ItemKey, WindowStart, Arm, Look]]:
        """Record the start of each new window (the event first, then window.json); the
        windows recorded, to be started."""
        starts = [
            WindowStart.new(
                judged.window_settings(key.repo), arm.armed_at, arm.metadata, first_seen_at
            )
            for key, arm, _, first_seen_at in arms
        ]
        # The events first: a crash between the two re-emits one (same id, a no-op) rather
        # than losing it, because without window.json the window is "first seen" again.
        armed_events: list[events.Event | None] = []
        async with anyio.create_task_group() as tg:
            for (key, arm, _, _), start in zip(arms, starts, strict=True):
                event = events.Event(
                    "window.armed",
                    key,
                    f"window armed: {start.schedule.max_ticks} ticks every "
                    f"{start.schedule.interval_s:g}s",
                    start.first_seen_at,
                    evidence=start.schedule.to_dict(),
                    metadata=arm.metadata,
                )
                wanted = self.outbox.wants(event)  # else emitting it has nothing to do
                armed_events.append(event if wanted else None)
                if wanted:
                    tg.start_soon(self.outbox.emit, event)
        # An event the outbox's disk refused is only in memory: with window.json written
        # after it, a crash would lose it for good. Such a window starts at a later look.
        held = {
            key
            for (key, _, _, _), event in zip(arms, armed_events, strict=True)
            if event is not None and self.outbox.held_in_memory(event.id)
        }
        for key in held:
            log.warning(
                "intake.event_unwritten",
                repo=key.repo,
                work_item=key.work_item,
                note="the outbox could not write its window.armed event yet; the window "
                "starts once it can (next look)",
            )
        if held:
            kept = [i for i, (key, _, _, _) in enumerate(arms) if key not in held]
            arms = [arms[i] for i in kept]
            starts = [starts[i] for i in kept]
        errors = await self.write_all(
            layout.WINDOW,
            [
                (key, look, json.dumps(start.to_dict(), ensure_ascii=False).encode() + b"\n")
                for (key, _, look, _), start in zip(arms, starts, strict=True)
            ],
            spares,
        )
        recorded: list[tuple[ItemKey, WindowStart, Arm, Look]] = []
        for (key, arm, look, _), start, error in zip(arms, starts, errors, strict=True):
            if error is None:
                recorded.append((key, start, arm, look))
            else:
                self.failed(key, error)  # not started: the next look retries it
        return recorded


@dataclass(eq=False)
class Intake:
    """Takes new work items in, in batches; `take` is also what the rescan calls."""

    ctx: Context
    outbox: Outbox
    index: history.History  # the finished windows
    indexed: Callable[[], None]  # the history index has new lines to write
    note_armed: Callable[[ItemKey, float], None]
    start: StartWindow  # run a window that was looked at (a resumed one)
    start_armed: Callable[[Sequence[tuple[ItemKey, WindowStart, Arm, Look]], Config], None]
    watcher: Watcher | None = None  # set once inotify is set up
    quiet: QuietWait = field(default_factory=QuietWait)  # new `armed` files not quiet yet
    quiet_pass: anyio.Event = field(default_factory=anyio.Event)  # after each due intake
    _recording: int = 0  # intake batches looking at or writing their directories
    _recorded: anyio.Event = field(default_factory=anyio.Event)  # _recording dropped to 0

    def __post_init__(self) -> None:
        self._recorder = Recorder(self.outbox, self._intake_failed, self._park_rejected)

    @property
    def waiting(self) -> dict[ItemKey, _Waiting]:
        """New `armed` files not quiet yet (start-up waits until there are none)."""
        return self.quiet.waiting

    # -- waiting for `armed` to be quiet --------------------------------------------------

    def expect_quiet(self, key: ItemKey) -> bool:
        """inotify saw `armed` arrive: look at it once it can be quiet (no sooner: a look now
        could only say "not quiet yet"). True if it is newly waiting."""
        items = self.ctx.items
        if not items.accepts(key, Event.ARMED_SEEN) or key in self.quiet.waiting:
            return False
        if not self.ctx.valid(key):
            return False
        items.move(key, Event.ARMED_SEEN)  # while it is being looked at: see `take`
        now = time.monotonic()
        self.quiet.waiting[key] = _Waiting(
            time.time(), now + intake.MAX_QUIET_WAIT_S, now + intake.QUIET_S
        )
        self.quiet.push_due(key, now + intake.QUIET_S)
        return True

    async def make_spares(self, keys: list[ItemKey]) -> None:
        """Use the quiet wait, when the daemon is idle, to create the temporary files of the
        waiting windows' window.json (the costliest part of the write that follows)."""
        made = await anyio.to_thread.run_sync(
            intake.make_spares, self.ctx.root, keys, layout.WINDOW
        )
        unused: list[intake.Spare] = []
        for key, spare in zip(keys, made, strict=True):
            if isinstance(spare, Exception):
                continue  # the write makes its own temporary file; the look says what is wrong
            waiting = self.quiet.waiting.get(key)
            if (
                waiting is None
                or waiting.spare is not None
                or self.ctx.items.state(key) is not State.QUIET_WAIT  # being looked at
                or self.ctx.closing  # shutdown removed the spares it knew of already
            ):
                unused.append(spare)
            else:
                waiting.spare = spare
        if unused:
            await anyio.to_thread.run_sync(intake.drop_spares, unused)

    async def quiet_loop(self) -> None:
        """Take in every waiting `armed` that is due, all together, in due order."""
        while True:
            keys = await self.quiet.next_due(lambda key: not self.ctx.items.accepts(key, Event.DUE))
            self.ctx.spawn(self._intake_due, keys)
            # The next batch no sooner than BATCH_EVERY_S: while one batch waits for its
            # fsyncs, the next one is looked at and prepared.
            await anyio.sleep(BATCH_EVERY_S)

    async def _intake_due(self, keys: list[ItemKey]) -> None:
        await self.take(keys, due=True)
        self.quiet_pass.set()
        self.quiet_pass = anyio.Event()

    # -- intake ---------------------------------------------------------------------------

    def _taken(self, key: ItemKey, due: bool) -> bool:
        """Whether `key` joins the batch (it is then LOOKING): a waiting key joins only the
        batch of the keys due, a running or settled one none."""
        event = Event.DUE if due else Event.TAKEN
        return self.ctx.items.accepts(key, event) and self.ctx.items.move(key, event)

    async def take(self, keys: Iterable[ItemKey], *, due: bool = False) -> None:
        """Take in work items together: look at each, decide (`intake.judge`), record the
        new windows' starts and the rejections, start the windows (once no other batch is
        being recorded). The looks and the writes each take a few worker-thread hops for the
        whole batch.

        `due`: the keys are waiting for `armed` to be quiet, and now due for a look."""
        if self.ctx.closing:
            return
        batch = [key for key in dict.fromkeys(keys) if self._taken(key, due)]
        if not batch:
            return
        self._recording += 1
        armed: list[tuple[ItemKey, WindowStart, Arm, Look]] = []
        try:
            if self.watcher is not None:
                # Before the look: whatever is created after it raises an event.
                self.watcher.follow(batch)
            now = time.monotonic()
            previous = [self.quiet.waiting.get(key) for key in batch]
            requests = [
                (key, w.identity if w else None, w is not None and now > w.deadline)
                for key, w in zip(batch, previous, strict=True)
            ]
            # Shielded: the worker threads finish their looks anyway, and each look holds a
            # directory open that only this function closes.
            with anyio.CancelScope(shield=True):
                looks = await intake.run_all(partial(intake.look_all, self.ctx.root), requests)
            # The batch owns the spares of its waiting keys: used by the write, handed back
            # to a key that waits on, or removed at the end.
            spares = {key: w.spare for key, w in zip(batch, previous, strict=True) if w and w.spare}
            for w in previous:
                if w is not None:
                    w.spare = None
            judged = self.ctx.config  # a reload may replace it while the batch is written
            try:
                rejects: list[tuple[ItemKey, str, Look]] = []
                arms: list[tuple[ItemKey, Arm, Look, float]] = []
                for key, result in zip(batch, looks, strict=True):
                    try:
                        self._decide(key, result, rejects, arms, spares)
                    except Exception as exc:
                        self._intake_failed(key, exc)
                if rejects:
                    await self._recorder.reject_all(rejects)
                if arms:
                    armed = await self._recorder.record_all(arms, spares, judged)
                    for key, _, _, _ in armed:
                        self.ctx.items.move(key, Event.RECORDED)
            except Exception as exc:
                _batch_failed(batch, exc)
            finally:
                # The new windows' stores take copies of their directories' descriptors
                # when they start (below); every other one is closed now.
                starting = {id(look) for _, _, _, look in armed}
                for result in looks:
                    if isinstance(result, Look) and id(result) not in starting:
                        _close_fd(result)
                if spares:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(intake.drop_spares, list(spares.values()))
        finally:
            self._recorded_one()
        # The batch's keys stay LOOKING or RECORDED until their windows run: no rescan
        # takes them.
        try:
            if armed:
                await self._until_recorded()
                self.start_armed(armed, judged)
        except Exception as exc:
            _batch_failed(batch, exc)
        finally:
            for _, _, _, look in armed:
                _close_fd(look)
            await self._release(batch)

    async def _release(self, batch: list[ItemKey]) -> None:
        """The batch is over: its keys not running (unarmed, a failed look or write, the
        daemon closing) are UNSEEN again, or QUIET_WAIT if `armed` arrived during the look."""
        unused: list[intake.Spare] = []
        for key in batch:
            state = self.ctx.items.state(key)
            if state in (State.LOOKING, State.RECORDED):
                self.ctx.items.move(key, Event.RELEASED)
            waiting = self.quiet.waiting.get(key)
            if waiting is None or state is State.QUIET_WAIT:
                continue
            if self.ctx.items.accepts(key, Event.ARMED_SEEN) and not self.ctx.closing:
                self.ctx.items.move(key, Event.ARMED_SEEN)
            else:  # it runs, or is settled: the hint has nothing left to do
                del self.quiet.waiting[key]
                if waiting.spare is not None:
                    unused.append(waiting.spare)
        if unused:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(intake.drop_spares, unused)

    def _recorded_one(self) -> None:
        """An intake batch is done looking and writing."""
        self._recording -= 1
        if self._recording == 0:
            self._recorded.set()
            self._recorded = anyio.Event()

    async def _until_recorded(self) -> None:
        """Until no intake batch is being recorded (at most MAX_START_DELAY_S)."""
        with anyio.move_on_after(MAX_START_DELAY_S):
            while self._recording:
                await self._recorded.wait()

    def _decide(
        self,
        key: ItemKey,
        result: Look | Exception,
        rejects: list[tuple[ItemKey, str, Look]],
        arms: list[tuple[ItemKey, Arm, Look, float]],
        spares: dict[ItemKey, intake.Spare],
    ) -> None:
        """Act on one look (see `intake.judge`); writes are collected for the whole batch."""
        if isinstance(result, Exception):
            self.quiet.waiting.pop(key, None)
            self._intake_failed(key, result)
            return
        decision = intake.judge(
            result,
            repo=key.repo,
            known=key.repo in self.ctx.config.repos,
            enabled=self.ctx.config.enabled,
        )
        if isinstance(decision, Quiet):
            waiting = self.quiet.waiting.get(key)
            if waiting is None:  # "first seen" is when the daemon noticed it, before the wait
                deadline = time.monotonic() + intake.MAX_QUIET_WAIT_S
                waiting = self.quiet.waiting[key] = _Waiting(result.seen_at, deadline, 0.0)
            waiting.identity = decision.identity
            waiting.spare = spares.pop(key, None)  # still waiting: so is its spare
            self.quiet.push_due(key, time.monotonic() + decision.delay)
            self.ctx.items.move(key, Event.NOT_QUIET)
            return
        waiting = self.quiet.waiting.pop(key, None)
        if not isinstance(decision, Settled):
            self.index.forget(key)  # a directory made anew under a finished window's name
        if isinstance(decision, Settled):
            if result.finished is not None:  # `done`: indexed, never looked at again
                if self.watcher is not None:
                    self.watcher.unfollow(key)
                self.index.add(key, result.finished)
                self.ctx.items.move(key, Event.DONE)
                self.indexed()
            elif result.kinds[layout.REJECTED] and not result.kinds[layout.DONE]:
                self._park_rejected(key)
            else:
                self._settle(key)
            if decision.armed_at is not None:
                # A finished window still counts when deciding which window is current.
                self.note_armed(key, decision.armed_at)
        elif isinstance(decision, Reject):
            rejects.append((key, decision.reason, result))
        elif isinstance(decision, Arm):
            arms.append(
                (key, decision, result, waiting.first_seen_at if waiting else result.seen_at)
            )
        elif isinstance(decision, Resume):
            start = decision.start
            if start is None:  # window.json is unreadable: the window only ends, as ERROR
                now = time.time()
                start = WindowStart.new(self.ctx.config.window_settings(key.repo), now, {}, now)
            self.start(
                key,
                start,
                result,
                first_seen=False,
                stop=decision.stop,
                reacting=decision.reacting,
                judged=self.ctx.config,
            )
        # Unarmed: the directory's watch says when `armed` arrives (else the next rescan).

    def _intake_failed(self, key: ItemKey, exc: Exception) -> None:
        if isinstance(exc, UnsafePath):
            self.ctx.report(str(self.ctx.root / key.repo / key.work_item), str(exc))
        elif isinstance(exc, FileNotFoundError):
            pass  # removed while we looked
        elif isinstance(exc, OSError):
            log.error("intake.failed", repo=key.repo, work_item=key.work_item, error=str(exc))
        else:
            log.error(
                "intake.failed",
                repo=key.repo,
                work_item=key.work_item,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def _park_rejected(self, key: ItemKey) -> None:
        """A rejected item is not settled for good: deleting `rejected` (after fixing
        `armed`) asks for another look, which the next rescan makes. It is not watched."""
        self.ctx.items.move(key, Event.REJECTED)
        if self.watcher is not None:
            self.watcher.unfollow(key)

    def _settle(self, key: ItemKey) -> None:
        """Finished, but not indexable: never looked at again in this daemon's life."""
        self.ctx.items.move(key, Event.SETTLED)
        if self.watcher is not None:
            self.watcher.unfollow(key)


def _batch_failed(batch: list[ItemKey], exc: Exception) -> None:
    """A bug while recording a batch: it must not stop the daemon. Nothing of the batch is
    settled, so the next rescan looks at every item again."""
    log.error(
        "intake.batch_failed",
        work_items=[f"{key.repo}/{key.work_item}" for key in batch[:20]],
        batch_size=len(batch),
        error=f"{type(exc).__name__}: {exc}",
        exc_info=exc,
        note="the next rescan takes these work items in again",
    )


def _close_fd(look: Look) -> None:
    if look.fd is not None:
        os.close(look.fd)
