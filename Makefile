# Prompt Orchestrator — the two commands a newcomer needs: `make run`, `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# llama-cpp-python compiles llama.cpp on first install (a few minutes). A native
# build (-march=native) crashed on this machine class with "Illegal instruction".
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# Service suite: local PostgreSQL + Redis (CI starts them if they are down).
SERVICES_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/orchestrator_ci
SERVICES_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run extras k8s-render k8s-apply test test-services test-browser bench bench-peers bench-smoke bench-local bench-memory bench-overload chaos lint schema check fuzz security clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "Installing requirements.txt. The first time, llama-cpp-python compiles llama.cpp:"
	@echo "about 5 minutes on 2 cores, while pip shows 'Building wheel for llama-cpp-python'."
	$(PY) -m pip install --progress-bar on -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed-extras: $(VENV)/.installed-dev requirements-extras.txt
	$(PY) -m pip install --quiet -r requirements-extras.txt
	touch $@

## extras: optional integrations whose tests `make test` then runs too (LangChain)
extras: $(VENV)/.installed-extras

## run: serve on $(HOST):$(PORT) with the pipeline worker inside (SQLite, zero config)
run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py runserver $(HOST):$(PORT)

## test: the default suite in embedded mode (SQLite + in-memory channel layer)
test: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not services and not browser" $(PYTEST_ARGS)

## test-services: the service suite against PostgreSQL + Redis, separate processes
test-services: $(VENV)/.installed-dev
	DATABASE_URL=$(SERVICES_DATABASE_URL) REDIS_URL=$(SERVICES_REDIS_URL) \
		$(PY) -m pytest -m services $(PYTEST_ARGS)

## test-browser: the chat page in headless Chromium (Debian's `chromium` package)
test-browser: $(VENV)/.installed-dev
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

## bench: every benchmark of DESIGN §12 (embedded + scaled on PostgreSQL/Redis), one table each
bench: $(VENV)/.installed-dev
	$(PY) -m bench.run $(BENCH_ARGS)

## bench-peers: ours (scaled) beside the LiteLLM proxy and a naive DRF + INSERT app, one table
## (installs LiteLLM into its own venv, var/peers/litellm; needs PostgreSQL + Redis; not in CI)
PEERS_VENV := var/peers/litellm
$(PEERS_VENV)/.installed: bench/peers-requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV) || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	@echo "Installing the LiteLLM proxy into $(PEERS_VENV) (a few hundred MB, once)"
	$(PEERS_VENV)/bin/python -m pip install --progress-bar on -r bench/peers-requirements.txt
	touch $@

bench-peers: $(VENV)/.installed-dev $(PEERS_VENV)/.installed
	$(PY) -m bench.peers $(BENCH_ARGS)

## bench-smoke: the same with tiny counts, a few seconds per scenario (CI: fails on errors)
bench-smoke: $(VENV)/.installed-dev
	$(PY) -m bench.run --smoke $(BENCH_ARGS)

## bench-local: local model tokens/s, direct llama-cpp-python vs through the pipeline
bench-local: $(VENV)/.installed
	$(PY) -m bench.local_model

## bench-memory: what the embedded server keeps allocated over 3,000 requests (tracemalloc, RSS curve)
bench-memory: $(VENV)/.installed-dev
	$(PY) -m bench.memory_profile --requests 3000 $(BENCH_ARGS)

## bench-overload: goodput at 0.5x/1x/2x/5x capacity (PostgreSQL + Redis)
bench-overload: $(VENV)/.installed-dev
	$(PY) -m bench.overload

## chaos: kill workers, restart Redis and PostgreSQL under load; fail on any lost/duplicated request
chaos: $(VENV)/.installed-dev
	$(PY) -m scripts.chaos --requests 300 --duration 60 --kill-every 5

## fuzz: schemathesis against the live OpenAPI schema, with and without a key (fixed seed)
FUZZ_EXAMPLES ?= 25
fuzz: $(VENV)/.installed-dev
	$(PY) -m scripts.fuzz_api --max-examples $(FUZZ_EXAMPLES)

## security: bandit over the code: no medium or high findings (each exception justified inline)
security: $(VENV)/.installed-dev
	$(PY) -m bandit -q -r inference pipeline orchestrator_site scripts bench -ll

## lint: ruff lint + format check, mypy (django-stubs)
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy inference pipeline orchestrator_site

## schema: validate the OpenAPI schema
schema: $(VENV)/.installed-dev
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

## check: migrations are committed and the configuration is valid
check: $(VENV)/.installed-dev
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache .mypy_cache

## k8s-render: the Kubernetes manifests of an overlay, as they would be applied (ENV=dev|prod)
ENV ?= dev
k8s-render:
	kubectl kustomize deploy/k8s/overlays/$(ENV)

## k8s-apply: apply an overlay to the current kubectl context; the migrate Job is replaced (its spec is immutable)
k8s-apply:
	kubectl delete job orchestrator-migrate -n $(if $(filter prod,$(ENV)),orchestrator,orchestrator-$(ENV)) --ignore-not-found
	kubectl apply -k deploy/k8s/overlays/$(ENV)
	kubectl wait --for=condition=complete --timeout=300s job/orchestrator-migrate -n $(if $(filter prod,$(ENV)),orchestrator,orchestrator-$(ENV))
