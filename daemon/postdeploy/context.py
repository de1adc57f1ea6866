"""What every part of one window's task shares: its work item, its config, its tally, its clock.

A window's task is split in parts (`observe`, `conclusion`, `verification`, `outcome`,
`emission`), run one after the other by `runner.WindowRunner`; this is the state they hand on.
The config is read live: a reload (`WindowRunner.reconfigure`) applies from the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postdeploy.clock import Clock
from postdeploy.config import RepoConfig, WindowSettings
from postdeploy.layout import ItemKey
from postdeploy.probe import Prober
from postdeploy.series import Tally
from postdeploy.store import ItemStore
from postdeploy.verdict import Thresholds
from postdeploy.window import WindowStart


def thresholds(settings: WindowSettings, repo: RepoConfig) -> Thresholds:
    """The rule thresholds of a repo's windows, with each feature check's own."""
    checks = {c.name: c.fail_threshold for c in repo.checks if c.fail_threshold is not None}
    lookbacks = {c.name: c.fail_lookback for c in repo.checks if c.fail_lookback is not None}
    return Thresholds(
        settings.fail_threshold,
        settings.fivexx_threshold,
        settings.min_samples,
        checks,
        fail_lookback=settings.fail_lookback or 0,
        check_lookbacks=lookbacks,
        min_judged_fraction=settings.min_judged_fraction,
    )


@dataclass
class WindowContext:
    """One open window's shared state (mutable: the tally grows, a reload swaps the config)."""

    store: ItemStore
    start: WindowStart
    repo: RepoConfig
    settings: WindowSettings
    prober: Prober
    clock: Clock
    tally: Tally = field(default_factory=Tally)
    # The schedule's wall-clock times become monotonic deadlines once, here.
    wall0: float = field(init=False)
    mono0: float = field(init=False)

    def __post_init__(self) -> None:
        self.wall0 = self.clock.time()
        self.mono0 = self.clock.monotonic()

    @property
    def key(self) -> ItemKey:
        return self.store.key

    @property
    def metadata(self) -> dict[str, str]:
        return self.start.metadata

    def now(self) -> float:
        """Schedule time: wall time at load, advanced by the monotonic clock."""
        return self.wall0 + (self.clock.monotonic() - self.mono0)

    def thresholds(self) -> Thresholds:
        """The rule thresholds under the config in force now."""
        return thresholds(self.settings, self.repo)
