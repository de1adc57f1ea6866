"""Helpers shared by the test directories (on pytest's `pythonpath`, so `import support`)."""
