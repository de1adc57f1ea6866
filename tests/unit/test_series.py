"""Probe rows and the tally they fold into (`series.py`)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postdeploy.series import RECENT_ROWS, ProbeRow, Tally, fold, replay

FAST = settings(max_examples=60, deadline=None)

CONTRACT_KEYS = {
    "tick",
    "scheduled_ts",
    "ts",
    "health_ok",
    "health_code",
    "total",
    "fivexx",
    "latency_ms",
    "detail",
}


def make_row(
    tick: int, *, health_ok: bool = True, total: int = 2, fivexx: int = 0, **extra: Any
) -> ProbeRow:
    fields: dict[str, Any] = {
        "tick": tick,
        "scheduled_ts": 1000.0 + tick,
        "ts": 1000.25 + tick,
        "health_ok": health_ok,
        "health_code": 200 if health_ok else 0,
        "total": total,
        "fivexx": fivexx,
        "latency_ms": 3.5,
        "detail": f"tick {tick}",
    }
    fields.update(extra)
    return ProbeRow(**fields)


# -- ProbeRow --------------------------------------------------------------------------------

ROUND_TRIP_ROWS = [
    pytest.param(make_row(0), id="plain"),
    pytest.param(make_row(3, health_ok=False, fivexx=2), id="failed"),
    pytest.param(make_row(7, catch_up=True), id="catch-up"),
    pytest.param(make_row(1, codes={"/status": 200, "/queue": 503}), id="codes"),
    pytest.param(make_row(2, total=0, detail="no 5xx paths: ünïcode | pipe"), id="no-paths"),
]


@pytest.mark.parametrize("row", ROUND_TRIP_ROWS)
def test_row_round_trips_through_a_json_line(row: ProbeRow) -> None:
    line = json.dumps(row.to_dict())
    assert ProbeRow.from_dict(json.loads(line)) == row


def test_to_dict_has_the_contract_keys_and_catch_up_only_when_set() -> None:
    plain = make_row(0).to_dict()
    assert set(plain) == CONTRACT_KEYS
    assert make_row(0, catch_up=True).to_dict()["catch_up"] is True
    assert "codes" not in plain
    assert make_row(0, codes={"/q": 0}).to_dict()["codes"] == {"/q": 0}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False)],
)
def test_from_dict_catch_up_only_for_json_true(value: Any, expected: bool) -> None:
    raw = make_row(4).to_dict() | {"catch_up": value}
    row = ProbeRow.from_dict(raw)
    assert row is not None and row.catch_up is expected


def test_from_dict_defaults_for_optional_keys_and_drops_bad_codes() -> None:
    raw = make_row(1).to_dict()
    del raw["latency_ms"], raw["detail"]
    raw["codes"] = {"/ok": 200, "/bad": "503", "/bool": True}
    row = ProbeRow.from_dict(raw)
    assert row is not None
    assert row.latency_ms == 0.0 and row.detail == ""
    assert row.codes == {"/ok": 200}


@pytest.mark.parametrize(
    ("health_ok", "fivexx", "failed"),
    [(True, 0, False), (False, 0, True), (True, 1, True), (False, 2, True)],
)
def test_failed_means_health_failed_or_any_fivexx_path_failed(
    health_ok: bool, fivexx: int, failed: bool
) -> None:
    assert make_row(0, health_ok=health_ok, total=2, fivexx=fivexx).failed is failed


finite = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


@st.composite
def probe_rows(draw: st.DrawFn) -> ProbeRow:
    total = draw(st.integers(0, 20))
    return ProbeRow(
        tick=draw(st.integers(0, 10**6)),
        scheduled_ts=draw(finite),
        ts=draw(finite),
        health_ok=draw(st.booleans()),
        health_code=draw(st.integers(0, 599)),
        total=total,
        fivexx=draw(st.integers(0, total)),
        latency_ms=draw(st.floats(0, 1e6)),
        detail=draw(st.text(max_size=40)),
        catch_up=draw(st.booleans()),
        codes=draw(st.dictionaries(st.text(max_size=8), st.integers(0, 599), max_size=3)),
    )


@FAST
@given(probe_rows())
def test_row_round_trip_property(row: ProbeRow) -> None:
    """to_dict rounds the floats once; after that, dict -> row -> dict is the identity."""
    once = row.to_dict()
    again = ProbeRow.from_dict(json.loads(json.dumps(once)))
    assert again is not None
    assert again.to_dict() == once
    assert replace(again, scheduled_ts=row.scheduled_ts, ts=row.ts, latency_ms=row.latency_ms) == (
        row
    )


# -- fold and replay -------------------------------------------------------------------------


def test_fold_counts_checks_streaks_and_sums() -> None:
    tally = Tally()
    for row in (
        make_row(0, health_ok=False),
        make_row(1, health_ok=False, fivexx=1),
        make_row(2, fivexx=2),
        make_row(3, health_ok=False),
    ):
        tally = fold(tally, row)
    assert tally.last_tick == 3
    assert tally.checks_total == 4
    assert tally.checks_failed == 4
    assert tally.streak == 1
    assert tally.max_streak == 2
    assert (tally.sum_total, tally.sum_fivexx) == (8, 3)
    assert tally.fivexx_ratio == 3 / 8
    assert tally.ignored == 0


@pytest.mark.parametrize(
    ("ticks", "kept", "ignored"),
    [
        ([0, 0], [0], 1),  # a duplicate (e.g. a retried append after a crash)
        ([0, 1, 1, 1], [0, 1], 2),
        ([0, 2, 1], [0, 2], 1),  # older than the last one
        ([3, 0, 1, 2, 4], [3, 4], 3),
        ([0, 2, 5], [0, 2, 5], 0),  # gaps are skipped ticks, not errors
    ],
)
def test_fold_ignores_and_counts_ticks_that_do_not_move_forward(
    ticks: list[int], kept: list[int], ignored: int
) -> None:
    # Rows that must be ignored carry a failure, so counting them would show in checks_failed.
    tally = Tally()
    last = -1
    for tick in ticks:
        tally = fold(tally, make_row(tick, health_ok=tick > last))
        last = max(last, tick)
    assert [row.tick for row in tally.recent] == kept
    assert tally.checks_total == len(kept)
    assert tally.checks_failed == 0
    assert tally.ignored == ignored
    assert tally.last_tick == kept[-1]


def test_recent_keeps_only_the_last_rows() -> None:
    tally = replay(make_row(k).to_dict() for k in range(RECENT_ROWS + 3))
    assert [row.tick for row in tally.recent] == list(range(3, RECENT_ROWS + 3))


def test_replay_of_nothing_is_the_empty_tally() -> None:
    assert replay([]) == Tally()
    assert Tally().fivexx_ratio == 0.0


def test_replay_skips_malformed_rows_and_counts_them() -> None:
    good = [make_row(k).to_dict() for k in range(3)]
    raw: list[Any] = [good[0], None, "x", good[1], {"tick": 9}, good[2], good[2] | {"tick": -1}]
    tally = replay(raw)
    assert tally.checks_total == 3
    assert tally.ignored == 4


@pytest.mark.parametrize("key", ["scheduled_ts", "ts", "latency_ms"])
def test_bool_timestamps_are_malformed(key: str) -> None:
    """A row is validated strictly: `true` is not a number of seconds."""
    raw = make_row(0, health_ok=False).to_dict() | {key: True}
    assert ProbeRow.from_dict(raw) is None


def test_catch_up_row_sets_catch_up_done() -> None:
    tally = replay([make_row(0).to_dict(), make_row(1).to_dict()])
    assert tally.catch_up_done is False
    tally = fold(tally, make_row(2, catch_up=True))
    assert tally.catch_up_done is True
    # It stays set: a later (impossible, but harmless) row does not clear it.
    assert fold(tally, make_row(3)).catch_up_done is True


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def garbage_rows(draw: st.DrawFn) -> Any:
    """Something that is surely not a valid row: a non-dict, or a valid row with a broken key."""
    if draw(st.booleans()):
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    row: dict[str, Any] = draw(probe_rows()).to_dict()
    key = draw(st.sampled_from(["tick", "scheduled_ts", "ts", "health_ok", "health_code", "total"]))
    if draw(st.booleans()):
        del row[key]
    elif key == "health_ok":
        row[key] = draw(json_values.filter(lambda v: not isinstance(v, bool)))
    elif key in ("scheduled_ts", "ts"):
        row[key] = draw(st.sampled_from([float("nan"), float("inf"), "1", None, []]))
    else:
        row[key] = draw(st.sampled_from([-1, 1.0, "1", None, True, False, [1]]))
    return row


@FAST
@given(
    valid=st.lists(probe_rows(), max_size=8),
    garbage=st.lists(garbage_rows(), max_size=8),
    data=st.data(),
)
def test_garbage_changes_nothing_but_the_ignored_count(
    valid: list[ProbeRow], garbage: list[Any], data: st.DataObject
) -> None:
    """Interleaving malformed rows with valid ones yields the tally of the valid ones alone."""
    mixed: list[Any] = [row.to_dict() for row in valid]
    for item in garbage:
        mixed.insert(data.draw(st.integers(0, len(mixed))), item)
    clean = replay(row.to_dict() for row in valid)
    dirty = replay(mixed)
    assert replace(dirty, ignored=0) == replace(clean, ignored=0)
    assert dirty.ignored == clean.ignored + len(garbage)


@pytest.mark.parametrize(
    ("ticks", "catch_up", "max_ticks", "missed"),
    [
        ((), False, 10, 0),  # nothing probed yet (or MISSED): nothing was due to this runner
        ((0, 1, 2), False, 10, 0),  # a DEGRADED verdict at tick 2: later ticks never due
        ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), False, 10, 0),  # the whole window
        ((0, 1, 5, 6), False, 10, 3),  # down (or stalled) over ticks 2-4
        ((0, 1), True, 10, 8),  # ended while down: one catch-up probe for ticks 2-9
        ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), True, 10, 0),  # every tick in, then a catch-up row
        ((9,), False, 10, 9),  # first seen late: only the last tick was still due
    ],
)
def test_ticks_missed(ticks: tuple[int, ...], catch_up: bool, max_ticks: int, missed: int) -> None:
    from postdeploy.series import ticks_missed

    rows = [make_row(t) for t in ticks]
    if catch_up:
        rows.append(make_row((ticks[-1] if ticks else -1) + 1, catch_up=True))
    assert ticks_missed(replay([r.to_dict() for r in rows]), max_ticks) == missed
