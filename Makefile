# Set-up and entry points. Everything installs into ./.venv from pinned versions (torch 2.13.0 CPU build from the
# local wheel when present; a CUDA machine can pre-install its own torch 2.13.0 build into the venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint format

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job on embedded default data (see README).
demo: $(STAMP)
	$(PY) -m networks demo

# The default test suite (< 20 min on 2 CPU cores) and the code-style check.
test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) --no-print-directory lint

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(PY) -m black --check --quiet networks search tests benchmarks
	$(PY) -m isort --check-only --quiet networks search tests benchmarks
	$(PY) -m flake8 networks search tests benchmarks

format: $(STAMP)
	$(PY) -m isort networks search tests benchmarks
	$(PY) -m black networks search tests benchmarks
