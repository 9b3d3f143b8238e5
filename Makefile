# cxrdet — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline-safe defaults: albumentations checks for updates on import, W&B syncs online.
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install demo test check-tests test-all lint format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# tidecv: the error breakdown's cross-check in the tests; --no-deps because its opencv-python
	# would clash with the opencv-python-headless albumentations brings (its other needs are in dev)
	$(PY) -m pip install --quiet --no-deps tidecv==1.0.1
	touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install cxrdet (editable) with its dev tools

demo: $(STAMP) ## Synthetic data -> prepare -> train -> predict -> score, under outputs/demo/ (FORCE=1 redoes every step)
	$(PY) -m cxrdet demo $(if $(FORCE),--force)

test: $(STAMP) ## Run the test suite (no network, CPU only)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

check-tests: $(STAMP) ## Mutation pass over the metric, box mapping and fusion: do the tests notice? (~5 min)
	$(PY) tests/mutate.py

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP) ## Run every benchmark (training, validation, proposal stage, input pipeline, boxes, prepare, EDA, metrics, interval coverage, start-up, prediction, prediction over an archive, export; the demo variants take ~25 min)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/validation.py
	$(PY) benchmarks/proposals.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/box_agreement.py --device cpu
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/eda.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/interval_coverage.py
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/archive.py
	$(PY) benchmarks/export.py
	$(PY) benchmarks/demo_variants.py

clean: ## Remove outputs/, caches and .venv/
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache $(VENV) *.egg-info
