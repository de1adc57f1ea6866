"""Reading what the daemon leaves on disk: JSON-lines files and a report's front matter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-blank line of a JSON-lines file, parsed; [] if there is no file yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a `report.md` (between the leading `---` lines)."""
    assert text.startswith("---\n"), text[:200]
    front, sep, _body = text[4:].partition("\n---\n")
    assert sep, "report.md front matter is not closed by ---"
    data = yaml.safe_load(front)
    assert isinstance(data, dict)
    return data
