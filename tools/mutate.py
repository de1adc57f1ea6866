"""Mutation testing of postdeploy's pure core, with `ast` and the standard library alone.

    python tools/mutate.py                      # every target (`make mutate`)
    python tools/mutate.py --only window,series # some targets
    python tools/mutate.py --list               # the mutants, without running anything

A mutant is the target module's source with one small change (a `<` made `<=`, a `+` made
`-`, a constant moved by one, `True` made `False`, `and` made `or`, a `not` dropped, a
`return X` made `return None`, an `if` forced one way, a `raise` removed, `min` made `max`).
Each mutant runs the target's fast unit tests; if they all still pass, the mutant *survived*:
no test pins the rule that was changed. The score is the share of mutants killed, leaving out
the ones listed in EQUIVALENT (changes no test can see, each with the reason).

How a mutant is run, without touching the working tree: the parent process imports pytest
and its plugins once, then forks one child per mutant. The child puts an import hook first
on `sys.meta_path` that serves the target module's name from the mutated tree (compiled in
memory), and calls `pytest.main` on the target's test files with `-x`. Exit status 0 means
the mutant survived; any other status (a failing test, an import error) means it was
killed. A child still running after the timeout is killed and counted as killed: a mutant
that loops for ever (a `while` whose step goes the wrong way) is caught that way.

Not mutated: docstrings, type annotations, decorators (`@dataclass(frozen=True)`), import
statements, and prose: f-strings and string constants holding a space (the wording of reasons).
Other strings (keys, enum values, operators) are: `"ok"` becomes `"XXokXX"`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.abc
import importlib.machinery
import io
import os
import signal
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "daemon" / "postdeploy"
WORKERS = 2  # CI is a 2-core box
MIN_SCORE = 90.0  # per target: the share of non-equivalent mutants the fast tests must kill
TIMEOUT_S = 20.0  # per mutant; raised to 5x the unmutated run if that is slower


@dataclass(frozen=True)
class Target:
    """A module to mutate, the tests that must pin it, and optionally which functions."""

    name: str  # the label in the report
    module: str  # its import name
    path: Path
    tests: tuple[str, ...]  # pytest arguments (paths relative to the working directory)
    functions: tuple[str, ...] = ()  # qualified names; empty: the whole module


TARGETS = (
    Target(
        "verdict",
        "postdeploy.verdict",
        PACKAGE / "verdict.py",
        (
            "tests/unit/test_verdict.py",
            "tests/unit/test_verdict_rules.py",
            "tests/unit/test_judgement_rules.py",
            "tests/unit/test_baseline.py",
            "tests/checks/test_rules.py",
        ),
    ),
    Target(
        "window",
        "postdeploy.window",
        PACKAGE / "window.py",
        (
            "tests/unit/test_window.py",
            "tests/unit/test_window_rules.py",
            "tests/unit/test_window_start.py",
        ),
    ),
    Target(
        "series",
        "postdeploy.series",
        PACKAGE / "series.py",
        (
            "tests/unit/test_series.py",
            "tests/unit/test_series_rules.py",
            "tests/unit/test_judgement_rules.py",
            "tests/unit/test_baseline.py",
            "tests/checks/test_rules.py",
        ),
    ),
    Target("stats", "postdeploy.stats", PACKAGE / "stats.py", ("tests/unit/test_stats.py",)),
    Target(
        "baseline",
        "postdeploy.baseline",
        PACKAGE / "baseline.py",
        ("tests/unit/test_baseline.py", "tests/unit/test_baseline_checks.py"),
    ),
    Target(
        "checks",
        "postdeploy.checks",
        PACKAGE / "checks.py",
        (
            "tests/checks/test_conditions.py",
            "tests/unit/test_checks_rules.py",
            "tests/checks/test_rules.py",
        ),
    ),
    Target(
        "intake.judge",
        "postdeploy.intake",
        PACKAGE / "intake.py",
        ("tests/unit/test_intake.py", "tests/unit/test_intake_rules.py"),
        functions=("judge", "_stop"),
    ),
)

# Mutants no test can tell from the original, by (target, source line, change), with the reason.
# A person decides what goes here, after reading the survivor; the score leaves them out.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("verdict", 'last = tally.recent[-1].detail if tally.recent else ""', "`''` -> `'XXXX'`"): (
        "the health rule trips on a streak, and a streak needs a row: `recent` is never empty "
        "there (the config's fail_threshold is at least 1)"
    ),
    (
        "window",
        "k = min(math.floor((now - self.tick_time(0)) / self.interval_s), self.max_ticks - 1)",
        "`1` -> `2`",
    ): "the first guess capped one tick lower: the upward loop adds the tick back",
    (
        "window",
        "k = min(math.floor((now - self.tick_time(0)) / self.interval_s), self.max_ticks - 1)",
        "`0` -> `1`",
    ): "the first guess measured from tick 1, one tick low: the upward loop adds it back",
    ("window", "k += 1", "`1` -> `2`"): (
        "the upward loop stepping two at a time: one tick too far, the downward loop takes it back"
    ),
    ("window", "while k > 0 and self.tick_time(k) > now:", "`k > 0` -> `k >= 0`"): (
        "at k 0 the loop's other half is false: tick 0 is not after `now` (checked on entry)"
    ),
    ("window", 'RUN = "RUN"  # probe on schedule', "`'RUN'` -> `'XXRUNXX'`"): (
        "an Admission is compared by identity and never written"
    ),
    (
        "window",
        'CATCH_UP = "CATCH_UP"  # its end passed while the daemon was down: one catch-up probe',
        "`'CATCH_UP'` -> `'XXCATCH_UPXX'`",
    ): "an Admission is compared by identity and never written",
    (
        "window",
        'MISSED = "MISSED"  # first seen after its end: never judged on one probe',
        "`'MISSED'` -> `'XXMISSEDXX'`",
    ): "an Admission is compared by identity and never written",
    (
        "series",
        "RECENT_ROWS = 5  # how many of the last rows a tally keeps as evidence",
        "`5` -> `6`",
    ): "a size, not a rule: how many rows the evidence shows (the tests read the constant)",
    ("series", "LOOKBACK_KEPT = 1000", "`1000` -> `1001`"): (
        "a size, not a rule: one more judged result kept than a k-of-n rule can ask for "
        "(the config caps fail_lookback at 1000)"
    ),
    (
        "series",
        "return ((bits << 1) | failed) & ((1 << LOOKBACK_KEPT) - 1)",
        "`1` -> `2`",
    ): "the mask keeps one bit more than LOOKBACK_KEPT: a size, as above",
    (
        "series",
        "health_bits: int = 0  # the judged health results, most recent lowest (`failed_in_last`)",
        "`0` -> `1`",
    ): (
        "a stray bit in a fresh tally always stays above the judged results: "
        "`failed_in_last` reads only the last `judged` bits"
    ),
    ("checks", 'if subject.startswith("$"):', "`if subject.startswith('$')` -> `if True`"): (
        "the path pattern starts with `$`: for any other subject it does not match, and "
        "nothing changes"
    ),
    ("checks", 'last = Result(True, None, f"status {response.code}")', "`True` -> `False`"): (
        "only `last.value` is read; the result is built with ok=True"
    ),
    **{
        ("stats", 'Method = Literal["auto", "exact", "asymptotic"]', f"`'{v}'` -> `'XX{v}XX'`"): (
            "a type alias: read by mypy, never at run time"
        )
        for v in ("auto", "exact", "asymptotic")
    },
    ("stats", "if variance <= 0:", "`0` -> `1`"): (
        "the smallest positive variance of three or more values (three, two of them tied) is "
        "2.67: `<= 1` and `<= 0` agree"
    ),
    (
        "baseline",
        "recovering = worse_enough and falling(recent) < RECOVERING_P",
        "`falling(recent) < RECOVERING_P` -> `falling(recent) <= RECOVERING_P`",
    ): "the trend's p-value comes from erfc: never exactly 0.05",
    (
        "stats",
        'method = "asymptotic" if (n1 > EXACT_MAX and n2 > EXACT_MAX) or tied else "exact"',
        "`'asymptotic'` -> `'XXasymptoticXX'`",
    ): "the variable is only compared with 'exact'; the result's label is another literal",
    **{
        (target, "if TYPE_CHECKING:", change): (
            "imports a type for the annotations only (baseline: ProbeRow, series: BaselineTally); "
            "importing it at run time changes nothing"
        )
        for target in ("baseline", "series")
        for change in ("`if TYPE_CHECKING` -> `if True`", "`if TYPE_CHECKING` -> `if False`")
    },
    (
        "baseline",
        "enough = moved > 0 and latest > 0 and min(moved, latest) + EPSILON >= least",
        "`min(moved, latest) + EPSILON >= least` -> `min(moved, latest) + EPSILON > least`",
    ): "differs only when the shift is exactly least - EPSILON (1e-12 below the increase)",
    (
        "baseline",
        "regressed = p_value < rules.alpha and ours - theirs + EPSILON >= rules.fivexx_increase",
        "`ours - theirs + EPSILON >= rules.fivexx_increase` -> "
        "`ours - theirs + EPSILON > rules.fivexx_increase`",
    ): "differs only when the rise is exactly fivexx_increase - EPSILON",
    (
        "baseline",
        "regressed = p_value < rules.alpha and ours - theirs + EPSILON >= rules.fivexx_increase",
        "`p_value < rules.alpha` -> `p_value <= rules.alpha`",
    ): (
        "Fisher's p is a sum of exp(lgamma) terms, never exactly a decimal alpha "
        "(1 in 4 comes out 0.2500000000000003)"
    ),
    (
        "intake.judge",
        "delay = QUIET_S - age if 0 <= age < QUIET_S else QUIET_S",
        "`0 <= age < QUIET_S` -> `0 < age < QUIET_S`",
    ): "at age 0 both branches give a delay of QUIET_S",
}


# -- generating mutants ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One change: the `index`-th node of `ast.walk` order, rewritten by `rewrite`."""

    target: str
    scope: str  # the enclosing function's qualified name, or "<module>"
    line: int
    change: str  # e.g. "`a < b` -> `a <= b`"
    index: int
    rewrite: Callable[[ast.AST], ast.AST] = field(compare=False, repr=False)
    code: str = ""  # the source line, stripped: with `change`, names the mutant in EQUIVALENT

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.code, self.change)


_COMPARE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BINARY: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
}
_CALLS = {"min": "max", "max": "min", "any": "all", "all": "any"}


def _short(node: ast.AST, width: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _skipped(tree: ast.Module) -> set[int]:
    """Ids of the nodes never mutated: docstrings, annotations, decorators, f-strings."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                roots.append(first)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            roots.extend(node.decorator_list)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
        if isinstance(node, ast.arg) and node.annotation:
            roots.append(node.annotation)
        if isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        if isinstance(node, ast.JoinedStr | ast.Import | ast.ImportFrom):
            roots.append(node)
    return {id(sub) for root in roots for sub in ast.walk(root)}


def _scopes(tree: ast.Module) -> dict[int, str]:
    """Each node's enclosing function or class (qualified name), "<module>" outside any."""
    scopes: dict[int, str] = {}

    def visit(node: ast.AST, scope: str) -> None:
        scopes[id(node)] = scope
        inner = scope
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = node.name if scope == "<module>" else f"{scope}.{node.name}"
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, "<module>")
    return scopes


def _const_rewrite(value: str | bool | int | float) -> Callable[[ast.AST], ast.AST]:
    return lambda node: ast.copy_location(ast.Constant(value), node)


def _changes(node: ast.AST) -> Iterator[tuple[str, Callable[[ast.AST], ast.AST]]]:
    """The mutations of one node: (change, a function rewriting a copy of the node)."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = _COMPARE[type(op)]

                def flip(n: ast.AST, i: int = i, new: type[ast.cmpop] = new) -> ast.AST:
                    assert isinstance(n, ast.Compare)
                    n.ops[i] = new()
                    return n

                yield f"`{_short(node)}` -> `{_short(flip(copy.deepcopy(node)))}`", flip
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _BINARY:
        new_op = _BINARY[type(node.op)]

        def swap(n: ast.AST, new_op: type[ast.operator] = new_op) -> ast.AST:
            assert isinstance(n, ast.BinOp | ast.AugAssign)
            n.op = new_op()
            return n

        yield f"`{_short(node)}` -> `{_short(swap(copy.deepcopy(node)))}`", swap
    elif isinstance(node, ast.BoolOp):

        def other(n: ast.AST) -> ast.AST:
            assert isinstance(n, ast.BoolOp)
            n.op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
            return n

        yield f"`{_short(node)}` -> `{_short(other(copy.deepcopy(node)))}`", other
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        yield f"`{_short(node)}` -> `{_short(node.operand)}`", lambda n: n.operand  # type: ignore[attr-defined]
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield f"`{value}` -> `{not value}`", _const_rewrite(not value)
        elif isinstance(value, int | float):
            yield f"`{value!r}` -> `{value + 1!r}`", _const_rewrite(value + 1)
        elif isinstance(value, str) and " " not in value:  # prose is left alone, as f-strings
            yield f"`{value!r}` -> `{'XX' + value + 'XX'!r}`", _const_rewrite(f"XX{value}XX")
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):

            def none(n: ast.AST) -> ast.AST:
                assert isinstance(n, ast.Return)
                n.value = ast.Constant(None)
                return n

            yield f"`return {_short(node.value, 40)}` -> `return None`", none
    elif isinstance(node, ast.If):
        for forced in (True, False):

            def force(n: ast.AST, forced: bool = forced) -> ast.AST:
                assert isinstance(n, ast.If)
                n.test = ast.Constant(forced)
                return n

            yield f"`if {_short(node.test, 50)}` -> `if {forced}`", force
    elif isinstance(node, ast.Raise):
        yield f"`{_short(node)}` -> `pass`", lambda n: ast.copy_location(ast.Pass(), n)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        name = _CALLS[node.func.id]

        def call(n: ast.AST, name: str = name) -> ast.AST:
            assert isinstance(n, ast.Call)
            n.func = ast.Name(name, ast.Load())
            return n

        yield f"`{node.func.id}(...)` -> `{name}(...)`", call


def mutants(target: Target, source: str) -> list[Mutant]:
    """Every mutant of `target`, in source order."""
    tree = ast.parse(source)
    skipped, scopes = _skipped(tree), _scopes(tree)
    lines = source.splitlines()
    found: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skipped:
            continue
        scope = scopes.get(id(node), "<module>")
        if target.functions and not any(
            scope == f or scope.startswith(f + ".") for f in target.functions
        ):
            continue
        for change, rewrite in _changes(node):
            line = getattr(node, "lineno", 0)
            code = lines[line - 1].strip() if line else ""
            found.append(Mutant(target.name, scope, line, change, index, rewrite, code))
    found.sort(key=lambda m: (m.line, m.index))
    return found


def apply(source: str, mutant: Mutant) -> ast.Module:
    """The module's tree with `mutant`'s change made (the source itself is left alone)."""
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    node = nodes[mutant.index]
    new = mutant.rewrite(node)
    if new is not node:
        for parent in nodes:
            for name, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, name, new)
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if item is node:
                            value[i] = new
    return ast.fix_missing_locations(tree)


# -- running them ---------------------------------------------------------------------------


class _Serve(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook that serves one module name from a compiled (mutated) tree."""

    def __init__(self, name: str, path: Path, code: types.CodeType) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=str(self.path))
        spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__file__ = str(self.path)
        exec(self.code, module.__dict__)  # noqa: S102 - the module's own (mutated) code


def _child(target: Target, tree: ast.Module, fresh: set[str], pytest_args: Sequence[str]) -> int:
    """In the forked child: serve the mutated module, run the tests, return pytest's status."""
    import pytest

    code = compile(tree, str(target.path), "exec", dont_inherit=True)
    _purge(fresh, [ROOT / "tests", *(Path(t).resolve().parent for t in target.tests)])
    sys.meta_path.insert(0, _Serve(target.module, target.path, code))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(devnull, "w")  # noqa: SIM115 - the child's until it exits
    args = [*target.tests, "-x", "-q", "-p", "no:cacheprovider", *pytest_args]
    return int(pytest.main(args))


@dataclass
class Outcome:
    mutant: Mutant | None  # None: the unmutated module
    status: int | None = None  # pytest's exit status; None: timed out
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.status != 0


def run(
    target: Target,
    jobs: Sequence[Mutant | None],
    *,
    workers: int = WORKERS,
    timeout: float = TIMEOUT_S,
    pytest_args: Sequence[str] = (),
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run each job (a mutant, or None for the unmutated module) in a forked child."""
    source = target.path.read_text()
    fresh = dependents(target)
    pending = list(enumerate(jobs))
    running: dict[int, tuple[int, float]] = {}  # pid -> (job number, start)
    outcomes: list[Outcome] = [Outcome(job) for job in jobs]
    try:
        while pending or running:
            while pending and len(running) < workers:
                number, job = pending.pop(0)
                tree = ast.parse(source) if job is None else apply(source, job)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:  # the child never returns into the caller
                    status = 3
                    try:
                        os.setpgid(0, 0)
                        status = _child(target, tree, fresh, pytest_args)
                    finally:
                        os._exit(status)
                running[pid] = (number, time.monotonic())
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for child, (number, started) in list(running.items()):
                    if now - started > timeout:
                        _kill(child)
                        os.waitpid(child, 0)
                        del running[child]
                        outcomes[number].seconds = now - started
                        if progress:
                            progress(outcomes[number])
                time.sleep(0.02)
                continue
            if pid not in running:
                continue
            number, started = running.pop(pid)
            outcomes[number].status = os.waitstatus_to_exitcode(wait_status)
            outcomes[number].seconds = time.monotonic() - started
            if progress:
                progress(outcomes[number])
    finally:
        for child in running:  # interrupted: leave no child behind
            _kill(child)
            os.waitpid(child, 0)
    return outcomes


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the child and anything it started


# -- the report -----------------------------------------------------------------------------


@dataclass
class Score:
    target: str
    mutants: int
    killed: int
    timeouts: int
    equivalent: list[Mutant]  # survivors listed in EQUIVALENT
    survivors: list[Mutant]
    seconds: float = 0.0

    @property
    def percent(self) -> float:
        judged = self.mutants - len(self.equivalent)
        return 100.0 * self.killed / judged if judged else 100.0


def score(target: Target, outcomes: Sequence[Outcome]) -> Score:
    """Count the outcomes; a mutant listed in EQUIVALENT counts as such only if it survived."""
    survivors, equivalent, killed, timeouts = [], [], 0, 0
    for outcome in outcomes:
        assert outcome.mutant is not None
        if outcome.killed:
            killed += 1
            timeouts += outcome.status is None
        elif outcome.mutant.key in EQUIVALENT:
            equivalent.append(outcome.mutant)
        else:
            survivors.append(outcome.mutant)
    return Score(target.name, len(outcomes), killed, timeouts, equivalent, survivors)


def _imports(path: Path, package: str) -> set[str]:
    """The modules of `package` that the file at `path` imports (statically, any depth)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == package or name.startswith(f"{package}.")}


def dependents(target: Target) -> set[str]:
    """The target module and every module of its package that imports it, directly or not:
    the modules a child must load afresh so that they see the mutant."""
    package, _, _ = target.module.rpartition(".")
    if not package:
        return {target.module}
    root = target.path.parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((package, *parts)).removesuffix(".__init__")
        graph[name] = _imports(path, package)
    found = {target.module}
    while True:
        more = {name for name, deps in graph.items() if deps & found} - found
        if not more:
            return found
        found |= more


def _purge(names: set[str], roots: Sequence[Path]) -> None:
    """Forget the modules `names` and every module loaded from under `roots` (the tests), so
    the next import loads them afresh: with the mutant, in a child."""
    keep = {"__main__", __name__}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if name in keep:
            continue
        if name in names or any(path.startswith(f"{root}{os.sep}") for root in roots):
            del sys.modules[name]
            parent, _, attr = name.rpartition(".")
            # `from package import module` would take the parent's attribute, if still there.
            if parent in sys.modules and getattr(sys.modules[parent], attr, None) is module:
                delattr(sys.modules[parent], attr)


def warm(
    tests: Sequence[str], pytest_args: Sequence[str] = (), forget: Sequence[Path] = ()
) -> None:
    """Collect `tests` once in this (parent) process, then forget the modules loaded from
    under `forget` (the tests): pytest's first run in a process costs seconds (plugins, lazy
    imports), which every child then inherits already paid."""
    import pytest

    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *tests, *pytest_args])
    _purge(set(), forget)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", help="comma-separated targets (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per mutant")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    targets = [
        Target(t.name, t.module, t.path, tuple(f for f in t.tests if Path(f).exists()), t.functions)
        for t in TARGETS
        if not args.only or t.name in args.only.split(",")
    ]
    if args.list:
        for target in targets:
            for m in mutants(target, target.path.read_text()):
                print(f"{target.path.relative_to(ROOT)}:{m.line}: [{m.scope}] {m.change}")
        return 0
    warm(sorted({t for target in targets for t in target.tests}), forget=[ROOT / "tests"])
    scores: list[Score] = []
    started = time.monotonic()
    for target in targets:
        (base,) = run(target, [None], workers=1, timeout=10 * args.timeout)
        if base.status != 0:
            print(f"{target.name}: the unmutated module fails its tests (status {base.status})")
            return 2
        timeout = max(args.timeout, 5 * base.seconds)
        found = mutants(target, target.path.read_text())
        print(f"{target.name}: {len(found)} mutants, tests {' '.join(target.tests)}", flush=True)
        begun = time.monotonic()
        outcomes = run(target, found, workers=args.workers, timeout=timeout)
        scores.append(score(target, outcomes))
        scores[-1].seconds = time.monotonic() - begun
        where = target.path.relative_to(ROOT)
        for m in scores[-1].survivors:
            print(f"  survived {where}:{m.line}: [{m.scope}] {m.change}")
        for m in scores[-1].equivalent:
            print(f"  equivalent {where}:{m.line}: [{m.scope}] {m.change}: {EQUIVALENT[m.key]}")
        listed = {m.key for m in found}
        for key in EQUIVALENT:
            if key[0] == target.name and key not in listed:
                print(f"  stale entry in EQUIVALENT (no such mutant any more): {key}")
    print(
        f"\n{'target':<14}{'mutants':>8}{'killed':>8}{'timeout':>8}{'equiv':>7}"
        f"{'survived':>9}{'score':>8}{'time':>7}"
    )
    for s in scores:
        print(
            f"{s.target:<14}{s.mutants:>8}{s.killed:>8}{s.timeouts:>8}{len(s.equivalent):>7}"
            f"{len(s.survivors):>9}{s.percent:>7.1f}%{s.seconds:>6.0f}s"
        )
    print(f"({time.monotonic() - started:.0f} s; the score leaves out the equivalent mutants)")
    low = [s.target for s in scores if s.percent < MIN_SCORE]
    if low:
        print(f"below {MIN_SCORE:g} %: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
