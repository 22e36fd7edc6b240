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
# Build inputs (environment or make variables): PYTHON_IMAGE, NGINX_IMAGE (base images), OFFLINE=1 (install
# only from ./wheelhouse, built on the host for PYTHON_IMAGE's Python). COMPOSE_PROJECT_NAME picks the project
# (and names the swarm stack).

.PHONY: scale
scale: venv ## Docker/swarm runtime: run APP=N app containers behind nginx (kept by the next `make up`)
	@$(STACKCTL) scale $(or $(APP),$(error usage: make scale APP=N))

.PHONY: images
images: venv ## Build the app, nginx and Locust images (OFFLINE=1: from ./wheelhouse, no index access)
	@$(STACKCTL) images

.PHONY: wheelhouse
wheelhouse: venv ## Download wheels for PYTHON_IMAGE's Python version into ./wheelhouse (for OFFLINE=1)
	@$(STACKCTL) wheelhouse

##@ Load testing
# Inputs: SCENARIO (mixed | http | slow | blocking | sync | websocket | stream | cpu, or a locustfile path),
# USERS (20), SPAWN_RATE (5/s), RUN_TIME (30s), HOST (default: the running stack's URL), SHAPE (step | spike |
# soak), LOCUST_WORKERS (0 = one Locust process). Thresholds and the rest: the LOCUST_* rows of docs/SETTINGS.md.

.PHONY: loadtest
loadtest: venv ## Headless Locust run against the stack: prints rps, p50/p95/p99, failures; writes reports/<time>-<scenario>/
	@$(PY) -m loadtest.runner --run-dir $(RUN_DIR) --scenario "$(or $(SCENARIO),mixed)" \
		--users "$(or $(USERS),20)" --spawn-rate "$(or $(SPAWN_RATE),5)" --run-time "$(or $(RUN_TIME),30s)" \
		$(if $(HOST),--host "$(HOST)") $(if $(SHAPE),--shape "$(SHAPE)") \
		$(if $(LOCUST_WORKERS),--workers "$(LOCUST_WORKERS)")

.PHONY: loadtest-ui
loadtest-ui: venv ## Locust web UI on 127.0.0.1:LOCUST_WEB_PORT (8089) with a scenario and shape picker (HOST, LOCUST_WORKERS)
	@$(PY) -m loadtest.runner --ui --run-dir $(RUN_DIR) $(if $(HOST),--host "$(HOST)") \
		$(if $(LOCUST_WORKERS),--workers "$(LOCUST_WORKERS)")

# DRILL=name (or a,b; default: all, the docker ones need an engine). Each drill gets a fresh stack on free ports
# and the load below: DRILL_SECONDS (15 per drill), WRK_THREADS (1), WRK_CONNECTIONS (32), DRILL_WEBSOCKETS (20),
# DRILL_RATE (0 = as fast as wrk goes, else a cap in req/s); DRILL_SHORT=1 (4 s, short timeouts: for tests),
# DRILL_STRICT=1 (every drill must lose nothing). Exit 3 when a drill lost more than it may.
.PHONY: drill
drill: venv ## Worker-lifecycle drills under load (reload, recycle, TERM/KILL/timeout, down, ...): lost vs. allowed; writes reports/drill-<time>/
	@$(PY) -m loadtest.drill --drill "$(DRILL)" $(if $(DRILL_SECONDS),--seconds "$(DRILL_SECONDS)") \
		$(if $(WRK_THREADS),--threads "$(WRK_THREADS)") $(if $(WRK_CONNECTIONS),--connections "$(WRK_CONNECTIONS)") \
		$(if $(DRILL_WEBSOCKETS),--websockets "$(DRILL_WEBSOCKETS)") $(if $(DRILL_RATE),--rate "$(DRILL_RATE)") \
		$(if $(filter 1,$(DRILL_SHORT)),--short) $(if $(filter 1,$(DRILL_STRICT)),--strict)

# BENCH=name (or a,b; default: every row: nginx-return, bare, blueprint-direct, blueprint-nginx, slow-held, ws-held,
# uvicorn, granian, gunicorn-asgi). One wrk (-t1 -c BENCH_CONNECTIONS, 64) and one worker count (WEB_CONCURRENCY,
# default the blueprint's) for every row; BENCH_SECONDS (10) per row; BENCH_SLOW_N (1000) /api/slow?delay=
# BENCH_SLOW_DELAY (5) and BENCH_WS_N (1000) WebSockets held through nginx for BENCH_WS_HOLD s (BENCH_SECONDS);
# PROFILE; BENCH_SHORT=1 (2 s, small N).
.PHONY: bench
bench: venv ## The blueprint's hot path beside a bare FastAPI app, nginx and other servers; writes reports/bench-<time>/
	@$(PY) -m loadtest.bench --bench "$(BENCH)" $(if $(BENCH_SECONDS),--seconds "$(BENCH_SECONDS)") \
		$(if $(BENCH_CONNECTIONS),--connections "$(BENCH_CONNECTIONS)") \
		$(if $(WEB_CONCURRENCY),--workers "$(WEB_CONCURRENCY)") $(if $(BENCH_SLOW_N),--slow-n "$(BENCH_SLOW_N)") \
		$(if $(BENCH_SLOW_DELAY),--slow-delay "$(BENCH_SLOW_DELAY)") $(if $(BENCH_WS_N),--ws-n "$(BENCH_WS_N)") \
		$(if $(BENCH_WS_HOLD),--ws-hold "$(BENCH_WS_HOLD)") \
		$(if $(PROFILE),--profile "$(PROFILE)") $(if $(filter 1,$(BENCH_SHORT)),--short)

##@ Tuning
# `up` and `reload` apply the same ordering rules and refuse a config that breaks one;
# `make up ALLOW_UNSAFE_CONFIG=1` starts it anyway, with a loud warning (experiments only).

.PHONY: check
check: venv ## Print every knob's value and source, run nginx -t / gunicorn --check-config / compose config and the 7 ordering rules (PROFILE=name)
	@$(STACKCTL) check

.PHONY: timeout-lab
timeout-lab: venv ## Break each timeout on purpose on short-lived local stacks and print who gave up first (LAB_FORMAT=table|markdown|json)
	@$(PY) -m deploy.stackctl.timeout_lab --format $(or $(LAB_FORMAT),table)

# SWEEP='WEB_CONCURRENCY=1,2,4 APP_THREADPOOL_TOKENS=40,200': every combination gets `make check`, a fresh
# stack and SCENARIO for RUN_TIME; a sweep's own options default to SCENARIO=http USERS=20 RUN_TIME=15s.
.PHONY: sweep
sweep: venv ## Measure SCENARIO once per combination of SWEEP='KNOB=v1,v2 ...'; writes reports/sweep-<time>/ (USERS, SPAWN_RATE, RUN_TIME, SWEEP_MAX_P95_MS, SWEEP_MAX_FAIL_RATIO)
	@$(PY) -m loadtest.sweep --sweep "$(SWEEP)" --scenario "$(or $(SCENARIO),http)" \
		--users "$(or $(USERS),20)" --spawn-rate "$(or $(SPAWN_RATE),0)" --run-time "$(or $(RUN_TIME),15s)" \
		--workers "$(or $(LOCUST_WORKERS),0)" --max-p95-ms "$(or $(SWEEP_MAX_P95_MS),0)" \
		--max-fail-ratio "$(or $(SWEEP_MAX_FAIL_RATIO),0.01)"

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
	$(PY) -m ruff check service deploy tests loadtest
	$(PY) -m mypy service deploy loadtest
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff + mypy only
	$(PY) -m ruff check service deploy tests loadtest
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
