# Two commands a user needs: `make demo` and `make test` (both set up .venv).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"mtl-jax needs Python >= 3.12 (jax >= 0.11), found {sys.version.split()[0]}: install 3.12 (pyenv reads .python-version)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtl-jax demo --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
