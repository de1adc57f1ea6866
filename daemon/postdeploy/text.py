"""Any text cut to fit (pure; imports nothing heavy, so the light commands can use it)."""

from __future__ import annotations

ELLIPSIS = "\u2026"


def clip(text: str, limit: int, *, mark: str = ELLIPSIS, fold: bool = False) -> str:
    """`text` cut to at most `limit` characters, ending with `mark` where it was cut; pure.

    `fold`: every run of white space (newlines too) becomes one space first, for a text
    that must stay on one line (a receiver's answer, a command's output)."""
    if fold:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - len(mark)] + mark
