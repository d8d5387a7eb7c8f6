# The two commands: `make run` (the whole city) and `make test` (everything CI checks).
# Both bootstrap a virtualenv in .venv on first use; `cityops stack up` installs the services.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint stack-up stack-down bench

$(BIN)/cityops: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

run: $(BIN)/cityops
	$(BIN)/cityops run

test: $(BIN)/cityops lint
	$(BIN)/cityops stack up
	$(BIN)/pytest

lint: $(BIN)/cityops
	$(BIN)/ruff check .
	$(BIN)/mypy

stack-up: $(BIN)/cityops
	$(BIN)/cityops stack up

stack-down: $(BIN)/cityops
	$(BIN)/cityops stack down

bench: $(BIN)/cityops
	$(BIN)/python -m benchmarks.encoding
