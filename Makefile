# `make run` serves the API on 127.0.0.1:8000; `make test` runs the whole suite.
# Both use an embedded PostgreSQL unless NEON_DATABASE_URL / TEST_DATABASE_URL is set.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint bench

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(BIN)/todo-api migrate
	$(BIN)/todo-api serve --host 127.0.0.1 --port 8000

test: $(INSTALLED)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Benchmarks (needs wrk and pgbouncer: apt-get install wrk pgbouncer); see docs/performance.md.
bench: $(INSTALLED)
	$(BIN)/python -m bench
