# Two commands on a fresh machine: `make run` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
WORKERS ?= 2
# The first Python 3.11+ on PATH.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
PYTEST_ARGS ?=
INSTANCE := $(or $(EXPPLATFORM_INSTANCE_PATH),instance)

.PHONY: install run reset test test-fast lint fmt typecheck bench clean

$(STAMP): pyproject.toml setup.py
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed on PATH" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The demo: its login and client key, its experiments (experiments/*.toml) and, the
# first time only, four simulated weeks of their customers (experiments/scenarios/demo.toml).
run: $(STAMP)
	$(BIN)/expplatform db upgrade
	$(BIN)/expplatform demo setup
	$(BIN)/expplatform demo seed || echo "expplatform: the demo history could not be written (above: why); serving what is there (make reset starts over)"
	@echo
	@echo "expplatform: serving on http://127.0.0.1:$(PORT)/ with $(WORKERS) web workers and one fit worker (Ctrl-C stops all)"
	@echo "  log in as   demo@example.com / demo-password"
	@echo "  look first  http://127.0.0.1:$(PORT)/journeys/ecommerce                 the demo journey, stage by stage"
	@echo "              http://127.0.0.1:$(PORT)/experiments/checkout-page/report    a clear winner's report"
	@echo "  the data is simulated: four weeks of customers with known true effects ($(INSTANCE)/demo-truth.json)"
	@echo
	$(BIN)/expplatform serve --port $(PORT) --workers $(WORKERS) --threads 4 --fit-workers 1

# Start over: delete the local SQLite database (and the demo key kept beside it), then run.
reset:
	@test -z "$$EXPPLATFORM_DATABASE_URL" || { echo "make reset deletes the local SQLite database only, and EXPPLATFORM_DATABASE_URL is set" >&2; exit 1; }
	rm -f $(INSTANCE)/expplatform.sqlite3 $(INSTANCE)/expplatform.sqlite3-wal $(INSTANCE)/expplatform.sqlite3-shm \
		$(INSTANCE)/expplatform.sqlite3-ingest.lock $(INSTANCE)/demo_client_key $(INSTANCE)/demo-truth.json
	$(MAKE) run

test: $(STAMP)
	$(BIN)/python -m pytest -n auto -m "not alone" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m alone $(PYTEST_ARGS)

# The inner loop: no slow simulations, no browser.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto -m "not slow and not browser and not alone" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) instance .pytest_cache
