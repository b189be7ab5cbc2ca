# Two commands matter: `make run` (main job on the embedded synthetic benchmark) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= default

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: setup run test serve stop clean

setup: $(STAMP)

# Re-install only when pyproject.toml changes; plain pip reuses the machine's cached torch wheels.
$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (once per change of pyproject.toml: about 3 min; the run then prints its estimate)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

run: setup
	$(BIN)/reid-prune run --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Prefect server, MLflow server and the prune-adapt deployments, all on 127.0.0.1; `make stop` ends them.
serve: setup
	$(BIN)/reid-prune serve

stop:
	$(BIN)/reid-prune stop

clean:
	rm -rf outputs mlruns.db .prefect
