"""Benchmarks of the postdeploy daemon: `python -m bench` (see __main__ and docs/PERFORMANCE.md).

The benchmarks drive the daemon with the same kit as the tests (`tests/support`: the daemon
process, the notify socket, `child_env`, `wait_until`). pytest finds it through its
`pythonpath`; here `tests` is appended to `sys.path`, so `import support` works from the
repository root and nothing already importable is shadowed.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
