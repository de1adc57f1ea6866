"""The process-level test kit, shipped with the package (as httpx and trio ship theirs).

What the test suites, the benchmarks and `postdeploy demo` share, each in one place:

- `postdeploy.testing.daemon`: `postdeploy run` in a subprocess, its JSON log lines parsed as
  they arrive (`DaemonProcess.wait_for`), and a pool that kills what a test left running.
- `postdeploy.testing.env`: `child_env`, the environment a child process starts with.
- `postdeploy.testing.wait`: `wait_until`, polling for what has no event of its own.

Standard library only (no pytest), and nothing here is imported by the daemon or the CLI
(`postdeploy demo` aside). The tests reach these modules through `tests/support`
(`support.daemon`, `support.env`, `support.wait`), which also holds what only the tests use:
scripted HTTP servers, the notify socket, TLS certificates, a TOML writer.
"""
