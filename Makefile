# The two commands of the README: `make demo` and `make test`. Both set up .venv when missing
# and reinstall only when pyproject.toml changed (the stamp file records the last install).
# Tests: `make test` = lint + every test not marked slow (the README's suite, < 5 min on 2
# cores); `make test-slow` = the slow ones (the demo end to end, multi-process runs);
# `make test-fast` = the edit loop: no lint, no fuzzing, stop at the first failure, last
# failures first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.autovla-installed
# CPU machines take these two from local disk; an unpinned torch would pull several GB.
# Installed only while .venv has no torch: `make clean-venv` first to switch builds
# (e.g. `make clean-venv test TORCH_SPEC="torch==2.11.0 torchvision==0.26.0"`).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test test-slow test-fast demo lint install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x --ff -m "not slow" --ignore-glob="tests/test_fuzz_*.py"

demo: $(STAMP)
	$(BIN)/autovla demo

clean-venv:
	rm -rf $(VENV)
