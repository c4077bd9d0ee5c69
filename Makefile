# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CDS_PORT ?= 8080
export CDS_PORT

.PHONY: help install install-test run migrate test test-quick lint typecheck check sandbox bench soak clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed ## create .venv and install the service

install-test: $(VENV)/.installed-test ## create .venv with the test extras

migrate: install ## apply database migrations (CDS_DATABASE_URL, default ./var/cds.db)
	$(BIN)/sleep-cds migrate

run: migrate ## serve on http://127.0.0.1:$(CDS_PORT)
	@echo "Discovery: http://127.0.0.1:$(CDS_PORT)/cds-services"
	$(BIN)/sleep-cds serve

sandbox: install ## a real FHIR server with the demo patients, this service and (if present) the SMART launcher
	$(BIN)/python -m service.cli.sandbox

test: install-test ## run the whole test suite (what CI runs; about 9 minutes)
	$(BIN)/python -m pytest

test-quick: install-test ## inner loop: every test but the `integration` ones (real servers on loopback)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

lint: install-test ## ruff, mypy --strict (service/ and tests/) and the layering contracts (lint-imports)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases tests
	$(BIN)/lint-imports

check: lint test ## everything CI runs

soak: install ## 60 s mixed load at concurrency 32 on loopback: errors, p99, RSS growth (SOAK_ARGS=...)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

bench: install ## benchmark vs a same-run baseline, JWT on (BENCH_ARGS=--quick; docs/performance.md)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean: ## remove the virtualenv and local data
	rm -rf $(VENV) var
