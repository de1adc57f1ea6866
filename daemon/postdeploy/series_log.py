"""A window's `series.jsonl` as its task knows it: the rows read at load, the rows appended
since, and the rows the disk refused (kept in memory, retried before the next row and before
the verdict is written)."""

from __future__ import annotations

import time
from typing import Any

import structlog

from postdeploy import layout
from postdeploy.series import ProbeRow
from postdeploy.store import ItemStore, ItemVanished, dump_line, parse_json_lines

log = structlog.get_logger("postdeploy.window")


class SeriesLog:
    """The probe rows of one window, on disk and in memory."""

    def __init__(self, store: ItemStore) -> None:
        self._store = store
        self.last_append_s = 0.0  # how long the last append took (a slow disk?)
        self._unwritten: list[bytes] = []  # rows the disk refused; retried before the next
        # The rows read at load and the lines appended since (bytes: not tracked by the
        # cyclic GC). None until loaded.
        self._loaded_rows: list[dict[str, Any]] | None = None
        self._appended: list[bytes] = []

    def loaded(self, rows: list[dict[str, Any]]) -> None:
        """The rows the series held when the window was loaded."""
        self._loaded_rows = rows

    async def append(self, row: ProbeRow) -> None:
        """Append `row`, with any row the disk refused before; a refusal is logged and kept."""
        line = dump_line(row.to_dict())
        self._appended.append(line)
        self._unwritten.append(line)
        started = time.monotonic()
        try:
            await self._store.append_lines(layout.SERIES, self._unwritten)
        except ItemVanished:
            raise
        except OSError as exc:
            log.error(
                "series.append_failed",
                error=str(exc),
                unwritten_rows=len(self._unwritten),
                note="kept in memory; retried with the next row and before the verdict is written",
            )
            return
        finally:
            self.last_append_s = time.monotonic() - started
        self._unwritten.clear()

    async def flush(self) -> None:
        """Write the rows the disk refused; OSError if it still refuses."""
        if self._unwritten:
            await self._store.append_lines(layout.SERIES, self._unwritten)
            self._unwritten.clear()

    async def rows(self) -> list[ProbeRow]:
        """Every row of the series, for the report: from memory when this window loaded the
        series (it wrote every row since), else read from disk."""
        if self._loaded_rows is None:
            try:
                loaded = (await self._store.read_lines(layout.SERIES)).rows
            except OSError as exc:  # never let an unreadable series block the verdict
                log.error("series.unreadable", error=str(exc), note="report without probes")
                return []
        else:
            loaded = self._loaded_rows + parse_json_lines(b"".join(self._appended)).rows
        return [r for r in map(ProbeRow.from_dict, loaded) if r is not None]
