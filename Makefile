# One place for every command: CI (.ci/run) calls `make test` and nothing else.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: up test test-duckdb2 lint fmt bench soak check clean browser alerting postgres screenshots

up: $(STAMP)
	$(VENV)/bin/coordstate up --demo

test: $(STAMP) $(NODE_STAMP) browser alerting postgres lint
	$(PY) -m pytest

# Debian's Chromium for the browser test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's Alertmanager and promtool (package prometheus) for the alerting tests; the tests start
# Alertmanager themselves, on a free port, and stop it.
alerting:
	@{ command -v prometheus-alertmanager && command -v promtool; } >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus-alertmanager and prometheus (promtool) for the alerting tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus-alertmanager prometheus >/dev/null; }

# Debian's PostgreSQL server binaries for the lake tests, which start a throwaway cluster of their
# own (initdb in a temporary directory, a free port) and remove it.
postgres:
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v psql; } >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql (server binaries) for the lake tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			postgresql >/dev/null; }

screenshots: $(STAMP) browser
	COORDSTATE_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_browser.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) alerting postgres
	$(PY) bench/ingest.py
	$(PY) bench/queries.py
	$(PY) -m bench.discover
	$(PY) -m bench.alerts
	$(PY) -m bench.lake
	$(PY) -m bench.lake_roles

# The reliability campaign at full counts (+ >= 10 minutes of fuzzing); prints the README table.
soak: $(STAMP) browser
	bash bench/soak.sh

# The code is kept portable to DuckDB 2.x while pyproject pins the 1.5 line: the whole suite in a
# second venv whose DuckDB is the newest 2.x release (pip warns that the pin is overridden).
DUCKDB2_VENV ?= .venv-duckdb2
test-duckdb2:
	$(MAKE) VENV=$(DUCKDB2_VENV) $(DUCKDB2_VENV)/.installed
	$(DUCKDB2_VENV)/bin/python -m pip install --quiet --no-deps 'duckdb>=2,<3'
	$(MAKE) VENV=$(DUCKDB2_VENV) test

check: $(STAMP)
	$(VENV)/bin/coordstate check otel-config/models/*.yaml

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The second, independent OTLP client (Node SDK) for the end-to-end tests.
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) $(DUCKDB2_VENV) tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
