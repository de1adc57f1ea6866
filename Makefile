# Every target sets up its own environment: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
BASE_STAMP := $(VENV)/.installed-base-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: all test lint demo chaos bench mutate clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --group dev
	rm -f $(VENV)/.installed-* && touch $@ $(BASE_STAMP)

# The demo needs the package alone (no test or lint tools); a venv made for the tests has it.
$(BASE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Over the whole tree: the daemon, the tests, the benchmarks and the tools (mypy's `files`
# in pyproject.toml name them).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

demo: $(BASE_STAMP)
	$(BIN)/postdeploy demo

# The crash-consistency suite's long mode (at least 100 SIGKILLs); `make test` runs its short mode.
chaos: $(STAMP)
	CHAOS_MODE=long $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/chaos

# Benchmarks drive the real daemon; they print a table and write bench/results.md (not in make test).
bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing of the pure core against its fast unit tests (not in make test: minutes).
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

# Every build output, cache and scratch directory (all ignored by git; committed benchmark
# figures in bench/results* and bench/lateness.png stay).
clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf bench/out bench/.work bench/quick bench/.keep bench/profile.txt
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-prune -exec rm -rf {} +
	find . -path ./.git -prune -o -name '*.pyc' -type f -exec rm -f {} +
