# Quick start: `make run` (service on the embedded default) and `make test` (lint, types, suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest faults bench clean stop

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "counters needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: install  ## start Valkey + Postgres (embedded unless COUNTERS_*_URL set) and the service
	$(BIN)/counters serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest  ## everything CI runs

stop: install  ## stop the embedded servers (data kept under .counters/)
	$(BIN)/counters embedded stop

clean: stop
	rm -rf .counters .pytest_cache .mypy_cache .ruff_cache
