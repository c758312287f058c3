# Everyday commands. `make run` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint format check clean hooks bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed  ## create .venv and install the project with dev tools

run: install  ## start the server on :4444 (memory broker; Redis when REDIS_URL is set)
	$(BIN)/realtime serve

lint: install  ## ruff (lint + format check), mypy --strict, and the import contracts (layers, no cycles)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint  ## lint, then the whole test suite with coverage (needs Redis at REDIS_URL and PostgreSQL)
	$(BIN)/pytest -q --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

test-fast: install  ## the unit tests only (tests/unit: pure, no I/O, a few seconds); no lint, no services
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

hooks: install  ## install pre-commit into .venv and the git hook (.pre-commit-config.yaml: ruff, mypy)
	$(BIN)/pip install -q 'pre-commit>=4,<5'
	$(BIN)/pre-commit install

bench: install  ## the benchmark (docs/benchmarks.md): installs the bench extra and the peers; BENCH_ARGS=--quick for the smoke run
	VENV=$(VENV) bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache *.egg-info .coverage .coverage.*
