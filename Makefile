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
# RUNTIME=local | docker | swarm (default auto: docker when an engine answers, else local; never swarm).
# RUNTIME=swarm deploys docker-compose.yml + deploy/swarm.yml as a `docker stack`; reload is a rolling update
# (docs/SWARM.md: nodes, labels, SWARM_REGISTRY).
# MONITORING=1: also Prometheus (rules: deploy/prometheus/) scraping the app and nginx; `up` prints its URL
# (local: Debian's prometheus + prometheus-nginx-exporter; docker: the compose profile `monitoring`).

.PHONY: up
up: venv ## Start the stack (Docker when an engine is reachable, else local processes; or RUNTIME=swarm) and print its URL
	@$(STACKCTL) up

.PHONY: down
down: venv ## Stop what `make up` started and wait until its ports are free
	@$(STACKCTL) down

.PHONY: reload
reload: venv ## Apply changed settings without dropping requests: prints what changes, keeps start values (gunicorn HUP; nginx if its config changed)
	@$(STACKCTL) reload

.PHONY: ps
ps: venv ## List the stack's processes or containers
	@$(STACKCTL) ps

.PHONY: logs
logs: venv ## Follow the stack's logs
	@$(STACKCTL) logs -f

##@ Containers
# Build inputs (environment or make variables): PYTHON_IMAGE, NGINX_IMAGE, PROMETHEUS_IMAGE,
# NGINX_EXPORTER_IMAGE (base images), OFFLINE=1 (install only from ./wheelhouse, built on the host for
# PYTHON_IMAGE's Python). COMPOSE_PROJECT_NAME picks the project (and names the swarm stack).

.PHONY: scale
scale: venv ## Docker/swarm runtime: run APP=N app containers behind nginx (kept by the next `make up`)
	@$(STACKCTL) scale $(or $(APP),$(error usage: make scale APP=N))

.PHONY: images
images: venv ## Build the app, nginx, Locust, Prometheus and exporter images (OFFLINE=1: from ./wheelhouse, no index access)
	@$(STACKCTL) images

.PHONY: wheelhouse
wheelhouse: venv ## Download wheels (with APP_REQUIREMENTS: the app's too) for PYTHON_IMAGE's Python, or this host's with RUNTIME=local, into ./wheelhouse (for OFFLINE=1)
	@$(STACKCTL) wheelhouse

##@ Load testing
# Inputs are make or environment variables (`make loadtest SCENARIO=http USERS=50`, `make drill DRILL=reload`)
# that each tool's command line reads itself (`python -m loadtest.drill --help`): every one, with its default
# and effect, in docs/SETTINGS.md ("Inputs of the load tools"; Locust's thresholds: the LOCUST_* rows).

.PHONY: loadtest
loadtest: venv ## Headless Locust run against the stack: prints rps, p50/p95/p99, failures; writes reports/<time>-<scenario>/
	@$(PY) -m loadtest.runner --run-dir $(RUN_DIR)

.PHONY: loadtest-ui
loadtest-ui: venv ## Locust web UI on 127.0.0.1:LOCUST_WEB_PORT (8089) with a scenario and shape picker
	@$(PY) -m loadtest.runner --ui --run-dir $(RUN_DIR)

# Each drill gets a fresh stack on free ports, under load; exit 3 when a drill lost more than it may.
.PHONY: drill
drill: venv ## Worker-lifecycle drills under load (reload, recycle, TERM/KILL/timeout, down, ...): lost vs. allowed; SERVER=all: on uvicorn, granian, ... too; writes reports/drill-<time>/
	@$(PY) -m loadtest.drill

# One wrk and one worker count (the blueprint's WEB_CONCURRENCY) for every row.
.PHONY: bench
bench: venv ## The blueprint's hot path beside a bare FastAPI app, nginx and other servers; writes reports/bench-<time>/
	@$(PY) -m loadtest.bench

##@ Tuning
# `up` and `reload` apply the same ordering rules and refuse a config that breaks one;
# `make up ALLOW_UNSAFE_CONFIG=1` starts it anyway, with a loud warning (experiments only).

.PHONY: check
check: venv ## Print every knob's value and source, run nginx -t / gunicorn --check-config / compose config and the 7 ordering rules (PROFILE=name)
	@$(STACKCTL) check

.PHONY: timeout-lab
timeout-lab: venv ## Break each timeout on purpose on short-lived local stacks and print who gave up first
	@$(PY) -m loadtest.timeout_lab

# SWEEP='WEB_CONCURRENCY=1,2,4 APP_THREADPOOL_TOKENS=40,200': every combination gets `make check`, a fresh
# stack and a Locust run (a sweep's own defaults: docs/SETTINGS.md).
.PHONY: sweep
sweep: venv ## Measure SCENARIO once per combination of SWEEP='KNOB=v1,v2 ...'; writes reports/sweep-<time>/
	@$(PY) -m loadtest.sweep

##@ Development

.PHONY: venv
venv: $(VENV)/.installed ## Create or update the virtualenv from the pins in pyproject.toml

$(VENV)/.installed: pyproject.toml deploy/pins.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) deploy/pins.py demo loadtest dev > $(VENV)/requirements.txt
	@echo "installing pinned requirements into $(VENV) ..."
	@$(PY) -m pip install -q --disable-pip-version-check -r $(VENV)/requirements.txt
	@touch $@

.PHONY: test
test: venv ## Lint, type-check and run every test tier (app, real nginx+gunicorn stack, ...)
	$(PY) -m ruff check service deploy tests loadtest examples
	$(PY) -m mypy service deploy loadtest
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff + mypy only
	$(PY) -m ruff check service deploy tests loadtest examples
	$(PY) -m mypy service deploy loadtest

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
