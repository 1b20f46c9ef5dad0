# Set-up and entry points. Everything installs into ./.venv from pinned versions (torch 2.13.0 CPU build from the
# local wheel when present; a CUDA machine can pre-install its own torch 2.13.0 build into the venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

LINTED := networks search tests benchmarks auto3dseg release.py $(wildcard bundle/scripts/*.py)

LABEL_VENV := .venv-label
LABEL_STAMP := $(LABEL_VENV)/.installed

.PHONY: setup label-setup demo test test-slow test-label bench search-quality training-reliability lint format release

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# MONAI Label 0.8.5 beside monai 1.6.1 in its own environment (pins and why: requirements/label.txt; ~8 GB, since a
# torchvision that imports needs torch 2.14.1's CUDA build, which also runs on the CPU).
$(LABEL_STAMP): requirements/label.txt
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install -q --upgrade pip==25.3
	$(LABEL_VENV)/bin/python -m pip install -q -r requirements/label.txt
	touch $(LABEL_STAMP)

label-setup: $(LABEL_STAMP)

# The main job on the embedded default data (see README): the whole C2FNAS chain with the CPU profile, each stage one
# `python -m monai.bundle run` (the stages, their config layers and hand-offs: bundle/scripts/stage_chain.py).
demo: $(STAMP)
	cd bundle && ../$(PY) -m scripts.stage_chain --profile configs/cpu_profile.json

# The default test suite (< 20 min on 2 CPU cores) and the code-style check.
test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) --no-print-directory lint

# The bundle in the real MONAI Label: Python API and a loopback server, on the CPU (run by CI after `make test`).
test-label: $(LABEL_STAMP)
	$(LABEL_VENV)/bin/python -m pytest tests/test_monailabel.py

# Speed and memory, ratios measured side by side in one run (about 20 minutes on 2 CPU cores; README "Benchmarks").
bench: $(STAMP)
	$(PY) benchmarks/performance.py

# Does the search beat random picks from its space? Searches, random architectures, references and MONAI's UNet and
# SegResNet, all trained by the bundle's configs with 3 training seeds each (docs/search_quality.md), on the
# real-anatomy task and on tubes, for the search as configured and its variants (finalists on a shared
# supernet, twice the coarse supernet training, a compute budget, the soft-Dice and fine-tuned fitnesses); finished
# parts are committed under benchmarks/results/search_quality/ and reused on a re-run.
SEARCH_VARIANTS := "" benchmarks/recipes/finalists.json benchmarks/recipes/coarse_2600_steps.json \
    benchmarks/recipes/budget_0.26_gmacs.json benchmarks/recipes/soft_dice_fitness.json \
    benchmarks/recipes/finetuned_fitness.json
search-quality: $(STAMP)
	for variant in $(SEARCH_VARIANTS); do for task in brain_mr tubes; do \
		$(PY) benchmarks/search_quality.py --task $$task --search_layers "$$variant" || exit 1; done; done

# Is one training a measurement? Networks x training seeds x tasks, each trained and scored by the bundle's stage
# chain; finished trainings are committed under benchmarks/results/training_reliability/ and reused on a re-run.
training-reliability: $(STAMP)
	$(PY) benchmarks/training_reliability.py

test-slow: $(STAMP)
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]  # exit 5: no test is marked slow

lint: $(STAMP)
	$(PY) -m black --check --quiet $(LINTED)
	$(PY) -m isort --check-only --quiet $(LINTED)
	$(PY) -m flake8 $(LINTED)

format: $(STAMP)
	$(PY) -m isort $(LINTED)
	$(PY) -m black $(LINTED)

# dist/pancreas_ct_c2fnas_segmentation_v<version>.zip (deterministic; prints its sha1)
release: $(STAMP)
	$(PY) release.py
