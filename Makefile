# Everything a new user needs: `make run` and `make test`. No root, no global installs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
export RECSYS_STATE_DIR ?= $(CURDIR)/.state

.DEFAULT_GOAL := help
.PHONY: help setup run pipeline serve test test-fast lint typecheck format feast-apply bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e . --config-settings editable_mode=compat
	touch $@

setup: $(BIN)/.installed  ## create .venv with the locked dependencies

run: setup  ## run the whole pipeline on MovieLens, then serve http://127.0.0.1:8000
	$(BIN)/recsys pipeline --config $(CONFIG)
	$(BIN)/recsys serve --config $(CONFIG)

pipeline: setup  ## run the pipeline stages only
	$(BIN)/recsys pipeline --config $(CONFIG)

serve: setup  ## serve the registered champion models
	$(BIN)/recsys serve --config $(CONFIG)

feast-apply: setup  ## register feature_repo/ definitions (state dir from RECSYS_STATE_DIR)
	mkdir -p $(RECSYS_STATE_DIR)
	$(BIN)/feast apply

test: setup  ## lint, type-check and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/pytest -q --timeout 900

test-fast: setup  ## unit tests only (no Spark, Ray or servers)
	$(BIN)/pytest -q -m "not integration"

lint: setup  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup  ## apply ruff formatting and safe fixes
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

typecheck: setup  ## mypy
	$(BIN)/mypy .

bench: setup  ## measure serving latency against a running `make serve` (writes benchmarks/results/)
	$(BIN)/python benchmarks/serve_latency.py --config $(CONFIG)

clean:  ## remove the state directory (datasets, features, models, reports)
	rm -rf $(RECSYS_STATE_DIR)
