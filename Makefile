# FastAPI deployment blueprint — `make` alone lists the targets.
# Inputs are make variables or environment variables (knobs: docs/SETTINGS.md), e.g. `make up HTTP_PORT=9000`.

.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= .run/local
STACKCTL := $(PY) -m deploy.stackctl --run-dir $(RUN_DIR)

##@ Stack

.PHONY: up
up: venv ## Start the stack (Docker when an engine is reachable, else local processes) and print its URL
	@$(STACKCTL) up

.PHONY: down
down: venv ## Stop what `make up` started and wait until its ports are free
	@$(STACKCTL) down

.PHONY: reload
reload: venv ## Apply changed settings without dropping requests (gunicorn HUP, nginx reload)
	@$(STACKCTL) reload

.PHONY: ps
ps: venv ## List the stack's processes or containers
	@$(STACKCTL) ps

.PHONY: logs
logs: venv ## Follow the stack's logs
	@$(STACKCTL) logs -f

##@ Development

.PHONY: venv
venv: $(VENV)/.installed ## Create or update the virtualenv from the pins in pyproject.toml

$(VENV)/.installed: pyproject.toml deploy/pins.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) deploy/pins.py loadtest dev > $(VENV)/requirements.txt
	@echo "installing pinned requirements into $(VENV) ..."
	@$(PY) -m pip install -q --disable-pip-version-check -r $(VENV)/requirements.txt
	@touch $@

.PHONY: test
test: venv ## Lint, type-check and run every test tier (app, real nginx+gunicorn stack, ...)
	$(PY) -m ruff check service deploy tests loadtest
	$(PY) -m mypy service
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff + mypy only
	$(PY) -m ruff check service deploy tests loadtest
	$(PY) -m mypy service

.PHONY: settings-table
settings-table: venv ## Regenerate docs/SETTINGS.md from service/settings.py
	@$(STACKCTL) settings-table --write

.PHONY: clean
clean: ## Remove the virtualenv, run directories and caches
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache

##@ Help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m [VAR=value ...]\n"} \
		/^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)
