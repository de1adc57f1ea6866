"""Webhook body templates: a TOML table whose strings hold `{placeholder}`s (pure: no I/O).

A template lets one `webhook` sink speak another service's API, e.g. open a work item in a
tracker. Only plain names are allowed (no attribute access, indexing or nested fields), they
are checked when the config is loaded, and they are filled from a mapping of strings, so a
template can never reach into Python objects. Every name `X` has an `X_html` variant with the
value HTML-escaped, for fields a service renders as HTML.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

# Fields filled from the event (see format.template_values).
FIELDS = (
    "id",
    "kind",
    "severity",
    "repo",
    "work_item",
    "status",
    "action_taken",
    "reason",
    "at",
    "title",  # one line: "shop/release-42: DEGRADED (ALERT_ONLY)"
    "details",  # several lines: the reason, the evidence, the metadata
    "evidence_json",
)
# `meta_<key>`: the metadata value of <key> from `armed`, or "" when absent.
META_FIELD_RE = re.compile(r"^meta_([A-Za-z][A-Za-z0-9_]{0,63})$")
MAX_DEPTH = 8


def known_field(name: str) -> bool:
    """Whether `{name}` may appear in a template."""
    base = name.removesuffix("_html")
    return base in FIELDS or META_FIELD_RE.fullmatch(base) is not None


def _check_string(text: str, where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _literal, name, spec, _conversion in parsed:
        if name is None:
            continue
        if not known_field(name):
            allowed = ", ".join(FIELDS)
            raise ValueError(
                f"{where}: unknown placeholder {{{name}}}; allowed: {allowed}, meta_<key>, "
                "and each with an _html suffix"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{where}: nested placeholders in a format spec are not allowed")


def _walk(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{where}[{index}]", depth + 1)
    elif not isinstance(value, bool | int | float) and value is not None:
        raise ValueError(f"{where}: {type(value).__name__} values cannot be sent as JSON")


def check_template(template: dict[str, Any]) -> dict[str, Any]:
    """Validate a body template; raises ValueError naming the bad string."""
    _walk(template, "body", 0)
    # A trial fill catches what parsing cannot, e.g. a format spec a string rejects.
    sample = {name: "x" for base in FIELDS for name in (base, f"{base}_html")}
    try:
        render_template(template, sample)
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"body: cannot be filled: {exc}") from None
    return template


class _PlainNames(string.Formatter):
    """A formatter that looks names up in the mapping and does nothing else."""

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        return kwargs[field_name], field_name


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        if META_FIELD_RE.fullmatch(key.removesuffix("_html")):
            return ""  # a metadata key the deploy did not set
        raise KeyError(key)


def render_template(template: Any, values: Mapping[str, str]) -> Any:
    """Fill every string of `template` from `values`; other JSON values pass through."""
    mapping = _Values(values)
    formatter = _PlainNames()

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return formatter.vformat(value, (), mapping)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    return fill(template)
