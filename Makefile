# Two commands matter: `make run` (main job on the embedded synthetic benchmark) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FIRST_STAMP := $(VENV)/.first-installed
PROFILE ?= default

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: setup run test serve stop clean

setup: $(STAMP)

# The set-up comes in two halves so that a fresh `make run` prints this machine's speed and the run's
# estimate within its first 2 minutes: first what the probe needs (torch, torchreid, ...: pyproject's
# [tool.reid-prune] first-install), then the rest. pip compiling every installed module to bytecode
# one at a time is half of the first half (58 s instead of 113 s without it: docs/RESULTS.md section 1),
# so the first half skips it and the second half compiles on all cores. Re-installed only when
# pyproject.toml changes; plain pip reuses the machine's cached torch wheels.
$(FIRST_STAMP): pyproject.toml
	@echo "setting up $(VENV), first half (once per change of pyproject.toml: about 1 min, then the estimate)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip  # the pip that comes with the venv installs about 2x slower
	$(BIN)/pip install -q --no-compile $$($(PY) tools/first_requirements.py)
	touch $@

# compileall exits 1 on the few files in site-packages that are not Python 3 (templates, tests); pip
# skips those too.
$(STAMP): $(FIRST_STAMP)
	@echo "setting up $(VENV), second half: Prefect, MLflow, DVC, ONNX, the project, and bytecode"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $@

run: $(FIRST_STAMP)
	@test $(STAMP) -nt pyproject.toml || $(BIN)/python -m flows.cli estimate --profile $(PROFILE)
	@$(MAKE) --no-print-directory setup
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
