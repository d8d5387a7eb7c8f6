# The two commands: `make run` (the whole city) and `make test` (everything CI checks).
# Both bootstrap a virtualenv in .venv on first use; `cityops stack up` installs the services.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint browser prometheus stack-up stack-down bench

$(BIN)/cityops: pyproject.toml
	@# Debian ships venv separately from python3.
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || apt-get install -y -qq python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

run: $(BIN)/cityops
	$(BIN)/cityops run

test: $(BIN)/cityops lint browser prometheus
	$(BIN)/cityops stack up
	$(BIN)/pytest

# Browser tests drive Debian's Chromium through Playwright; no browser is downloaded.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium)

# The Grafana tests query a real Prometheus scraping the services (tests/dashboards/prometheus.py).
prometheus:
	@command -v prometheus >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus)

lint: $(BIN)/cityops
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

stack-up: $(BIN)/cityops
	$(BIN)/cityops stack up

stack-down: $(BIN)/cityops
	$(BIN)/cityops stack down

bench: $(BIN)/cityops
	$(BIN)/python -m benchmarks.encoding
