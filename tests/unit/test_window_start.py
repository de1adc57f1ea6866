"""`window.json`: a window's start, as recorded and as read back on a restart (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from postdeploy.config import WindowSettings
from postdeploy.window import Schedule, WindowStart


def test_new_takes_the_schedule_of_the_settings() -> None:
    settings = WindowSettings(window_s=10.0, interval_s=2.0, initial_delay_s=1.0)
    start = WindowStart.new(settings, 100.0, {"commit": "abc"}, 100.5)
    assert start == WindowStart(Schedule(100.0, 1.0, 2.0, 5), 100.5, {"commit": "abc"}, 10.0)


def test_new_defaults_the_initial_delay_to_the_interval() -> None:
    start = WindowStart.new(WindowSettings(window_s=9.0, interval_s=3.0), 0.0, {}, 0.0)
    assert (start.schedule.initial_delay_s, start.schedule.max_ticks) == (3.0, 3)


def test_to_dict_is_the_recorded_file_and_reads_back() -> None:
    start = WindowStart(Schedule(100.0, 1.0, 2.0, 5), 100.5, {"commit": "abc"}, 10.0)
    data = start.to_dict()
    assert data == {
        **Schedule(100.0, 1.0, 2.0, 5).to_dict(),
        "window_s": 10.0,
        "first_seen_at": 100.5,
        "metadata": {"commit": "abc"},
    }
    assert WindowStart.from_dict(data) == start


@pytest.mark.parametrize(
    ("extra", "expected_window_s", "expected_metadata"),
    [
        ({}, None, {}),  # an older window.json: no window_s, no metadata
        ({"window_s": 7}, 7.0, {}),
        ({"window_s": "7"}, None, {}),  # not a number: unknown
        ({"metadata": {"k": "v"}}, None, {"k": "v"}),
    ],
)
def test_from_dict_tolerates_what_older_files_lack(
    extra: dict[str, Any], expected_window_s: float | None, expected_metadata: dict[str, str]
) -> None:
    data = {**Schedule(1.0, 0.0, 1.0, 3).to_dict(), "first_seen_at": 2, **extra}
    start = WindowStart.from_dict(data)
    assert (start.window_s, start.metadata, start.first_seen_at) == (
        expected_window_s,
        expected_metadata,
        2.0,
    )


@pytest.mark.parametrize("metadata", [["a"], "text", 3])
def test_from_dict_refuses_metadata_that_is_not_an_object(metadata: Any) -> None:
    data = {**Schedule(1.0, 0.0, 1.0, 3).to_dict(), "first_seen_at": 2, "metadata": metadata}
    with pytest.raises(ValueError, match="metadata is not an object"):
        WindowStart.from_dict(data)
