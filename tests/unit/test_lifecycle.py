"""The work item's state table: every allowed move, and every other pair refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import structlog

from postdeploy.layout import ItemKey
from postdeploy.lifecycle import (
    NOT_HELD,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    WorkItems,
    advance,
)

S, E = State, Event

# The table written out again, row by row, so that a change to one entry fails here.
ALLOWED: list[tuple[State, Event, State]] = [
    (S.UNSEEN, E.ARMED_SEEN, S.QUIET_WAIT),
    (S.UNSEEN, E.TAKEN, S.LOOKING),
    (S.QUIET_WAIT, E.DUE, S.LOOKING),
    (S.LOOKING, E.ARMED_SEEN, S.LOOKING),
    (S.LOOKING, E.NOT_QUIET, S.QUIET_WAIT),
    (S.LOOKING, E.RECORDED, S.RECORDED),
    (S.LOOKING, E.REJECTED, S.REJECTED),
    (S.LOOKING, E.SETTLED, S.SETTLED),
    (S.LOOKING, E.DONE, S.FINISHED),
    (S.LOOKING, E.STARTED, S.RUNNING),
    (S.LOOKING, E.RELEASED, S.UNSEEN),
    (S.RECORDED, E.STARTED, S.RUNNING),
    (S.RECORDED, E.RELEASED, S.UNSEEN),
    (S.RUNNING, E.SUPERSEDED, S.STOPPING),
    (S.RUNNING, E.CANCELLED, S.STOPPING),
    (S.RUNNING, E.DISABLED, S.STOPPING),
    (S.RUNNING, E.ROLLBACK_ASKED, S.STOPPING),
    (S.RUNNING, E.BROKEN, S.STOPPING),
    (S.RUNNING, E.DONE, S.FINISHED),
    (S.RUNNING, E.VANISHED, S.VANISHED),
    (S.RUNNING, E.PAUSED, S.UNSEEN),
    (S.STOPPING, E.DONE, S.FINISHED),
    (S.STOPPING, E.VANISHED, S.VANISHED),
    (S.STOPPING, E.PAUSED, S.UNSEEN),
    (S.REJECTED, E.ARMED_SEEN, S.QUIET_WAIT),
    (S.REJECTED, E.TAKEN, S.LOOKING),
    (S.VANISHED, E.ARMED_SEEN, S.QUIET_WAIT),
    (S.VANISHED, E.TAKEN, S.LOOKING),
]
ALLOWED_PAIRS = {(state, event) for state, event, _ in ALLOWED}
REFUSED = [pair for pair in itertools.product(State, Event) if pair not in ALLOWED_PAIRS]
KEY = ItemKey("shop", "w1")


def test_the_table_is_exactly_the_allowed_list() -> None:
    assert len(ALLOWED_PAIRS) == len(ALLOWED)  # no row twice
    assert {(s, e): n for s, e, n in ALLOWED} == TRANSITIONS


@pytest.mark.parametrize(("state", "event", "after"), ALLOWED)
def test_an_allowed_event_moves_the_state(state: State, event: Event, after: State) -> None:
    assert advance(state, event) is after


@pytest.mark.parametrize(("state", "event"), REFUSED)
def test_every_other_pair_is_refused(state: State, event: Event) -> None:
    with pytest.raises(IllegalTransition) as caught:
        advance(state, event)
    assert (caught.value.state, caught.value.event) == (state, event)
    assert repr(event.value) in str(caught.value) and repr(state.value) in str(caught.value)


def test_finished_and_settled_are_terminal() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] in (S.FINISHED, S.SETTLED)]


def test_every_state_is_reached_and_every_event_used() -> None:
    assert {S.UNSEEN} | set(TRANSITIONS.values()) == set(State)
    assert {event for _, event in TRANSITIONS} == set(Event)


def _path(items: WorkItems, *events: Event) -> list[State]:
    states = []
    for event in events:
        assert items.move(KEY, event)
        states.append(items.state(KEY))
    return states


def test_work_items_follow_a_window_from_armed_to_done() -> None:
    items = WorkItems()
    assert items.state(KEY) is S.UNSEEN
    steps = (E.ARMED_SEEN, E.DUE, E.RECORDED, E.STARTED, E.SUPERSEDED, E.DONE)
    assert _path(items, *steps) == [
        S.QUIET_WAIT,
        S.LOOKING,
        S.RECORDED,
        S.RUNNING,
        S.STOPPING,
        S.UNSEEN,  # FINISHED: the history index's, not held here
    ]
    # A new directory under a finished window's name starts again from UNSEEN.
    assert items._states == {}
    assert items.accepts(KEY, E.TAKEN)
    assert S.FINISHED in NOT_HELD


def test_a_hint_that_does_not_apply_is_only_refused_by_accepts() -> None:
    items = WorkItems()
    _path(items, E.TAKEN, E.STARTED)
    assert not items.accepts(KEY, E.TAKEN)  # the rescan finds a running window: nothing to do
    assert not items.accepts(KEY, E.ARMED_SEEN)
    assert items.accepts(KEY, E.CANCELLED)
    assert items.accepts(ItemKey("shop", "w2"), E.TAKEN)


def test_an_illegal_move_is_logged_with_the_item_and_contained() -> None:
    items = WorkItems()
    _path(items, E.TAKEN, E.SETTLED)
    with structlog.testing.capture_logs() as logs:
        assert not items.move(KEY, E.STARTED)  # never raises: the daemon carries on
    assert items.state(KEY) is S.SETTLED  # unchanged
    [line] = logs
    assert line["event"] == "lifecycle.illegal_transition"
    assert line["log_level"] == "error"
    assert (line["repo"], line["work_item"]) == ("shop", "w1")
    assert (line["state"], line["lifecycle_event"]) == ("settled", "started")


def test_the_readme_shows_the_table_as_it_is() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| state | event → next state |\n| --- | --- |\n", 1)[1]
    shown: dict[tuple[State, Event], State] = {}
    for line in table.split("\n\n", 1)[0].splitlines():
        state, moves = (cell.strip() for cell in line.strip("|").split("|"))
        if moves == "(terminal)":
            continue
        for move in moves.split(", "):
            event, after = move.split(" → ")
            shown[(State[state], Event(event.strip("`")))] = State[after]
    assert shown == TRANSITIONS
