# Two commands a user needs: `make demo` and `make test` (both set up .venv
# from requirements.lock, the tested set of versions; `make lock` refreshes it
# within the ranges of pyproject.toml).
#
# On a GPU node or TPU VM, install the matching pinned set once:
#   make setup ACCEL=cuda12   # NVIDIA driver >= 525 (CUDA 12 comes as pip wheels)
#   make setup ACCEL=cuda13   # NVIDIA driver >= 580
#   make setup ACCEL=tpu      # on a Cloud TPU VM (launch/tpu_vm.sh does it there)
# .venv remembers its ACCEL, so a later `make demo` or `make test` keeps it;
# another ACCEL builds .venv afresh (one backend per venv).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python)
VENV := .venv
PY := $(VENV)/bin/python
ACCELS := cpu cuda12 cuda13 tpu
ACCEL ?= $(or $(shell cat $(VENV)/.accel 2>/dev/null),cpu)
LOCK_CPU := requirements.lock
LOCK := $(if $(filter cpu,$(ACCEL)),$(LOCK_CPU),requirements-$(ACCEL).lock)
STAMP := $(VENV)/.installed-$(ACCEL)
$(if $(filter $(ACCEL),$(ACCELS)),,$(error ACCEL=$(ACCEL): choose one of $(ACCELS)))

.PHONY: demo test test-fast model setup lock lock-accel clean-venv

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"mtl-jax needs Python >= 3.12 (jax >= 0.11), found {sys.version.split()[0]}: install 3.12 (pyenv reads .python-version)"'
	@if [[ -e $(VENV)/.accel && "$$(cat $(VENV)/.accel)" != $(ACCEL) ]]; then \
	  echo "$(VENV) holds ACCEL=$$(cat $(VENV)/.accel): rebuilding it for ACCEL=$(ACCEL)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e '.[test]'
	@echo $(ACCEL) > $(VENV)/.accel
	@touch $(STAMP)

setup: $(STAMP)

# Resolve pyproject.toml's ranges afresh in a scratch venv and pin the result,
# then derive the accelerator sets from it (lock-accel).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q '.[test]'
	{ echo "# The tested set: every figure in bench/RESULTS.md and docs/log/ from 2026-11-30 on was measured with these."; \
	  echo "# Python 3.12, Linux x86_64. Refresh with 'make lock' (ranges live in pyproject.toml)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -vi '^mtl.jax'; } > $(LOCK_CPU)
	rm -rf .venv-lock build
	$(MAKE) lock-accel

# requirements-{cuda12,cuda13,tpu}.lock: the CPU set plus the backend's packages.
# Installing them here would mean GBs of CUDA wheels, so pip only resolves:
# `pip install --dry-run --ignore-installed --report` of '.[test,ACCEL]' (the
# pyproject.toml extra) constrained by requirements.lock, so every package both
# hold has the CPU set's version. With fast-deps pip reads each wheel's
# metadata by HTTP range requests instead of downloading it (the index here
# serves no separate metadata files; without it a plain --dry-run downloads
# ~4 GB of CUDA wheels to a temporary folder, measured). It resolves for the
# machine it runs on: run it with Python 3.12 on Linux x86_64, the platform of
# GPU nodes and TPU VMs. tests/test_installs.py checks the result against the
# index.
define REPORT_TO_LOCK
import json, sys
accel, report, python = sys.argv[1:4]
pins = sorted((p['metadata']['name'], p['metadata']['version'])
              for p in json.load(open(report))['install'] if p['metadata']['name'] != 'mtl-jax')
print(f"# requirements.lock plus jax[{accel}]'s packages, for `make setup ACCEL={accel}`.")
print(f"# Made by `make lock-accel` (pip --dry-run resolution of '.[test,{accel}]' with")
print(f"# -c requirements.lock; nothing installed), Python {python}, Linux x86_64.")
print('# Resolved and checked against the index (tests/test_installs.py), not yet run on')
print('# an accelerator by this project.')
print('\n'.join(f'{n}=={v}' for n, v in sorted(pins, key=lambda p: p[0].lower())))
endef
export REPORT_TO_LOCK
lock-accel: $(STAMP)
	@for a in $(filter-out cpu,$(ACCELS)); do \
	  echo "resolving requirements-$$a.lock"; \
	  $(PY) -m pip install -q --dry-run --ignore-installed --use-feature=fast-deps \
	    --report .lock-$$a.json \
	    -c $(LOCK_CPU) ".[test,$$a]" && \
	  $(PY) -c "$$REPORT_TO_LOCK" $$a .lock-$$a.json "$$($(PY) -c 'import platform; print(platform.python_version())')" \
	    > requirements-$$a.lock && rm .lock-$$a.json || exit 1; \
	done
	rm -rf build

# The model that ships with the package (mtl_jax/assets/model): the public-data
# recipe trained from scratch, then exported with its card. Needs the six public
# releases under MTL_MANUAL_DIR (docs/data.md); ~1.5-3 h on 2 CPU cores, and it
# resumes if interrupted. Commit the result only when the model is retrained on
# purpose (docs/predict.md, "The shipped model").
MODEL_RUN ?= runs/ship/real_cpu
model: $(STAMP)
	@test -n "$$MTL_MANUAL_DIR" || { echo "make model: set MTL_MANUAL_DIR to the folder holding the public releases (docs/data.md)"; exit 2; }
	for d in medseg_covid covid_ct mosmed sars_cov2_ct china_negative; do \
	  $(VENV)/bin/mtl-jax build-data $$d --data_dir data --image_size 128 || exit 1; done
	$(VENV)/bin/mtl-jax build-data covid19_ct_seg --data_dir data --image_size 128 --use_pseudo_masks
	$(VENV)/bin/mtl-jax train --config configs/real.py:cpu --workdir $(MODEL_RUN)
	$(VENV)/bin/mtl-jax export-model --workdir $(MODEL_RUN) --output mtl_jax/assets/model

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
