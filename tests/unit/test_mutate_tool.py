"""`tools/mutate.py` on a toy module, so the mutation runner behind `make mutate` does not rot.

The toy has a known equivalent mutant (`x < low` made `x <= low`: at `x == low` both return
the same value), mutants its test kills, and one that loops for ever (caught by the timeout).
The children are real forked processes running pytest on real files.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "mutate.py"

TOY = """\
def clamp(x, low, high):
    if x < low:
        return low
    return min(x, high)


def countdown(n):
    while n > 0:
        n -= 1
    return n
"""

TOY_TEST = """\
from toy_clamp import clamp, countdown


def test_clamp():
    assert [clamp(x, 0, 10) for x in (-1, 0, 5, 11)] == [0, 0, 5, 10]


def test_countdown():
    assert countdown(3) == 0
"""


@pytest.fixture(scope="module")
def mutate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("postdeploy_mutate_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_mutants_of_a_toy_module(mutate: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "toy_clamp.py").write_text(TOY)
    (tmp_path / "test_toy.py").write_text(TOY_TEST)
    target = mutate.Target(
        "toy", "toy_clamp", tmp_path / "toy_clamp.py", (str(tmp_path / "test_toy.py"),)
    )
    found = mutate.mutants(target, TOY)
    changes = [m.change for m in found]
    assert "`x < low` -> `x <= low`" in changes
    assert "`min(...)` -> `max(...)`" in changes
    assert "`n -= 1` -> `n += 1`" in changes
    # The source itself is never changed; a mutant is a tree.
    assert mutate.ast.unparse(mutate.apply(TOY, found[0])) != mutate.ast.unparse(
        mutate.ast.parse(TOY)
    )

    looping = next(m for m in found if m.change == "`n -= 1` -> `n += 1`")
    chosen = [
        m for m in found if m.change in ("`x < low` -> `x <= low`", "`min(...)` -> `max(...)`")
    ]
    chosen.append(looping)
    args = ["--rootdir", str(tmp_path), "-p", "no:asyncio"]
    mutate.warm([str(tmp_path / "test_toy.py")], args, forget=[tmp_path])
    (base,) = mutate.run(target, [None], timeout=60.0, pytest_args=args)
    assert base.status == 0, "the unmutated toy passes its test"
    print(f"unmutated run: {base.seconds:.2f} s")
    # The looping mutant costs the whole timeout: long enough for a child on a loaded box.
    outcomes = mutate.run(target, chosen, timeout=max(5.0, 5 * base.seconds), pytest_args=args)
    by_change = {o.mutant.change: o for o in outcomes}
    assert not by_change["`x < low` -> `x <= low`"].killed  # the equivalent one survives
    assert by_change["`min(...)` -> `max(...)`"].killed
    assert by_change["`n -= 1` -> `n += 1`"].status is None  # timed out: counted as killed
    assert by_change["`n -= 1` -> `n += 1`"].killed
    assert (tmp_path / "toy_clamp.py").read_text() == TOY

    score = mutate.score(target, outcomes)
    assert score.mutants == len(chosen)
    assert [m.change for m in score.survivors] == ["`x < low` -> `x <= low`"]
