# medr1 — `make help` lists the targets.
PYTHON ?= python
DIR ?=

.PHONY: help install upgrade test test-slow test-all demo bench lint report clean study-cross-modality-cpu study-cross-task-cpu study-sft-vs-rl-cpu study-think-vs-nothink-cpu study-medvlm-r1-cpu

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-28s %s\n", $$1, $$2}'

install:  ## install medr1 and everything it needs, at the versions in requirements.lock (the tests passed with them)
	$(PYTHON) -m pip install -c requirements.lock -e ".[dev]"

upgrade:  ## re-resolve to the newest versions pyproject.toml allows, run the tests, then rewrite requirements.lock
	$(PYTHON) -m pip install --upgrade --upgrade-strategy eager -e ".[dev]"
	$(PYTHON) -m pytest -m "not slow" -q
	$(PYTHON) scripts/lock.py dev > requirements.lock.new && mv requirements.lock.new requirements.lock
	@echo "requirements.lock rewritten: review and commit it (git diff requirements.lock)"

test:  ## the fast test suite (a few minutes on 2 CPU cores)
	$(PYTHON) -m pytest -m "not slow" -q

test-slow:  ## only the long end-to-end runs (GRPO learning, sweeps)
	$(PYTHON) -m pytest -m slow -q

test-all:  ## every test
	$(PYTHON) -m pytest -q

demo:  ## the offline GRPO demo (same as `python run.py`)
	$(PYTHON) run.py

bench:  ## medr1 vs TRL GRPOTrainer, same settings, side by side (SWEEP=1: also G x image size; JSON=path)
	@$(PYTHON) -c "import trl" 2>/dev/null || $(PYTHON) -m pip install -c requirements.lock -e ".[bench]"
	$(PYTHON) -m medr1.bench $(if $(SWEEP),--sweep) $(if $(JSON),--json $(JSON))

lint:  ## ruff check and ruff format --check (CI runs it)
	$(PYTHON) -m ruff check medr1 tests scripts run.py
	$(PYTHON) -m ruff format --check medr1 tests scripts run.py

report:  ## generalization tables and heatmaps of a sweep: make report DIR=multirun/...
	@test -n "$(DIR)" || (echo "usage: make report DIR=<sweep dir>" && exit 2)
	$(PYTHON) -m medr1.report $(DIR)

# The papers' studies scaled down: each experiment file as written (micro-batches, parser, reward, option
# layout, schedule) on the CPU budget (conf/budget/cpu.yaml: tiny model, synthetic data, B16 x G4), STEPS
# steps each, each seed in SEEDS (e.g. SEEDS=1,2,3), validation off (the test evaluation at the end is what the report reads).
STEPS ?= 200
SEEDS ?= 42
CPU_STUDY = budget=cpu logger=csv seed=$(SEEDS) trainer.max_steps=$(STEPS) trainer.val_check_interval=100000 \
	trainer.enable_progress_bar=false eval.before_training=false

study-cross-modality-cpu:  ## med_r1_cross_modality on CPU (3 modalities + base), then its report
	$(PYTHON) run.py -m experiment=med_r1_cross_modality $(CPU_STUDY) modality=ct,mri,xray hydra.sweep.dir=multirun/cross_modality_cpu
	$(PYTHON) -m medr1.report multirun/cross_modality_cpu

study-cross-task-cpu:  ## med_r1_cross_task on CPU (3 question types + base), then its report
	$(PYTHON) run.py -m experiment=med_r1_cross_task $(CPU_STUDY) question_type=modality_recognition,disease_diagnosis,lesion_grading hydra.sweep.dir=multirun/cross_task_cpu
	$(PYTHON) -m medr1.report multirun/cross_task_cpu

study-sft-vs-rl-cpu:  ## sft_vs_rl on CPU (base, SFT, GRPO on MRI), then its report
	$(PYTHON) run.py -m experiment=sft_vs_rl $(CPU_STUDY) hydra.sweep.dir=multirun/sft_vs_rl_cpu
	$(PYTHON) -m medr1.report multirun/sft_vs_rl_cpu

study-think-vs-nothink-cpu:  ## think_vs_nothink on CPU, then its report
	$(PYTHON) run.py -m experiment=think_vs_nothink $(CPU_STUDY) hydra.sweep.dir=multirun/think_vs_nothink_cpu
	$(PYTHON) -m medr1.report multirun/think_vs_nothink_cpu

study-medvlm-r1-cpu:  ## medvlm_r1 on CPU (synthetic MRI training, every modality evaluated), then its report
	$(PYTHON) run.py -m experiment=medvlm_r1 $(CPU_STUDY) hydra.sweep.dir=multirun/medvlm_r1_cpu
	$(PYTHON) -m medr1.report multirun/medvlm_r1_cpu

clean:  ## remove outputs (not the model/data cache in ~/.cache/medr1)
	rm -rf outputs multirun .pytest_cache
