# Set-up and entry points. Everything installs into ./.venv from pinned versions (torch 2.13.0 CPU build from the
# local wheel when present; a CUDA machine can pre-install its own torch 2.13.0 build into the venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

LINTED := networks search tests benchmarks release.py bundle/scripts/__init__.py bundle/scripts/data.py \
	bundle/scripts/transforms.py bundle/scripts/handlers.py

.PHONY: setup demo test test-slow lint format release

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default data (see README): the whole C2FNAS chain with the CPU profile.
BUNDLE_RUN := cd bundle && ../$(PY) -m monai.bundle run --config_file
CPU := configs/cpu_profile.json
SEARCHED := --arch_file outputs/search/arch_fine.json
demo: $(STAMP)
	$(BUNDLE_RUN) "['configs/search_coarse.json','$(CPU)']"
	$(BUNDLE_RUN) "['configs/search_fine.json','$(CPU)']"
	$(BUNDLE_RUN) "['configs/train.json','$(CPU)']" $(SEARCHED)
	$(BUNDLE_RUN) "['configs/train.json','configs/evaluate.json','$(CPU)']" $(SEARCHED) --ckpt_file outputs/models/model.pt
	$(BUNDLE_RUN) "['configs/inference.json','$(CPU)']" $(SEARCHED) --ckpt_file outputs/models/model.pt
	@echo "searched architecture: bundle/outputs/search/arch_fine.json (picture: arch_fine.png)"
	@echo "validation Dice: $$(cat bundle/outputs/eval/dice_per_class.json | tr -d '\n ')"
	@echo "segmentations: bundle/outputs/inference/"

# The default test suite (< 20 min on 2 CPU cores) and the code-style check.
test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) --no-print-directory lint

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
