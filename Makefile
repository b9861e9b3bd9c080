# smx: the two commands a newcomer types are `make demo` and `make test`; both build .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SMX := $(VENV)/bin/smx
STAMP := $(VENV)/.smx-installed
RECIPE ?= recipes/ding_switch.yaml

.PHONY: venv test test-fast demo bench reproduce clean-venv

venv: $(STAMP)

# torch (the pinned CPU wheel), cython, numpy, setuptools and wheel first; then fairseq-fixed (compiled, ~2 min)
# and the rest with --no-build-isolation, so that pip never pulls a second (CUDA) torch into a build environment.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 cython numpy setuptools wheel
	$(PY) -m pip install -q --no-build-isolation fairseq-fixed==0.12.3.1 -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(SMX) diagnose gradients

bench: $(STAMP)
	$(SMX) diagnose gradients --json bench/results/gradient_fidelity.json --force

clean-venv:
	rm -rf $(VENV)
