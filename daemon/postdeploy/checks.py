"""Feature-check conditions: parsing and evaluation (pure: no I/O).

A condition is one readable line, parsed by a small hand-written grammar (never `eval`):

    status == 200                 the HTTP status code
    latency_ms < 500              the response time
    body contains "in stock"      the body text (also: not_contains, matches REGEX)
    $.status == "ok"              a value inside a JSON body, by path ($.a.b[0].c)
    $.items length > 0            the length of a list, object or string
    $.version exists              (also: missing)
    $.stock >= 1                  numeric comparisons: == != < <= > >=

Values are JSON literals (`200`, `1.5`, `"text"`, `true`, `null`); single quotes work too.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

_OPS = ("==", "!=", "<=", ">=", "<", ">")
_PATH_RE = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\[\"[^\"]*\"\])*)$")
_PATH_PREFIX_RE = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\[\"[^\"]*\"\])*")
_STEP_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[\"([^\"]*)\"\]")
_MISSING = object()


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Condition:
    """One parsed condition. `subject` is status | latency_ms | body | a JSON path."""

    text: str
    subject: str
    op: str  # one of _OPS, exists, missing, contains, not_contains, matches, length
    value: Any = None
    length_op: str = ""  # with op == "length": the comparison applied to the length

    @property
    def expectation(self) -> str:
        """The expected part, for reasons: e.g. `> 0`, `== "ok"`, `exists`."""
        if self.op == "length":
            return f"length {self.length_op} {_show(self.value)}"
        if self.op in ("exists", "missing"):
            return self.op
        return f"{self.op} {_show(self.value)}"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _literal(text: str, condition: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        raise ConditionError(
            f'{condition!r}: {text!r} is not a value (use a number, "text", true, false, null)'
        ) from None


def _split_op(rest: str, condition: str) -> tuple[str, Any]:
    for op in _OPS:
        if rest.startswith(op):
            value_text = rest[len(op) :].strip()
            if not value_text:
                raise ConditionError(f"{condition!r}: a value is missing after {op}")
            return op, _literal(value_text, condition)
    raise ConditionError(f"{condition!r}: expected one of {' '.join(_OPS)} after the subject")


@functools.lru_cache(maxsize=4096)
def parse_condition(text: str) -> Condition:
    """Parse one condition line; raises ConditionError naming what is wrong."""
    stripped = text.strip()
    if not stripped:
        raise ConditionError("empty condition")
    subject, _, rest = stripped.partition(" ")
    if subject.startswith("$"):
        # A quoted key may hold spaces ($["in stock"]): take the whole path when a space or
        # the end follows it.
        match = _PATH_PREFIX_RE.match(stripped)
        if match and stripped[match.end() : match.end() + 1] in ("", " "):
            subject, rest = match.group(0), stripped[match.end() :]
    rest = rest.strip()
    if subject not in ("status", "latency_ms", "body") and not subject.startswith("$"):
        raise ConditionError(
            f"{text!r}: the subject must be status, latency_ms, body or a JSON path like $.items"
        )
    if subject.startswith("$") and not _PATH_RE.fullmatch(subject):
        raise ConditionError(f"{text!r}: {subject!r} is not a JSON path like $.a.b[0]")
    word, _, tail = rest.partition(" ")
    if subject == "body":
        if word in ("contains", "not_contains", "matches"):
            value = _literal(tail, text)
            if not isinstance(value, str):
                raise ConditionError(f"{text!r}: {word} needs a string")
            if word == "matches":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ConditionError(f"{text!r}: bad regular expression: {exc}") from None
            return Condition(text, subject, word, value)
        raise ConditionError(f"{text!r}: body takes contains, not_contains or matches")
    if word in ("exists", "missing"):
        if not subject.startswith("$") or tail.strip():
            raise ConditionError(f"{text!r}: {word} goes alone after a JSON path")
        return Condition(text, subject, word)
    if word == "length":
        if not subject.startswith("$"):
            raise ConditionError(f"{text!r}: length applies to a JSON path")
        op, value = _split_op(tail.strip(), text)
        if not _is_number(value):
            raise ConditionError(f"{text!r}: length compares with a number")
        return Condition(text, subject, "length", value, length_op=op)
    op, value = _split_op(rest, text)
    if subject in ("status", "latency_ms") and not _is_number(value):
        raise ConditionError(f"{text!r}: {subject} compares with a number")
    if op in ("<", "<=", ">", ">=") and not _is_number(value):
        raise ConditionError(f"{text!r}: {op} compares with a number")
    return Condition(text, subject, op, value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def json_path(document: Any, path: str) -> Any:
    """The value at `path` ($.a.b[0]) in a parsed JSON document, or _MISSING."""
    current = document
    for key, index, quoted in _STEP_RE.findall(path[1:]):
        if index:
            position = int(index)
            if not isinstance(current, list) or position >= len(current):
                return _MISSING
            current = current[position]
        else:
            name = key or quoted
            if not isinstance(current, dict) or name not in current:
                return _MISSING
            current = current[name]
    return current


def _equal(left: Any, right: Any) -> bool:
    # JSON true is not 1: booleans only equal booleans.
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return bool(left == right)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if not (_is_number(left) and _is_number(right)):
        return False
    return bool(
        {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    )


@dataclass(frozen=True)
class Response:
    """What a feature check's request got back (code 0: no answer)."""

    code: int
    latency_ms: float
    body: bytes = b""
    error: str | None = None


@dataclass(frozen=True)
class Result:
    """A condition's outcome: whether it held, the measured value, and why (for reasons)."""

    ok: bool
    value: Any
    detail: str
    no_data: bool = False  # a query that returned nothing: recorded, not a failure by default


def evaluate(condition: Condition, response: Response) -> Result:
    """Evaluate one condition against a response."""
    if response.error is not None:
        return Result(False, None, response.error)
    if condition.subject == "status":
        return _judge(condition, response.code, f"status {response.code}")
    if condition.subject == "latency_ms":
        result = _judge(condition, response.latency_ms, f"latency_ms {response.latency_ms:.1f}")
        return Result(result.ok, round(response.latency_ms, 1), result.detail)
    text = response.body.decode("utf-8", "replace")
    if condition.subject == "body":
        return _body(condition, text)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an int over the digit limit, too deep
        return Result(False, None, f"{condition.subject}: the body is not JSON")
    value = json_path(document, condition.subject)
    if condition.op == "exists":
        return Result(value is not _MISSING, None, f"{condition.subject} {_presence(value)}")
    if condition.op == "missing":
        return Result(value is _MISSING, None, f"{condition.subject} {_presence(value)}")
    if value is _MISSING:
        return Result(False, None, f"{condition.subject} missing")
    if condition.op == "length":
        if not isinstance(value, list | dict | str):
            kind = (
                "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"
            )
            return Result(False, None, f"{condition.subject} is {kind}, it has no length")
        size = len(value)
        ok = _compare(condition.length_op, size, condition.value)
        return Result(ok, size, f"{condition.subject} length {size}")
    return _judge(condition, value, f"{condition.subject} {_show(value)}")


def _presence(value: Any) -> str:
    return "missing" if value is _MISSING else "exists"


def _judge(condition: Condition, value: Any, shown: str) -> Result:
    return Result(_compare(condition.op, value, condition.value), value, shown)


def _body(condition: Condition, text: str) -> Result:
    needle = str(condition.value)
    if condition.op == "contains":
        ok = needle in text
    elif condition.op == "not_contains":
        ok = needle not in text
    else:
        ok = re.search(needle, text) is not None
    return Result(ok, None, f"body {'matches' if ok else 'does not match'} {condition.expectation}")


def evaluate_all(conditions: list[Condition], response: Response) -> Result:
    """All conditions must hold; the first that does not explains the failure."""
    if response.error is not None:
        return Result(False, None, response.error)
    last = Result(True, None, f"status {response.code}")
    for condition in conditions:
        result = evaluate(condition, response)
        if not result.ok:
            return Result(False, result.value, f"{result.detail}, expected {condition.expectation}")
        last = result
    return Result(True, last.value, "ok")


@dataclass(frozen=True)
class Bound:
    """A bound on a Prometheus query's value."""

    max: float | None = None
    min: float | None = None


def judge_sample(values: list[float], bound: Bound, no_data_fails: bool) -> Result:
    """Judge a PromQL query's values against its bound; the worst value is reported."""
    finite = [v for v in values if not math.isnan(v)]  # +Inf and -Inf are data
    if not finite:
        return Result(not no_data_fails, None, "no data", no_data=True)
    if bound.max is not None:
        worst = max(finite)
        if worst > bound.max:
            return Result(False, worst, f"value {worst:g}, expected <= {bound.max:g}")
    if bound.min is not None:
        worst = min(finite)
        if worst < bound.min:
            return Result(False, worst, f"value {worst:g}, expected >= {bound.min:g}")
    worst = max(finite) if bound.max is not None else min(finite)
    return Result(True, worst, f"value {worst:g}")
