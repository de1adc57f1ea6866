"""Rules of `checks.py` that no other fast test pinned (found by `make mutate`).

The boundaries of every numeric comparison, an empty single-quoted string, `contains` is not a
regular expression, numeric operators refuse strings, and `judge_sample`'s bounds and the
value it reports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from postdeploy.checks import (
    Bound,
    Compare,
    CompareOp,
    ConditionError,
    Response,
    evaluate,
    is_json_path,
    json_number,
    judge_sample,
    parse_condition,
)


def json_response(document: Any) -> Response:
    return Response(code=200, latency_ms=5.0, body=json.dumps(document).encode())


@pytest.mark.parametrize(
    ("op", "expected"),  # $.n OP 5, for n = 4, 5, 6
    [
        ("<", (True, False, False)),
        ("<=", (True, True, False)),
        (">", (False, False, True)),
        (">=", (False, True, True)),
        ("==", (False, True, False)),
        ("!=", (True, False, True)),
    ],
)
def test_numeric_comparison_boundaries(op: str, expected: tuple[bool, bool, bool]) -> None:
    condition = parse_condition(f"$.n {op} 5")
    got = tuple(evaluate(condition, json_response({"n": n})).ok for n in (4, 5, 6))
    assert got == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("$.name == ''", ""), ("$.name == 'a'", "a"), ('$.name == ""', "")],
)
def test_single_quoted_strings(text: str, value: str) -> None:
    assert parse_condition(text) == Compare("$.name", CompareOp.EQ, value, text=text)


@pytest.mark.parametrize(
    ("text", "body", "ok"),
    [
        ('body contains "a.c"', "abc", False),  # a plain substring, not a pattern
        ('body contains "a.c"', "xa.cx", True),
        ('body contains "("', "f(x)", True),  # not a valid pattern: fine, it is not one
        ('body not_contains "a.c"', "abc", True),
        ('body matches "a.c"', "abc", True),
    ],
)
def test_contains_is_a_substring(text: str, body: str, ok: bool) -> None:
    assert evaluate(parse_condition(text), Response(200, 1.0, body.encode())).ok is ok


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordering_operators_need_a_number(op: str) -> None:
    with pytest.raises(ConditionError, match=f"{op} compares with a number"):
        parse_condition(f'$.version {op} "2"')


@pytest.mark.parametrize(
    ("values", "bound", "ok", "value"),
    [
        ([5.0], Bound(min=5.0), True, 5.0),  # the bounds are inclusive
        ([5.0], Bound(max=5.0), True, 5.0),
        ([4.9], Bound(min=5.0), False, 4.9),
        ([1.0, 5.0], Bound(max=10.0), True, 5.0),  # the worst value against a max: the largest
        ([1.0, 5.0], Bound(min=0.0), True, 1.0),  # against a min: the smallest
        ([1.0, 5.0], Bound(max=10.0, min=0.0), True, 5.0),
    ],
)
def test_judge_sample_bounds(values: list[float], bound: Bound, ok: bool, value: float) -> None:
    result = judge_sample(values, bound, no_data_fails=False)
    assert (result.ok, result.value) == (ok, value)


def test_a_path_alone_with_a_space_in_a_quoted_key_lacks_an_operator() -> None:
    # The whole path is the subject, even with a space inside its quoted key.
    with pytest.raises(ConditionError, match="expected one of == != <= >= < > after the subject"):
        parse_condition('$["in stock"]')


# -- the number an HTTP check gives the baseline comparison (`baseline_number`) --------------


@pytest.mark.parametrize(
    ("body", "path", "number"),
    [
        (b'{"queue": {"depth": 7}}', "$.queue.depth", 7.0),
        (b'{"queue": {"depth": -0.5}}', "$.queue.depth", -0.5),
        (b'{"items": [1, 2, 3]}', "$.items[2]", 3.0),
        (b'{"in stock": 4}', '$["in stock"]', 4.0),
        (b'{"queue": {"depth": true}}', "$.queue.depth", None),
        (b'{"queue": {"depth": "7"}}', "$.queue.depth", None),
        (b'{"queue": {"depth": null}}', "$.queue.depth", None),
        (b'{"queue": {"depth": Infinity}}', "$.queue.depth", None),
        (b'{"queue": {}}', "$.queue.depth", None),
        (b"[]", "$.queue", None),
        (b"{", "$.queue", None),
        (b"\xff", "$.queue", None),
        (b"[" * 5000, "$.queue", None),
    ],
)
def test_json_number(body: bytes, path: str, number: float | None) -> None:
    assert json_number(body, path) == number


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("$.a.b[0]", True),
        ('$["in stock"]', True),
        ("$", True),
        ("latency_ms", False),
        ("a.b", False),
        ("$.a b", False),
        ("$.a.", False),
    ],
)
def test_is_json_path(text: str, ok: bool) -> None:
    assert is_json_path(text) is ok
