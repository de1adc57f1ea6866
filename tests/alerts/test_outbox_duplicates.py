"""An event emitted again after it was delivered, while the disk refuses the new copy: the
copy on disk rules, and the sink never gets it twice within one life of the daemon (the
crash suite with injected write errors found a second delivery here)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from postdeploy.alerts import Outbox
from postdeploy.alerts import spool as spool_module


async def test_a_re_emitted_event_the_disk_refused_is_not_delivered_twice(
    tmp_path: Path, kit: Any, receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = receivers()
    outbox = Outbox(
        tmp_path,
        kit.sinks({"type": "webhook", "url": receiver.url}),
        kit.settings(retry_initial_s=0.05, retry_max_s=0.1),
        environ={},
    )
    event = kit.event()
    real = spool_module.Spool.write_event
    refusals: list[str] = []

    def refuse_once(self: Any, event_id: str, data: Any) -> bool:
        if not refusals:
            refusals.append(event_id)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return bool(real(self, event_id, data))

    with capture_logs() as logs:
        async with kit.running(outbox):
            await outbox.emit(event)
            await kit.wait_for(lambda: len(receiver.snapshot()) == 1, "the first delivery")
            # Archived and forgotten: the archive's move lands before the record is dropped
            # from memory, and a re-emit of an event still in memory never reaches the disk.
            await kit.wait_for(
                lambda: (
                    (tmp_path / ".outbox" / "delivered" / event.id).exists()
                    and not outbox.remembers(event.id)
                ),
                "the archive",
            )
            monkeypatch.setattr(spool_module.Spool, "write_event", refuse_once)
            await outbox.emit(event)  # emitted again (a window looked at again, say)
            await outbox.until_written([event.id])
            # Whichever comes first: the copy dropped as a duplicate, or a second delivery.
            await kit.wait_for(
                lambda: (
                    kit.logged(logs, "alert.duplicate", event_id=event.id)
                    or len(receiver.snapshot()) > 1
                ),
                "the duplicate dropped, or delivered again",
            )
    assert refusals == [event.id]
    assert len(receiver.snapshot()) == 1
