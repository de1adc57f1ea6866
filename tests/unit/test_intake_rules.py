"""Rules of `intake.judge` that no other fast test pinned (found by `make mutate`).

When `armed` is not quiet yet, intake looks again after the rest of the quiet time; the delay
is never zero (a look that came back at once would spin) and never longer than QUIET_S.
"""

from __future__ import annotations

import os
import stat

import pytest

from postdeploy import layout
from postdeploy.intake import OWN, QUIET_S, Look, Quiet, identity, judge


def armed_stat(mtime: float) -> os.stat_result:
    ns = int(mtime * 1e9)
    return os.stat_result(
        (stat.S_IFREG | 0o644, 7, 1, 1, 0, 0, 0, 0, 0, 0, mtime, mtime, mtime, ns, ns, ns)
    )


@pytest.mark.parametrize(
    ("age", "delay"),
    [
        (0.0, QUIET_S),  # written at the very moment of the look
        (QUIET_S / 4, QUIET_S * 3 / 4),  # the rest of the quiet time
        (QUIET_S, QUIET_S),  # quiet already (a changed file): a full quiet time, never 0
        (-5.0, QUIET_S),  # an mtime in the future
    ],
)
def test_quiet_delay(age: float, delay: float) -> None:
    # seen_at - mtime is exact with these numbers: mtime 0.0.
    names = {layout.ARMED, layout.DONE, layout.REJECTED, layout.CANCEL, *OWN}
    kinds: dict[str, str | None] = dict.fromkeys(names)
    kinds[layout.ARMED] = "file"
    st = armed_stat(0.0)
    look = Look(kinds, st, None, seen_at=age)
    assert judge(look, repo="shop", known=True, enabled=True) == Quiet(identity(st), delay)
