# medr1 — `make help` lists the targets.
PYTHON ?= python
DIR ?=

.PHONY: help install test test-slow test-all demo bench lint report clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install medr1 and everything it needs (torch 2.14.1 + torchvision 0.29.1 pinned)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast test suite (a few minutes on 2 CPU cores)
	$(PYTHON) -m pytest -m "not slow" -q

test-slow:  ## only the long end-to-end runs (GRPO learning, sweeps)
	$(PYTHON) -m pytest -m slow -q

test-all:  ## every test
	$(PYTHON) -m pytest -q

demo:  ## the offline GRPO demo (same as `python run.py`)
	$(PYTHON) run.py

bench:  ## speed benchmarks: shared-prompt rollout/training vs repeated prompts, as ratios
	$(PYTHON) -m medr1.bench

lint:  ## ruff
	$(PYTHON) -m ruff check medr1 tests run.py

report:  ## generalization tables and heatmaps of a sweep: make report DIR=multirun/...
	@test -n "$(DIR)" || (echo "usage: make report DIR=<sweep dir>" && exit 2)
	$(PYTHON) -m medr1.report $(DIR)

clean:  ## remove outputs (not the model/data cache in ~/.cache/medr1)
	rm -rf outputs multirun .pytest_cache
