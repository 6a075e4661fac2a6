# patchmix: the only entry points a user needs.
#   make reproduce   set up, build the data, check it (later issues: run every notebook)
#   make test        the whole test suite (ruff + pytest)
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
SYNTH_DIR  := data/synthetic
DATA       := $(if $(ICBHI_ROOT),$(ICBHI_ROOT),$(SYNTH_DIR))
export PATCHMIX_CACHE ?= $(CURDIR)/.cache/patchmix

.PHONY: help setup test lint reproduce data clean

help:
	@echo "make reproduce   set up .venv, build the synthetic data (unless ICBHI_ROOT=...), check it"
	@echo "make test        ruff + the whole pytest suite"
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
$(SYNTH_DIR)/synthetic.json: lib/patchmix/synth.py | $(STAMP)
	$(BIN)/patchmix synth $(SYNTH_DIR) --recordings $(RECORDINGS) --seed $(SEED)

data: setup $(if $(ICBHI_ROOT),,$(SYNTH_DIR)/synthetic.json)
	$(BIN)/patchmix data check $(DATA)
	$(BIN)/patchmix data features $(DATA)

reproduce: data

clean:
	rm -rf data/synthetic .cache out runs .pytest_cache .ruff_cache
