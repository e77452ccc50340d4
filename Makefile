# Two commands a user needs: `make demo` and `make test` (both set up .venv
# from requirements.lock, the tested set of versions; `make lock` refreshes it
# within the ranges of pyproject.toml).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: demo test test-fast setup lock clean-venv

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"mtl-jax needs Python >= 3.12 (jax >= 0.11), found {sys.version.split()[0]}: install 3.12 (pyenv reads .python-version)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# Resolve pyproject.toml's ranges afresh in a scratch venv and pin the result.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q '.[test]'
	{ echo "# The tested set: every figure in bench/RESULTS.md and docs/log/ from 2026-11-30 on was measured with these."; \
	  echo "# Python 3.12, Linux x86_64. Refresh with 'make lock' (ranges live in pyproject.toml)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -vi '^mtl.jax'; } > $(LOCK)
	rm -rf .venv-lock build

demo: $(STAMP)
	$(VENV)/bin/mtl-jax demo --workdir runs/demo

# One pytest-xdist worker per core; a module's tests stay on one worker, so a
# module fixture (a trained run) is built once. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fast tier (under 3 min on 2 cores): everything but the tests marked
# `slow`, which train a model of their own (tests/conftest.py enforces it).
# CI runs `make test`, the whole suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
