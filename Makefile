# Two commands for a fresh machine with Python 3.11, Java 17 + Maven and Go:
#   make dev   - the whole pipeline on an embedded local Kafka (Ctrl-C stops it)
#   make test  - installs every tool the tests need, then lint, types and the suite
#   make unit  - the tests that need no broker or other peer (seconds, no tools)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/quotaflow
STRIPE_MOCK_VERSION := v0.203.0
STRIPE_MOCK := $(CACHE)/bin/stripe-mock
LOCALSTRIPE_VERSION := 1.15.10
# localstripe is GPL: it gets a virtualenv of its own and runs as a separate process.
LOCALSTRIPE := $(CACHE)/localstripe-venv/bin/localstripe
TEST_ENV := QUOTAFLOW_STRIPE_MOCK=$(STRIPE_MOCK) QUOTAFLOW_LOCALSTRIPE_PYTHON=$(CACHE)/localstripe-venv/bin/python QUOTAFLOW_TOOLS_BIN=$(CACHE)/bin

.PHONY: dev test lint types unit tools bench reliability clean

$(BIN)/quotaflow: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(STRIPE_MOCK):
	mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin go install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION)

$(LOCALSTRIPE):
	$(PYTHON) -m venv $(CACHE)/localstripe-venv
	$(CACHE)/localstripe-venv/bin/pip install -q localstripe==$(LOCALSTRIPE_VERSION)

tools: $(BIN)/quotaflow $(STRIPE_MOCK) $(LOCALSTRIPE)
	QUOTAFLOW_TOOLS_BIN=$(CACHE)/bin scripts/install-deploy-tools.sh
	$(BIN)/quotaflow kafka fetch

dev: $(BIN)/quotaflow
	$(BIN)/quotaflow dev

lint: $(BIN)/quotaflow
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(BIN)/quotaflow
	$(BIN)/mypy

test: tools lint types
	$(TEST_ENV) $(BIN)/pytest -q

# Everything that needs no real peer (broker, Stripe servers, deploy tools): seconds.
unit: $(BIN)/quotaflow
	$(BIN)/pytest -q -m "not peers"

reliability: tools
	$(TEST_ENV) $(BIN)/pytest -q tests/reliability

bench: tools
	$(TEST_ENV) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .quotaflow packaging/edge/build quotaflow_edge.egg-info
