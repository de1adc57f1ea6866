"""Benchmarks of the postdeploy daemon: `python -m bench` (see __main__ and docs/PERFORMANCE.md)."""
