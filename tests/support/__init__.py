"""Helpers shared by the test directories (on pytest's `pythonpath`, so `import support`).

The process-level pieces the demo uses too (`daemon`, `env`, `wait`) live in the package,
`postdeploy.testing`; the modules of the same names here re-export them.
"""
