# Two commands set up a fresh machine (see README.md):
#   make standalone   runs ketch standalone: example DAGs, SQLite, local executor
#   make test         installs what the tests need and runs lint, type checks and the whole suite

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: standalone test install system-deps lint typecheck unit bench docs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The OpenID Connect provider that stands in for Google in tests (npm oidc-provider).
OIDC_PROVIDER := tests/support/oidc
$(OIDC_PROVIDER)/node_modules/.package-lock.json: $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --silent --no-audit --no-fund

# axe-core, injected into UI pages by the accessibility test (tests/integration).
AXE := tests/support/axe
$(AXE)/node_modules/.package-lock.json: $(AXE)/package-lock.json
	cd $(AXE) && npm ci --silent --no-audit --no-fund

install: $(VENV)/.installed $(OIDC_PROVIDER)/node_modules/.package-lock.json $(AXE)/node_modules/.package-lock.json

standalone: install
	$(VENV)/bin/ketch standalone

system-deps:
	./scripts/install-system-deps

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

docs: install
	$(PY) -m ketch.config_docs > docs/configuration.md

test: system-deps install lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.variables_sync --backend both
	$(PY) -m benchmarks.kubernetes
	$(PY) -m benchmarks.failover
	$(PY) -m benchmarks.recovery --backend both
	$(PY) -m benchmarks.auth_cost --backend postgresql
	$(PY) -m benchmarks.sign_in --backend postgresql
	$(PY) -m benchmarks.logs
