# Two commands on a fresh machine: `make dev` runs the control plane, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist). Each starts its own PostgreSQL and Temporal dev server; 3 on
# 2 cores was slower than 2 and made timing-sensitive tests fail.
TEST_PROCESSES ?= 2

.PHONY: dev test test-fast lint venv clean prometheus

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/rollout dev

test: $(STAMP) prometheus
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n $(TEST_PROCESSES)

# The tests that start no server and no process (tests/tiers.py), in one process: seconds.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not servers"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .data

# Debian's prometheus, for the health-gate tests (tests/test_health_gates.py), which skip saying
# why where it cannot be installed (no root, no Debian).
prometheus:
	@command -v prometheus >/dev/null 2>&1 \
		|| (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 \
			&& apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1)) \
		|| echo "prometheus could not be installed: the health-gate tests will be skipped"
