"""A small TOML writer for the config files the tests write (tomllib only reads)."""

from __future__ import annotations

import json
import re
from typing import Any


def toml_value(value: Any) -> str:
    """A scalar, a list, or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string without \\u escapes of non-ASCII is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def render_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Scalars and lists first, then sub-tables, then arrays of tables (`[[alerts]]`)."""
    lines = [
        f"{toml_key(k)} = {toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not _is_table_list(v)
    ]
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in data.items():
        name = f"{prefix}.{toml_key(key)}" if prefix else toml_key(key)
        if isinstance(value, dict):
            out += f"\n[{name}]\n" + render_toml(value, name)
        elif _is_table_list(value):
            for entry in value:
                out += f"\n[[{name}]]\n" + render_toml(entry, name)
    return out
