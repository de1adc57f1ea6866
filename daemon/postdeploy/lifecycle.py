"""A work item's life in the daemon: its states, the events that move it, and the one table
of which event moves which state where (like h11's `_state.py`).

The pure part is `State`, `Event`, `TRANSITIONS` and `advance`. `WorkItems` is the thin shell
the intake and the registry of running windows share: each known work item's state, moved only
through the table. A move the table does not hold is a bug; in the daemon it is logged (with
the item's repo and work item) and refused, and the daemon carries on.

What each hint may do is asked of the same table (`WorkItems.accepts`): a rescan that finds a
running window, or an `armed` seen again while it waits to be quiet, is a hint with nothing to
do, never an error.
"""

from __future__ import annotations

from enum import StrEnum

import structlog

from postdeploy.layout import ItemKey

log = structlog.get_logger("postdeploy.daemon")


class State(StrEnum):
    """Where a work item is in the daemon."""

    UNSEEN = "unseen"  # nothing known (not held): the next hint or rescan looks at it
    QUIET_WAIT = "quiet_wait"  # inotify saw `armed`; it is looked at once it can be quiet
    LOOKING = "looking"  # in an intake batch: looked at, judged, its writes under way
    RECORDED = "recorded"  # its window's start is written; the window starts after the batch
    RUNNING = "running"  # a runner task observes it (or concludes its verdict)
    STOPPING = "stopping"  # asked to end early (superseded, cancelled, ...); still running
    REJECTED = "rejected"  # `rejected` is on disk; a rescan looks again (a person may fix it)
    SETTLED = "settled"  # finished but not indexable: never looked at again in this life
    VANISHED = "vanished"  # its directory was removed while running; the name is free again
    FINISHED = "finished"  # `done` is written: the history index holds it (not held here)


# The states in which a work item is not on its way to a window nor in one.
_AT_REST = frozenset({State.UNSEEN, State.REJECTED, State.SETTLED, State.VANISHED, State.FINISHED})


class Event(StrEnum):
    """What moves a work item from one state to the next."""

    ARMED_SEEN = "armed_seen"  # inotify saw `armed` created or renamed into place
    TAKEN = "taken"  # a hint or the rescan hands it to an intake batch
    DUE = "due"  # its quiet period is over: an intake batch looks at it
    NOT_QUIET = "not_quiet"  # the look found `armed` still being written
    RECORDED = "recorded"  # the batch wrote the new window's start (event, window.json)
    REJECTED = "rejected"  # `rejected` written by the batch, or found by the look
    SETTLED = "settled"  # the look found it finished, but not indexable
    RELEASED = "released"  # the batch ends with it not running: unarmed, a failed look or
    # write, or the daemon closing; nothing is held until the next look
    STARTED = "started"  # its runner task starts (a new window, or one resumed)
    SUPERSEDED = "superseded"  # a newer window of its repo was armed
    CANCELLED = "cancelled"  # an operator wrote `cancel`
    DISABLED = "disabled"  # the kill switch (`enabled = false`) was thrown
    ROLLBACK_ASKED = "rollback_asked"  # a person asked for the rollback (`postdeploy rollback`)
    BROKEN = "broken"  # its window.json is unreadable: it ends at once, as ERROR
    DONE = "done"  # `done` is written (by its runner), or found by a look
    VANISHED = "vanished"  # its runner ended because the directory was removed
    PAUSED = "paused"  # its runner ended with nothing written (shutdown, a disk refusing
    # `done`): a later look resumes it


S, E = State, Event
# The one table: (state, event) -> next state. Every pair not here is refused.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.UNSEEN, E.ARMED_SEEN): S.QUIET_WAIT,
    (S.UNSEEN, E.TAKEN): S.LOOKING,
    (S.QUIET_WAIT, E.DUE): S.LOOKING,
    # `armed` arrived during a look: the end of the batch decides (see `Intake.take`).
    (S.LOOKING, E.ARMED_SEEN): S.LOOKING,
    (S.LOOKING, E.NOT_QUIET): S.QUIET_WAIT,
    (S.LOOKING, E.RECORDED): S.RECORDED,
    (S.LOOKING, E.REJECTED): S.REJECTED,
    (S.LOOKING, E.SETTLED): S.SETTLED,
    (S.LOOKING, E.DONE): S.FINISHED,
    (S.LOOKING, E.STARTED): S.RUNNING,  # a window resumed (it has its start already)
    (S.LOOKING, E.RELEASED): S.UNSEEN,
    (S.RECORDED, E.STARTED): S.RUNNING,
    (S.RECORDED, E.RELEASED): S.UNSEEN,
    (S.RUNNING, E.SUPERSEDED): S.STOPPING,
    (S.RUNNING, E.CANCELLED): S.STOPPING,
    (S.RUNNING, E.DISABLED): S.STOPPING,
    (S.RUNNING, E.ROLLBACK_ASKED): S.STOPPING,
    (S.RUNNING, E.BROKEN): S.STOPPING,
    (S.RUNNING, E.DONE): S.FINISHED,
    (S.RUNNING, E.VANISHED): S.VANISHED,
    (S.RUNNING, E.PAUSED): S.UNSEEN,
    (S.STOPPING, E.DONE): S.FINISHED,
    (S.STOPPING, E.VANISHED): S.VANISHED,
    (S.STOPPING, E.PAUSED): S.UNSEEN,
    (S.REJECTED, E.ARMED_SEEN): S.QUIET_WAIT,
    (S.REJECTED, E.TAKEN): S.LOOKING,
    (S.VANISHED, E.ARMED_SEEN): S.QUIET_WAIT,
    (S.VANISHED, E.TAKEN): S.LOOKING,
}
del S, E

# Not held in `WorkItems`: an unknown item is UNSEEN, and a finished window is the history
# index's (held here, every window this daemon finished would stay in memory for good). A
# directory made anew under a finished window's name is a new work item: UNSEEN.
NOT_HELD = frozenset({State.UNSEEN, State.FINISHED})


class IllegalTransition(Exception):
    """An event that the table does not allow in the item's state: a bug in the daemon."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def advance(state: State, event: Event) -> State:
    """The state after `event`; raises IllegalTransition if the table does not allow it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


class WorkItems:
    """Each known work item's state, moved only through `TRANSITIONS`."""

    def __init__(self) -> None:
        self._states: dict[ItemKey, State] = {}

    def state(self, key: ItemKey) -> State:
        return self._states.get(key, State.UNSEEN)

    def open_in(self, repo: str) -> bool:
        """Whether a work item of `repo` is on its way to a window or in one: the repo's
        baseline is not probed then."""
        return any(
            key.repo == repo and state not in _AT_REST for key, state in self._states.items()
        )

    def accepts(self, key: ItemKey, event: Event) -> bool:
        """Whether `event` applies to `key` now (a hint that does not is ignored)."""
        return (self.state(key), event) in TRANSITIONS

    def move(self, key: ItemKey, event: Event) -> bool:
        """Move `key` by `event`. A move the table refuses is a bug: it is logged loudly, the
        state stays as it was, and False is returned (the daemon carries on)."""
        try:
            state = advance(self.state(key), event)
        except IllegalTransition as exc:
            log.error(
                "lifecycle.illegal_transition",
                repo=key.repo,
                work_item=key.work_item,
                state=exc.state.value,
                lifecycle_event=exc.event.value,  # `event` is structlog's message key
                note="a bug in the daemon: the work item keeps its state",
                stack_info=True,
            )
            return False
        if state in NOT_HELD:
            self._states.pop(key, None)
        else:
            self._states[key] = state
        return True
