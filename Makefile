# Everyday commands. `make run` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast test-js js-static lint format check clean hooks bench

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

test: lint test-js  ## lint, the JavaScript client's tests, then the whole test suite with coverage (needs Redis at REDIS_URL and PostgreSQL)
	$(BIN)/pytest -q --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

test-fast: install  ## the unit tests only (tests/unit: pure, no I/O, a few seconds); no lint, no services
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

JS := clients/js

test-js:  ## the JavaScript client (clients/js): npm ci, tsc --noEmit, build, node --test (Node >= 20)
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	cd $(JS) && npx tsc -p tsconfig.json --noEmit
	cd $(JS) && npm run --silent build
	cd $(JS) && node --test test/

js-static:  ## rebuild the JavaScript client and refresh the server's copy (http_api/static/realtime-client.js)
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	cp $(JS)/dist/realtime-client.js http_api/static/realtime-client.js

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

hooks: install  ## install pre-commit into .venv and the git hook (.pre-commit-config.yaml: ruff, mypy)
	$(BIN)/pip install -q 'pre-commit>=4,<5'
	$(BIN)/pre-commit install

bench: install  ## the benchmark (docs/benchmarks.md): installs the bench extra and the peers; BENCH_ARGS=--quick for the smoke run
	VENV=$(VENV) bench/run $(BENCH_ARGS)

clean:
	rm -rf $(JS)/node_modules $(JS)/dist
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache *.egg-info .coverage .coverage.*
