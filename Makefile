# container-agent: `make run`, `make test`, `make bench`; `make help` lists every target.
# Everything runs from .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENGINE_DIR ?= /tmp/container-agent-engine
export CA_ENGINE_DIR := $(ENGINE_DIR)
TEST_HOST = CA_TEST_DOCKER_HOST=$$(scripts/test-engine.sh host "$(ENGINE_DIR)")

.PHONY: help venv run test unit integration lint typecheck bench mutation docs engine engine-stop tools clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# setup.py and the C file: the optional extension agent/_speedups.c is built in place.
$(BIN)/container-agent: pyproject.toml setup.py agent/_speedups.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/container-agent ## create .venv and install the agent (editable) with the dev tools

run: venv ## run the agent (CONFIG=file.yaml to pass a config; default: records to ./var)
	mkdir -p var
	$(BIN)/container-agent run $(if $(CONFIG),--config $(CONFIG))

engine: ## start the private test engine (scripts/test-engine.sh)
	scripts/test-engine.sh start "$(ENGINE_DIR)"

engine-stop: ## stop the private test engine
	scripts/test-engine.sh stop "$(ENGINE_DIR)"

# No image registry: a Debian base made with mmdebstrap (once per engine), a wheelhouse
# made on this host, `docker build --network none` (scripts/build-image.sh).
.PHONY: image
image: venv ## build the image container-agent:dev (IMAGE=name:tag) on $DOCKER_HOST, else the test engine
	scripts/build-image.sh $(IMAGE)

# Tools the tests use besides the engine: Debian's prometheus server and a helm binary.
tools: ## install the tools the tests need besides the engine (prometheus, helm)
	@command -v prometheus >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	scripts/install-helm.sh

test: venv engine tools lint typecheck ## everything CI runs: linters, types, unit and integration tests
	$(TEST_HOST) $(BIN)/pytest -q -p no:cacheprovider tests

unit: venv ## the unit tests alone (no engine needed)
	$(BIN)/pytest -q -p no:cacheprovider -m "not integration" tests

integration: venv engine tools ## the tests against the private test engine
	$(TEST_HOST) $(BIN)/pytest -q -p no:cacheprovider -m integration tests

lint: venv ## ruff, and the import layers (import-linter)
	$(BIN)/ruff check agent exporters tests bench
	$(BIN)/lint-imports

typecheck: venv ## mypy on agent/ and exporters/
	$(BIN)/mypy

# Long runs, not timed tests: throughput vs the raw logs-API floor, idle footprint, demux,
# stats at 100 containers, http vs file; then the json-file source vs API vs floor.
bench: venv engine ## the benchmarks (docs/benchmarks.md)
	$(TEST_HOST) $(BIN)/python -m bench.run_all
	$(TEST_HOST) $(BIN)/python -m bench.files
	$(TEST_HOST) $(BIN)/python -m bench.processing
	$(TEST_HOST) $(BIN)/python -m bench.scale --bulk  # beside Fluent Bit when FLUENT_BIT names one

# mutmut copies the tree to mutants/ and runs the delivery tests against each mutant.
mutation: venv ## mutation testing of the delivery rules (slow: ~10 min; `mutmut results` lists survivors)
	$(BIN)/pip install -q 'mutmut>=3.2'
	$(BIN)/mutmut run --max-children 1
	$(BIN)/mutmut results

docs: venv ## regenerate the config reference in docs/configuration.md
	$(BIN)/python scripts/update-config-reference.py

clean: ## remove .venv, the tools and ./var
	rm -rf $(VENV) .tools var mutants
