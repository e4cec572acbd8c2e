# container-agent: `make run`, `make test`, `make bench`. Everything runs from .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENGINE_DIR ?= /tmp/container-agent-engine
export CA_ENGINE_DIR := $(ENGINE_DIR)

.PHONY: run test unit integration bench lint docs engine engine-stop tools clean

# setup.py and the C file: the optional extension agent/_speedups.c is built in place.
$(BIN)/container-agent: pyproject.toml setup.py agent/_speedups.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/container-agent

run: venv
	mkdir -p var
	$(BIN)/container-agent run $(if $(CONFIG),--config $(CONFIG))

engine:
	scripts/test-engine.sh start "$(ENGINE_DIR)"

engine-stop:
	scripts/test-engine.sh stop "$(ENGINE_DIR)"

# Tools the tests use besides the engine: Debian's prometheus server and a helm binary.
tools:
	@command -v prometheus >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	scripts/install-helm.sh

# The whole suite: unit tests, then integration tests against the private test engine.
test: venv engine tools
	$(BIN)/ruff check agent exporters tests bench
	CA_TEST_DOCKER_HOST=$$(scripts/test-engine.sh host "$(ENGINE_DIR)") \
	  $(BIN)/pytest -q -p no:cacheprovider tests

unit: venv
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

# Long runs, not timed tests: throughput vs the raw logs-API floor, idle footprint, demux,
# stats at 100 containers, http vs file; then the json-file source vs API vs floor.
bench: venv engine
	CA_TEST_DOCKER_HOST=$$(scripts/test-engine.sh host "$(ENGINE_DIR)") \
	  $(BIN)/python -m bench.run_all
	CA_TEST_DOCKER_HOST=$$(scripts/test-engine.sh host "$(ENGINE_DIR)") \
	  $(BIN)/python -m bench.files

lint: venv
	$(BIN)/ruff check agent exporters tests bench

# Regenerates the config reference in README.md from agent/config.py.
docs: venv
	$(BIN)/python scripts/update-readme-reference.py

clean:
	rm -rf $(VENV) .tools var
