"""The condition language, table by table: parsing, evaluation, and Prometheus values.

Pure functions only (no I/O): `parse_condition`, `evaluate`, `evaluate_all`, `json_path`,
`judge_sample` and `prometheus_values`. Each row of a table is one case a reader can check by
eye against the grammar in `postdeploy/checks.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from postdeploy.checks import (
    Bound,
    Compare,
    CompareOp,
    Condition,
    ConditionError,
    Contains,
    Length,
    Matches,
    Presence,
    Response,
    Result,
    evaluate,
    evaluate_all,
    json_path,
    judge_sample,
    parse_condition,
)
from postdeploy.probe import Answer, prometheus_values

INF, NAN = math.inf, math.nan


def resp(body: Any = None, code: int = 200, latency_ms: float = 12.34) -> Response:
    """A response; dicts and lists become a JSON body, str is UTF-8 text, bytes are raw."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    elif body is None:
        raw = b""
    else:
        raw = json.dumps(body, ensure_ascii=False).encode()
    return Response(code, latency_ms, raw)


# -- parsing: valid conditions of every kind -----------------------------------------------

EQ, NE, LT, LE, GT, GE = (CompareOp(op) for op in ("==", "!=", "<", "<=", ">", ">="))

VALID: list[tuple[str, Condition]] = [
    # text, the condition it parses to (its `text` aside)
    ("status == 200", Compare("status", EQ, 200)),
    ("status != 500", Compare("status", NE, 500)),
    ("status >= 200", Compare("status", GE, 200)),
    ("status < 300", Compare("status", LT, 300)),
    ("  status   ==   200  ", Compare("status", EQ, 200)),
    ("latency_ms < 500", Compare("latency_ms", LT, 500)),
    ("latency_ms <= 12.5", Compare("latency_ms", LE, 12.5)),
    ("latency_ms > 1", Compare("latency_ms", GT, 1)),
    ('body contains "in stock"', Contains("in stock")),
    ("body contains 'in stock'", Contains("in stock")),
    ('body not_contains "error"', Contains("error", negate=True)),
    (r'body matches "v\\d+\\.\\d+"', Matches(r"v\d+\.\d+")),
    ('$.status == "ok"', Compare("$.status", EQ, "ok")),
    ("$.status == 'ok'", Compare("$.status", EQ, "ok")),
    ("$.a.b[0].c == 1", Compare("$.a.b[0].c", EQ, 1)),
    ("$.stock >= 1", Compare("$.stock", GE, 1)),
    ("$.ratio < 0.25", Compare("$.ratio", LT, 0.25)),
    ("$.ready == true", Compare("$.ready", EQ, True)),
    ("$.ready != false", Compare("$.ready", NE, False)),
    ("$.error == null", Compare("$.error", EQ, None)),
    ("$.tags == [1, 2]", Compare("$.tags", EQ, [1, 2])),
    ('$.meta == {"a": 1}', Compare("$.meta", EQ, {"a": 1})),
    ("$.items length > 0", Length("$.items", GT, 0)),
    ("$.items length == 2", Length("$.items", EQ, 2)),
    ("$.version exists", Presence("$.version", present=True)),
    ("$.legacy missing", Presence("$.legacy", present=False)),
    ("$ exists", Presence("$", present=True)),
    ("$[0].id == 7", Compare("$[0].id", EQ, 7)),
    ('$["content-type"] == "json"', Compare('$["content-type"]', EQ, "json")),
    # Unicode: in a quoted key, in a value, in a body needle.
    ('$["名前"] == "値"', Compare('$["名前"]', EQ, "値")),
    ('$.city == "Zürich"', Compare("$.city", EQ, "Zürich")),
    ('$.icon == "\\ud83d\\ude80"', Compare("$.icon", EQ, "🚀")),
    ('body contains "🚀 über"', Contains("🚀 über")),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_conditions_parse(text: str, expected: Condition) -> None:
    # Dataclass equality also compares the kind: a Length is never equal to a Compare.
    assert parse_condition(text) == replace(expected, text=text)


def test_a_condition_built_by_hand_has_no_line() -> None:
    # `text` is the line a condition was parsed from; one built in code has none.
    assert Compare("status", EQ, 200).text == ""


@pytest.mark.parametrize(
    ("text", "expectation"),
    [
        ("status == 200", "== 200"),
        ('$.status == "ok"', '== "ok"'),
        ('$.city == "Zürich"', '== "Zürich"'),  # shown as written, not \u-escaped
        ("$.items length > 0", "length > 0"),
        ("$.version exists", "exists"),
        ('body not_contains "x"', 'not_contains "x"'),
    ],
)
def test_expectation_is_the_readable_expected_part(text: str, expectation: str) -> None:
    assert parse_condition(text).expectation == expectation


# -- parsing: invalid conditions; each message names the condition and the problem ---------

INVALID = [
    # text, the problem the message must state
    ("", "empty condition"),
    ("   ", "empty condition"),
    ("headers exists", "the subject must be status, latency_ms, body or a JSON path"),
    ("Status == 200", "the subject must be status, latency_ms, body or a JSON path"),
    ("$..items exists", "'$..items' is not a JSON path like $.a.b[0]"),
    ("$.items[x] exists", "'$.items[x]' is not a JSON path like $.a.b[0]"),
    ("$.a.1 == 2", "'$.a.1' is not a JSON path like $.a.b[0]"),
    ("$.x ==", "a value is missing after =="),
    ("status >=", "a value is missing after >="),
    ("status", "expected one of == != <= >= < > after the subject"),
    ("status = 200", "expected one of == != <= >= < > after the subject"),
    ("status is 200", "expected one of == != <= >= < > after the subject"),
    ("$.items lenght > 0", "expected one of == != <= >= < > after the subject"),
    ("$.items length", "expected one of == != <= >= < > after the subject"),
    ("status == ok", "'ok' is not a value (use a number, \"text\", true, false, null)"),
    ("status == 200 or 201", "'200 or 201' is not a value"),
    ('$.name == "unterminated', "is not a value"),
    ('status == "200"', "status compares with a number"),
    ("status == true", "status compares with a number"),
    ("latency_ms < fast", "'fast' is not a value"),
    ('latency_ms < "50"', "latency_ms compares with a number"),
    ('$.n > "3"', "> compares with a number"),
    ("$.n <= null", "<= compares with a number"),
    ("$.n > true", "> compares with a number"),
    ('$.items length > "many"', "length compares with a number"),
    ("$.items length >= true", "length compares with a number"),
    ("status length > 1", "length applies to a JSON path"),
    ("status exists", "exists goes alone after a JSON path"),
    ("body missing", "body takes contains, not_contains or matches"),
    ("$.version exists now", "exists goes alone after a JSON path"),
    ('body == "x"', "body takes contains, not_contains or matches"),
    ("body contains 5", "contains needs a string"),
    ("body not_contains null", "not_contains needs a string"),
    ('body matches "["', "bad regular expression"),
    ('body matches "(a"', "bad regular expression: missing ), unterminated subpattern"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID)
def test_invalid_conditions_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    message = str(caught.value)
    assert problem in message
    if text.strip():
        # The message quotes the condition, so a config with many lines points at one.
        assert message.startswith(repr(text)), message


def test_quoted_key_with_a_space() -> None:
    condition = parse_condition('$["in stock"] == true')
    assert evaluate(condition, resp({"in stock": True})).ok


@pytest.mark.parametrize("text", ["$.x == NaN", "$.x != NaN", "$.x == Infinity"])
def test_non_finite_literals_are_rejected(text: str) -> None:
    with pytest.raises(ConditionError, match="is not a value"):
        parse_condition(text)


# -- json_path ------------------------------------------------------------------------------

DOC = {
    "a": {"b": [{"c": 1}, {"c": None}]},
    "items": [],
    "名前": "値",
    "content-type": "json",
    "n": 0,
}


@pytest.mark.parametrize(
    ("path", "found", "value"),
    [
        ("$", True, DOC),
        ("$.a.b[0].c", True, 1),
        ("$.a.b[1].c", True, None),  # present and null is not missing
        ('$["名前"]', True, "値"),
        ('$["content-type"]', True, "json"),
        ("$.content-type", True, "json"),
        ("$.n", True, 0),
        ("$.items", True, []),
        ("$.a.b[2]", False, None),  # index past the end
        ("$.a[0]", False, None),  # index into an object
        ("$.items.x", False, None),  # key into a list
        ("$.n.x", False, None),  # key into a number
        ("$.nope", False, None),
    ],
)
def test_json_path(path: str, found: bool, value: Any) -> None:
    result = json_path(DOC, path)
    missing = json_path(DOC, "$.nope")  # the module's "missing" marker
    assert (result is not missing) is found
    if found:
        assert result == value


# -- evaluate -------------------------------------------------------------------------------

EVALUATE = [
    # condition, response, ok, value, detail
    # status
    ("status == 200", resp(code=200), True, 200, "status 200"),
    ("status == 200", resp(code=503), False, 503, "status 503"),
    ("status != 500", resp(code=500), False, 500, "status 500"),
    ("status >= 200", resp(code=204), True, 204, "status 204"),
    ("status < 300", resp(code=302), False, 302, "status 302"),
    # latency (rounded to 0.1 ms)
    ("latency_ms < 50", resp(latency_ms=12.34), True, 12.3, "latency_ms 12.3"),
    ("latency_ms < 50", resp(latency_ms=100.04), False, 100.0, "latency_ms 100.0"),
    ("latency_ms <= 50", resp(latency_ms=50.0), True, 50.0, "latency_ms 50.0"),
    # body text
    (
        'body contains "in stock"',
        resp("3 in stock"),
        True,
        None,
        'body matches contains "in stock"',
    ),
    (
        'body contains "in stock"',
        resp("sold out"),
        False,
        None,
        'body does not match contains "in stock"',
    ),
    ('body not_contains "error"', resp("fine"), True, None, 'body matches not_contains "error"'),
    (
        'body not_contains "error"',
        resp('{"error": 1}'),
        False,
        None,
        'body does not match not_contains "error"',
    ),
    (r'body matches "v\\d+\\.\\d+"', resp("app v2.31"), True, None, None),
    (r'body matches "^ok$"', resp("not ok"), False, None, None),
    ('body contains "x"', resp(), False, None, None),  # empty body
    # body conditions on a non-JSON body work as text
    ('body contains "<h1>"', resp("<html><h1>hi</h1>"), True, None, None),
    # JSON values
    ('$.status == "ok"', resp({"status": "ok"}), True, "ok", '$.status "ok"'),
    ('$.status == "ok"', resp({"status": "down"}), False, "down", '$.status "down"'),
    ('$.status != "ok"', resp({"status": "down"}), True, "down", None),
    ("$.a.b[0].c == 1", resp({"a": {"b": [{"c": 1}]}}), True, 1, "$.a.b[0].c 1"),
    ("$.stock >= 1", resp({"stock": 1}), True, 1, "$.stock 1"),
    ("$.stock >= 1", resp({"stock": 0}), False, 0, "$.stock 0"),
    ("$.ratio < 0.25", resp({"ratio": 0.3}), False, 0.3, "$.ratio 0.3"),
    ("$.n == 1", resp({"n": 1.0}), True, 1.0, None),  # JSON numbers: 1 == 1.0
    ("$.error == null", resp({"error": None}), True, None, "$.error null"),
    ("$.error != null", resp({"error": None}), False, None, None),
    ("$.tags == [1, 2]", resp({"tags": [1, 2]}), True, [1, 2], None),
    # length of a list, an object, a string
    ("$.items length > 0", resp({"items": [1, 2]}), True, 2, "$.items length 2"),
    ("$.items length > 0", resp({"items": []}), False, 0, "$.items length 0"),
    ("$.items length == 2", resp({"items": {"a": 1, "b": 2}}), True, 2, None),
    ("$.name length <= 3", resp({"name": "Zoë"}), True, 3, None),  # characters, not bytes
    # exists / missing
    ("$.version exists", resp({"version": None}), True, None, "$.version exists"),
    ("$.version exists", resp({}), False, None, "$.version missing"),
    ("$.legacy missing", resp({}), True, None, "$.legacy missing"),
    ("$.legacy missing", resp({"legacy": 1}), False, None, "$.legacy exists"),
    # missing paths
    ('$.status == "ok"', resp({}), False, None, "$.status missing"),
    ("$.items length > 0", resp({"other": []}), False, None, "$.items missing"),
    ("$.a.b[3] == 1", resp({"a": {"b": [1]}}), False, None, "$.a.b[3] missing"),
    ("$.a[0] == 1", resp({"a": {"0": 1}}), False, None, "$.a[0] missing"),
    ("$.stock >= 1", resp([{"stock": 5}]), False, None, "$.stock missing"),  # body is a list
    # type mismatches: never coerced
    ("$.n > 3", resp({"n": "5"}), False, "5", '$.n "5"'),
    ("$.n == 5", resp({"n": "5"}), False, "5", None),
    ('$.n == "5"', resp({"n": 5}), False, 5, None),
    ("$.n > 3", resp({"n": None}), False, None, "$.n null"),
    ("$.n > 3", resp({"n": [4]}), False, [4], None),
    ("$.flag == true", resp({"flag": 1}), False, 1, "$.flag 1"),
    ("$.flag == true", resp({"flag": True}), True, True, "$.flag true"),
    ("$.n == 1", resp({"n": True}), False, True, None),
    ("$.n == 0", resp({"n": False}), False, False, None),
    ("$.flag != true", resp({"flag": 1}), True, 1, None),
    ("$.n > 0", resp({"n": True}), False, True, None),  # a boolean is not a number
    ("$.items length > 0", resp({"items": 5}), False, None, None),
    ("$.items length > 0", resp({"items": True}), False, None, None),
    ("$.items length > 0", resp({"items": None}), False, None, None),
    # unicode in keys, values and bodies
    ('$["名前"] == "値"', resp({"名前": "値"}), True, "値", '$["名前"] "値"'),
    ('$.city == "Zürich"', resp({"city": "Genève"}), False, "Genève", '$.city "Genève"'),
    ('$.icon == "🚀"', resp({"icon": "🚀"}), True, "🚀", None),
    ('$.city == "Zürich"', resp('{"city": "Z\\u00fcrich"}'), True, "Zürich", None),  # \u-escaped
    ('body contains "über"', resp("alles über alles"), True, None, None),
    ('body contains "über"', resp("alles über".encode("latin-1")), False, None, None),
    ('body contains "ok"', resp(b"ok \xff\xfe broken utf-8"), True, None, None),
    # bodies that are not JSON
    ('$.status == "ok"', resp("<html>oops</html>"), False, None, "$.status: the body is not JSON"),
    ("$.version exists", resp(), False, None, "$.version: the body is not JSON"),
    ("$.legacy missing", resp("plain"), False, None, "$.legacy: the body is not JSON"),
    ("$.items length > 0", resp(b"\xff\xfe"), False, None, "$.items: the body is not JSON"),
    # status and latency never read the body
    ("status == 200", resp(b"\x00 not json"), True, 200, None),
]


@pytest.mark.parametrize(("text", "response", "ok", "value", "detail"), EVALUATE)
def test_evaluate(text: str, response: Response, ok: bool, value: Any, detail: str | None) -> None:
    result = evaluate(parse_condition(text), response)
    assert result.ok is ok
    assert result.value == value
    assert type(result.value) is type(value)  # True is not 1, 1.0 stays a float
    if detail is not None:
        assert result.detail == detail
    assert result.no_data is False


@pytest.mark.parametrize(
    "text",
    ["$.items length > 0", "$.items length == 0", "$.items length != 0"],
)
@pytest.mark.parametrize("value", [5, 1.5, True, None])
def test_length_of_a_value_without_one_fails_and_says_so(text: str, value: Any) -> None:
    result = evaluate(parse_condition(text), resp({"items": value}))
    assert result.ok is False
    assert result.detail.startswith("$.items is ")
    assert result.detail.endswith("it has no length")


@pytest.mark.parametrize(
    ("value", "json_type"),
    [(5, "a number"), (1.5, "a number"), (True, "a boolean"), (None, "null")],
)
def test_length_detail_names_the_json_type(value: Any, json_type: str) -> None:
    result = evaluate(parse_condition("$.items length > 0"), resp({"items": value}))
    assert result.detail == f"$.items is {json_type}, it has no length"


@pytest.mark.parametrize(
    "text",
    [
        "status == 200",
        "latency_ms < 50",
        'body contains "x"',
        'body not_contains "x"',  # would hold on an empty body: an error must still fail
        "$.x exists",
        "$.x missing",  # would hold on any body without x
        "$.items length >= 0",
    ],
)
def test_a_response_error_fails_every_condition(text: str) -> None:
    error = Response(0, 150.0, b"", "timed out after 0.15s")
    assert evaluate(parse_condition(text), error) == Result(False, None, "timed out after 0.15s")


# -- evaluate_all ---------------------------------------------------------------------------


def conditions(*texts: str) -> list[Condition]:
    return [parse_condition(t) for t in texts]


def test_evaluate_all_passes_with_the_last_value() -> None:
    result = evaluate_all(
        conditions("status == 200", "$.items length > 0"), resp({"items": [1, 2, 3]})
    )
    assert result == Result(True, 3, "ok")


def test_evaluate_all_explains_the_first_failure_only() -> None:
    result = evaluate_all(
        conditions("status == 200", "$.items length > 0", '$.status == "ok"'),
        resp({"items": [], "status": "down"}),
    )
    assert result == Result(False, 0, "$.items length 0, expected length > 0")


def test_evaluate_all_with_a_response_error() -> None:
    error = Response(0, 3.0, b"", "connection failed: [Errno 111] Connection refused")
    result = evaluate_all(conditions("status == 200"), error)
    assert result == Result(False, None, "connection failed: [Errno 111] Connection refused")


def test_evaluate_all_without_conditions_only_needs_an_answer() -> None:
    assert evaluate_all([], resp(code=500)).ok is True
    assert evaluate_all([], Response(0, 1.0, b"", "read timed out")).ok is False


# -- judge_sample (Prometheus values) -------------------------------------------------------

JUDGE = [
    # values, bound, no_data_fails, ok, value, detail, no_data
    ([0.5], Bound(max=1), False, True, 0.5, "value 0.5", False),
    ([1.0], Bound(max=1), False, True, 1.0, "value 1", False),  # the bound itself passes
    ([2.0], Bound(max=1), False, False, 2.0, "value 2, expected <= 1", False),
    ([0.5, 3.0, 2.0], Bound(max=1), False, False, 3.0, "value 3, expected <= 1", False),
    ([0.2], Bound(min=0.5), False, False, 0.2, "value 0.2, expected >= 0.5", False),
    ([0.9, 0.2], Bound(min=0.5), False, False, 0.2, "value 0.2, expected >= 0.5", False),
    ([0.9, 0.7], Bound(min=0.5), False, True, 0.7, "value 0.7", False),  # worst: the lowest
    ([5.0], Bound(min=1, max=10), False, True, 5.0, "value 5", False),
    ([11.0], Bound(min=1, max=10), False, False, 11.0, "value 11, expected <= 10", False),
    ([0.0], Bound(min=1, max=10), False, False, 0.0, "value 0, expected >= 1", False),
    ([7.0], Bound(), False, True, 7.0, "value 7", False),
    ([0.000123], Bound(max=1e-3), False, True, 0.000123, "value 0.000123", False),
    ([-2.0], Bound(max=0), False, True, -2.0, "value -2", False),
    # no data: recorded, a failure only with no_data = "fail"
    ([], Bound(max=1), False, True, None, "no data", True),
    ([], Bound(max=1), True, False, None, "no data", True),
    ([NAN], Bound(max=1), False, True, None, "no data", True),
    ([NAN, NAN], Bound(min=1), True, False, None, "no data", True),
    # NaN beside real values is ignored
    ([NAN, 2.0], Bound(max=1), False, False, 2.0, "value 2, expected <= 1", False),
    ([NAN, 0.5], Bound(max=1), True, True, 0.5, "value 0.5", False),
]


@pytest.mark.parametrize(
    ("values", "bound", "no_data_fails", "ok", "value", "detail", "no_data"), JUDGE
)
def test_judge_sample(
    values: list[float],
    bound: Bound,
    no_data_fails: bool,
    ok: bool,
    value: float | None,
    detail: str,
    no_data: bool,
) -> None:
    assert judge_sample(values, bound, no_data_fails) == Result(ok, value, detail, no_data)


@pytest.mark.parametrize(
    ("values", "bound"),
    [([INF], Bound(max=1)), ([-INF], Bound(min=0)), ([0.5, INF], Bound(max=1))],
)
def test_infinite_values_break_their_bound(values: list[float], bound: Bound) -> None:
    result = judge_sample(values, bound, False)
    assert result.ok is False
    assert result.no_data is False


# -- prometheus_values (the instant-query answer) -------------------------------------------


def prom(data: Any, code: int = 200) -> Answer:
    body = json.dumps({"status": "success", "data": data}).encode()
    return Answer(code, 4.0, body)


@pytest.mark.parametrize(
    ("answer", "values"),
    [
        (prom({"resultType": "scalar", "result": [1795767390.4, "2.5"]}), [2.5]),
        (
            prom(
                {
                    "resultType": "vector",
                    "result": [
                        {"metric": {"path": "/a"}, "value": [1795767390.4, "1"]},
                        {"metric": {"path": "/b"}, "value": [1795767390.4, "3.5"]},
                    ],
                }
            ),
            [1.0, 3.5],
        ),
        (prom({"resultType": "vector", "result": []}), []),
        (
            prom(
                {
                    "resultType": "matrix",
                    "result": [
                        {"metric": {}, "values": [[1, "1"], [2, "4"]]},
                        {"metric": {}, "values": []},
                    ],
                }
            ),
            [4.0],
        ),
        (
            prom({"resultType": "vector", "result": [{"metric": {}, "value": [1, "+Inf"]}]}),
            [INF],
        ),
    ],
)
def test_prometheus_values(answer: Answer, values: list[float]) -> None:
    assert prometheus_values(answer) == values


def test_prometheus_nan_is_read_as_nan() -> None:
    answer = prom({"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]})
    (value,) = prometheus_values(answer)
    assert math.isnan(value)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer(0, 150.0, error="timed out after 0.15s"), "timed out after 0.15s"),
        (Answer(400, 3.0, b'{"status":"error","error":"parse error"}'), "HTTP 400"),
        (Answer(503, 3.0, b"Service Unavailable"), "HTTP 503"),
        (Answer(200, 3.0, b"<html>a proxy page</html>"), "unexpected answer"),
        (Answer(200, 3.0, b'{"status": "success"}'), "unexpected answer: KeyError"),
        (prom({"resultType": "vector", "result": [{"value": [1, "x"]}]}), "unexpected answer"),
        (prom({"resultType": "string", "result": [1, "hello"]}), "unsupported result type"),
    ],
)
def test_prometheus_answers_that_are_not_values(answer: Answer, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prometheus_values(answer)
