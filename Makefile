# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both (re)create .venv from pyproject.toml when it is missing or older than pyproject.toml.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo table2-cpu test test-fast lint clean-results provenance

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mdfr.demo

# Table II at CPU scale (about an hour on 2 cores): the demo's codec, the sweep, the report.
table2-cpu: $(STAMP)
	$(BIN)/python -m mdfr.demo --codec-only
	$(BIN)/mdfr sweep run sweeps/table2-cpu.yaml
	$(BIN)/mdfr report table2 --experiment mdfr-table2-cpu --out results/table2-cpu

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check mdfr tests
	$(BIN)/ruff format --check mdfr tests

clean-results:
	rm -rf results/mlflow.db results/mlartifacts results/ray results/data results/cache results/demo results/optuna

# Before `ray up`, `ray job submit --working-dir .` or `docker build`: clusters never see .git,
# so the commit and dirty flag travel in a PROVENANCE file (mdfr/provenance.py).
provenance: $(STAMP)
	$(BIN)/python -m mdfr.provenance
