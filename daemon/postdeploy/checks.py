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

A parsed condition is one of five small types, one per kind of line: `Compare`, `Length`,
`Presence`, `Contains` and `Matches`. `Condition` is their union; `evaluate` judges one and
`_expectation` words what it expects.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

_PATH_RE = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\[\"[^\"]*\"\])*)$")
_PATH_PREFIX_RE = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\[\"[^\"]*\"\])*")
_STEP_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[\"([^\"]*)\"\]")
_MISSING = object()
# A feature check's name (the config's rule; a baseline file's other keys are junk).
CHECK_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message says what is wrong."""


class CompareOp(enum.Enum):
    """A comparison operator, by its spelling in a condition."""

    # In the order the parser tries them: `<=` before `<`, or `<= 5` would read as `<` `= 5`.
    EQ = "=="
    NE = "!="
    LE = "<="
    GE = ">="
    LT = "<"
    GT = ">"

    @property
    def orders(self) -> bool:
        """`<`, `<=`, `>`, `>=`: defined on numbers only (`==` and `!=` take any value)."""
        return self in _ORDERING


# The ordering operators, applied once both sides are numbers.
_ORDERING: dict[CompareOp, Callable[[Any, Any], bool]] = {
    CompareOp.LT: operator.lt,
    CompareOp.LE: operator.le,
    CompareOp.GT: operator.gt,
    CompareOp.GE: operator.ge,
}


@dataclass(frozen=True, kw_only=True)
class _Parsed:
    """What every kind of condition has besides its own fields."""

    text: str = ""  # the line as written

    @property
    def expectation(self) -> str:
        """The expected part, for reasons: e.g. `> 0`, `== "ok"`, `exists`."""
        return _expectation(cast(Condition, self))  # every subclass is one of Condition


@dataclass(frozen=True)
class Compare(_Parsed):
    """`status == 200`, `latency_ms < 500`, `$.stock >= 1`: the subject's value against `value`.

    `subject` is status, latency_ms or a JSON path; the body's kinds have no subject field.
    """

    subject: str
    op: CompareOp
    value: Any


@dataclass(frozen=True)
class Length(_Parsed):
    """`$.items length > 0`: the length of the list, object or string at a JSON path."""

    subject: str
    op: CompareOp
    value: int | float


@dataclass(frozen=True)
class Presence(_Parsed):
    """`$.version exists` (present) or `$.legacy missing` (not present)."""

    subject: str
    present: bool


@dataclass(frozen=True)
class Contains(_Parsed):
    """`body contains "ok"`, or with `negate` `body not_contains "error"`: a plain substring."""

    needle: str
    negate: bool = False


@dataclass(frozen=True)
class Matches(_Parsed):
    """`body matches "v\\d+"`: a regular expression found anywhere in the body."""

    pattern: str


# One parsed condition, as `parse_condition` returns it. Two functions tell the kinds apart:
# `evaluate` and `_expectation`.
Condition = Compare | Length | Presence | Contains | Matches


def _expectation(condition: Condition) -> str:
    """The expected part of a condition, for reasons: e.g. `> 0`, `== "ok"`, `exists`."""
    match condition:
        case Compare(op=op, value=value):
            return f"{op.value} {_show(value)}"
        case Length(op=op, value=value):
            return f"length {op.value} {_show(value)}"
        case Presence(present=present):
            return "exists" if present else "missing"
        case Contains(needle=needle, negate=negate):
            return f"{'not_contains' if negate else 'contains'} {_show(needle)}"
        case Matches(pattern=pattern):
            return f"matches {_show(pattern)}"


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


def _split_op(rest: str, condition: str) -> tuple[CompareOp, Any]:
    for op in CompareOp:
        if rest.startswith(op.value):
            value_text = rest[len(op.value) :].strip()
            if not value_text:
                raise ConditionError(f"{condition!r}: a value is missing after {op.value}")
            return op, _literal(value_text, condition)
    spellings = " ".join(op.value for op in CompareOp)
    raise ConditionError(f"{condition!r}: expected one of {spellings} after the subject")


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
        return _parse_body(word, tail, text)
    if word in ("exists", "missing"):
        if not subject.startswith("$") or tail.strip():
            raise ConditionError(f"{text!r}: {word} goes alone after a JSON path")
        return Presence(subject, word == "exists", text=text)
    if word == "length":
        if not subject.startswith("$"):
            raise ConditionError(f"{text!r}: length applies to a JSON path")
        op, value = _split_op(tail.strip(), text)
        if not _is_number(value):
            raise ConditionError(f"{text!r}: length compares with a number")
        return Length(subject, op, value, text=text)
    op, value = _split_op(rest, text)
    if subject in ("status", "latency_ms") and not _is_number(value):
        raise ConditionError(f"{text!r}: {subject} compares with a number")
    if op.orders and not _is_number(value):
        raise ConditionError(f"{text!r}: {op.value} compares with a number")
    return Compare(subject, op, value, text=text)


def _parse_body(word: str, tail: str, text: str) -> Contains | Matches:
    """The rest of a `body ...` condition: contains, not_contains or matches, and a string."""
    if word not in ("contains", "not_contains", "matches"):
        raise ConditionError(f"{text!r}: body takes contains, not_contains or matches")
    value = _literal(tail, text)
    if not isinstance(value, str):
        raise ConditionError(f"{text!r}: {word} needs a string")
    if word != "matches":
        return Contains(value, negate=word == "not_contains", text=text)
    try:
        re.compile(value)
    except re.error as exc:
        raise ConditionError(f"{text!r}: bad regular expression: {exc}") from None
    return Matches(value, text=text)


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


def is_json_path(text: str) -> bool:
    """Whether `text` is a JSON path the conditions accept ($.a.b[0], $["in stock"])."""
    return bool(_PATH_RE.fullmatch(text))


def _document(text: str) -> Any:
    """The body parsed as JSON, or _MISSING: not JSON, an int over the digit limit, too deep."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _MISSING


def json_number(body: bytes, path: str) -> float | None:
    """The finite number at `path` in a JSON `body` (read as the conditions read it); None
    when the body is not JSON or the value is missing, not a number (a bool is not), or not
    finite."""
    document = _document(body.decode("utf-8", "replace"))
    value = _MISSING if document is _MISSING else json_path(document, path)
    return float(value) if _is_number(value) else None


def _equal(left: Any, right: Any) -> bool:
    # JSON true is not 1: booleans only equal booleans.
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return bool(left == right)


def _compare(op: CompareOp, left: Any, right: Any) -> bool:
    if op is CompareOp.EQ:
        return _equal(left, right)
    if op is CompareOp.NE:
        return not _equal(left, right)
    if not (_is_number(left) and _is_number(right)):
        return False
    return _ORDERING[op](left, right)


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
    match condition:
        case Compare(subject="status"):
            ok = _compare(condition.op, response.code, condition.value)
            return Result(ok, response.code, f"status {response.code}")
        case Compare(subject="latency_ms"):
            ok = _compare(condition.op, response.latency_ms, condition.value)
            shown = f"latency_ms {response.latency_ms:.1f}"
            return Result(ok, round(response.latency_ms, 1), shown)
    # Every other kind reads the body: as text, or the value at a JSON path.
    text = response.body.decode("utf-8", "replace")
    match condition:
        case Contains():
            ok = (condition.needle in text) is not condition.negate
            return _body(ok, condition)
        case Matches():
            return _body(re.search(condition.pattern, text) is not None, condition)
    document = _document(text)
    if document is _MISSING:
        return Result(False, None, f"{condition.subject}: the body is not JSON")
    value = json_path(document, condition.subject)
    if isinstance(condition, Presence):
        ok = (value is not _MISSING) is condition.present
        return Result(ok, None, f"{condition.subject} {_presence(value)}")
    if value is _MISSING:
        return Result(False, None, f"{condition.subject} missing")
    if isinstance(condition, Compare):
        ok = _compare(condition.op, value, condition.value)
        return Result(ok, value, f"{condition.subject} {_show(value)}")
    if not isinstance(value, list | dict | str):
        kind = "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"
        return Result(False, None, f"{condition.subject} is {kind}, it has no length")
    size = len(value)
    ok = _compare(condition.op, size, condition.value)
    return Result(ok, size, f"{condition.subject} length {size}")


def _presence(value: Any) -> str:
    return "missing" if value is _MISSING else "exists"


def _body(ok: bool, condition: Contains | Matches) -> Result:
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
