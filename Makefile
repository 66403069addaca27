# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test lint bench clean models

# Set-up only; idempotent (re-installs when pyproject.toml changes).
.venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or python3.12)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# API on http://127.0.0.1:$${TUNEQ_PORT:-8000} plus one worker, on SQLite and an embedded Redis under ./var/.
run: $(STAMP)
	$(BIN)/tuneq run

lint: $(STAMP)
	$(BIN)/ruff check app workers tuneq tests bench migrations
	$(BIN)/mypy app workers tuneq

test: lint
	$(BIN)/python -m pytest -q

# Every bench/*.py that is a benchmark (the others are modules the benches import).
BENCHES := $(filter-out bench/__init__.py bench/common.py bench/noop_app.py bench/chaos_figures.py,$(wildcard bench/*.py))

bench: $(STAMP)
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# tuneq/models.py from the server's OpenAPI; tests/cli/test_models.py fails until this is run after a schema change.
models: $(STAMP)
	$(BIN)/python -c 'from app.main import create_app; from tuneq.codegen import render; open("tuneq/models.py", "w").write(render(create_app().openapi()))'

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
