# patchmix: the only entry points a user needs.
#   make reproduce   set up, build the data, train every run, run every notebook (demo profile)
#                    → figures/ results/ docs/notebooks/ (in place: git diff shows what moved),
#                    then judge the runs against shipped/ at the precision reported
#   make render      the same outputs from the shipped runs, training nothing (minutes)
#   make test        the whole test suite (ruff + pytest)
#   make lab         JupyterLab on the notebooks
#   make bench       the performance harness → bench/results/<timestamp>.json, latest.json
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= demo
SEED    ?= 0
RECORDINGS ?= 100
# Real ICBHI download (folder holding ICBHI_final_database/); unset → the synthetic set.
ICBHI_ROOT ?=
# AudioSet checkpoint (audioset_10_10_0.4593.pth) for PROFILE=paper
WEIGHTS ?=
# seeds per method in the notebooks; empty → each notebook's default
SEEDS ?=
# threads per training run; empty → the profile's (demo: 1, one run per core at once)
THREADS ?=
# threads of each notebook kernel (the notebooks run one per core at once); empty → 1
NOTEBOOK_THREADS ?=
# SPRSound folder (a clone of the official repository, or its BioCAS2022/): notebook 06 runs
# on it; unset → 06 is skipped and its committed outputs stay
SPRSOUND_ROOT ?=
export SPRSOUND_ROOT
# Only the default run (demo profile, synthetic data, each notebook's seeds) rewrites the
# committed figures/, results/ and docs/notebooks/; any other lands in out/<profile>/
# (override: OUTPUTS=dir).
OUTPUTS ?= $(if $(ICBHI_ROOT)$(WEIGHTS)$(SEEDS)$(filter-out demo,$(PROFILE)),out/$(PROFILE),.)
SYNTH_DIR  := data/synthetic
DATA       := $(if $(ICBHI_ROOT),$(ICBHI_ROOT),$(SYNTH_DIR))
export PATCHMIX_CACHE ?= $(CURDIR)/.cache/patchmix

PLAN_ARGS := --profile $(PROFILE) --data '$(ICBHI_ROOT)' --weights '$(WEIGHTS)' \
	$(if $(SEEDS),--seeds $(SEEDS))
# shipped/ holds the shared data's runs only: 06's data set is not in the repository
SHARED_ONLY := --sprsound ''
# the default run checks itself against the runs committed in shipped/ (made by make ship)
CHECK_SHIPPED := $(filter .,$(OUTPUTS))

.PHONY: help setup test lint reproduce train notebooks render ship data lab clean bench estimate

help:
	@echo "make reproduce   set up .venv, build the data (synthetic unless ICBHI_ROOT=...), run"
	@echo "                 notebooks 01-05 (PROFILE=demo) -> figures/, results/, docs/notebooks/"
	@echo "                 (another PROFILE, ICBHI_ROOT, WEIGHTS or SEEDS -> out/PROFILE/)"
	@echo "                 GPU route: make reproduce PROFILE=paper ICBHI_ROOT=... WEIGHTS=..."
	@echo "                 Trains every run into runs/ first (a local pool: one run per core),"
	@echo "                 ignoring shipped/; the default run rewrites the committed outputs in"
	@echo "                 place (git diff shows what moved), then judges its runs against"
	@echo "                 shipped/: to the last bit, within noise (exit 0), or a table of what"
	@echo "                 lies outside (exit 1). THREADS=N trains each run on N threads"
	@echo "                 With SPRSOUND_ROOT=<SPRSound folder> also notebook 06 on real lung"
	@echo "                 sounds (6 runs, an estimated 20 minutes on 2 cores); without, 06's"
	@echo "                 committed outputs stay"
	@echo "make render      figures/, results/, docs/notebooks/ from the shipped runs (no training;"
	@echo "                 06 is left as committed)"
	@echo "make ship        replace shipped/ with the demo runs in runs/ (after make reproduce)"
	@echo "make test        ruff + the whole pytest suite"
	@echo "make lab         build the data if needed, then JupyterLab on notebooks/"
	@echo "                 (figures and tables of notebooks run there go to out/scratch/)"
	@echo "make setup       only create .venv with the pinned dependencies"
	@echo "make clean       remove generated data, caches and outputs (keeps .venv)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[notebooks,dev]'
	touch $@

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The synthetic set is rebuilt only when it is missing (same seed → same bytes anyway).
$(SYNTH_DIR)/synthetic.json: lib/patchmix/data/synth.py | $(STAMP)
	$(BIN)/patchmix synth $(SYNTH_DIR) --recordings $(RECORDINGS) --seed $(SEED)

data: setup $(if $(ICBHI_ROOT),,$(SYNTH_DIR)/synthetic.json)
	$(BIN)/patchmix data check $(DATA)
	$(BIN)/patchmix data features $(DATA)
	$(if $(SPRSOUND_ROOT),$(BIN)/patchmix data check '$(SPRSOUND_ROOT)')
	$(if $(SPRSOUND_ROOT),$(BIN)/patchmix data features '$(SPRSOUND_ROOT)')

# Train first (on the pool), so the notebooks only read runs/; with PATCHMIX_SHIPPED=off a run
# the plan missed trains in its notebook rather than being read from shipped/.
reproduce: data train
	PATCHMIX_SHIPPED=off $(MAKE) --no-print-directory notebooks
	$(if $(CHECK_SHIPPED),$(if $(wildcard shipped/PROVENANCE.json),$(BIN)/patchmix plan \
		$(PLAN_ARGS) $(SHARED_ONLY) --compare shipped --report-outputs,@echo "no shipped/ runs to compare with (make ship)"))

train: data
	$(BIN)/patchmix plan $(PLAN_ARGS) --sprsound '$(SPRSOUND_ROOT)' --run \
		$(if $(THREADS),--threads $(THREADS))

notebooks: setup
	$(BIN)/python -m patchmix.companion.notebooks --profile $(PROFILE) --data '$(ICBHI_ROOT)' \
		--weights '$(WEIGHTS)' $(if $(SEEDS),--seeds $(SEEDS)) --outputs '$(OUTPUTS)' \
		--sprsound '$(SPRSOUND_ROOT)' $(if $(NOTEBOOK_THREADS),--threads $(NOTEBOOK_THREADS))

# An empty run cache, so that every run comes from shipped/; one that had to train fails it.
RENDER_RUNS := out/render/runs
render: data
	rm -rf $(RENDER_RUNS)
	PATCHMIX_RUNS=$(RENDER_RUNS) $(MAKE) --no-print-directory notebooks SPRSOUND_ROOT=
	@if [ -n "$$(ls -A $(RENDER_RUNS) 2>/dev/null)" ]; then \
		echo "error: shipped/ lacks runs the notebooks need; they trained into $(RENDER_RUNS)/"; \
		exit 1; fi

ship: setup
	$(BIN)/patchmix plan $(PLAN_ARGS) $(SHARED_ONLY) --export shipped

# the notebooks need the data set (and its features) before their first cell runs
lab: data
	$(BIN)/jupyter lab notebooks/

# BENCH_ARGS=--quick: the CI-sized run (demo model only)
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# the paper route's GPU time, estimated from counted FLOPs (an estimate until measured)
estimate: setup
	$(BIN)/python bench/estimate.py $(ESTIMATE_ARGS)

clean:
	rm -rf data/synthetic .cache out runs .pytest_cache .ruff_cache
