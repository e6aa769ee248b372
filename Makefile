# The two commands a newcomer needs: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
DBVENV := .venv-db
PY := $(VENV)/bin/python
SHARED := $(abspath ../shared)

# Models resolve from ../shared/models when it is there (CI, developer machines), else var/models.
LABELSVC_MODEL_DIR ?= $(if $(wildcard $(SHARED)/models),$(SHARED)/models,$(abspath var/models))
LABELSVC_EVALSET_DIR ?= $(SHARED)/evalset
export LABELSVC_MODEL_DIR LABELSVC_EVALSET_DIR
# --standalone: a standalone server, as production's MongoDB (deploy/compose.yaml), not the
# single-node replica set SecantusDB presents by default.
export LABELSVC_DB_SERVER := $(abspath $(DBVENV)/bin/secantusd-py) --standalone
# promtool and prometheus for the monitoring tests: the ones given, else unpacked into .tools.
TOOLS := .tools
PROMTOOL_BIN ?= $(abspath $(TOOLS)/promtool)
PROMETHEUS_BIN ?= $(abspath $(TOOLS)/prometheus)
export PROMTOOL_BIN PROMETHEUS_BIN
MONITORING_TOOLS := $(if $(filter $(abspath $(TOOLS))/%,$(PROMTOOL_BIN) $(PROMETHEUS_BIN)),$(TOOLS)/.installed)
# Chromium for the browser test of the docs page: the one given, else the distribution's
# (installed when missing).
CHROMIUM_BIN ?= $(or $(shell command -v chromium 2>/dev/null),/usr/bin/chromium)
export CHROMIUM_BIN
BROWSER := $(if $(wildcard $(CHROMIUM_BIN)),,browser)
SUDO := $(if $(filter 0,$(shell id -u)),,$(shell command -v sudo))

# ONNX Runtime build: cpu, or gpu (onnxruntime-gpu with CUDA 13 and cuDNN 9 as pip wheels;
# needs an NVIDIA driver >= 580), e.g. `make run RUNTIME=gpu`, `make bench RUNTIME=gpu`.
RUNTIME ?= cpu
ifeq ($(filter $(RUNTIME),cpu gpu),)
$(error RUNTIME must be cpu or gpu, not '$(RUNTIME)')
endif
INSTALLED := $(VENV)/.installed-$(RUNTIME)
# Both builds install the same `onnxruntime` module: switching removes the other first.
OTHER_ORT := $(if $(filter gpu,$(RUNTIME)),onnxruntime,onnxruntime-gpu)

.PHONY: run test lint typecheck pytest bench openapi install browser clean

# The stamps go first: an install cut short (after the uninstall, say) leaves none, so the
# next make installs again instead of trusting a half-changed environment.
$(INSTALLED): pyproject.toml requirements/constraints.txt
	rm -f $(VENV)/.installed-* $(VENV)/.bench-installed
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes $(OTHER_ORT)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[$(RUNTIME),dev]'
	touch $@

# `make bench` only: the bench extra adds torch and an embedding model for caption similarity.
$(VENV)/.bench-installed: $(INSTALLED) pyproject.toml requirements/constraints.txt
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[$(RUNTIME),dev,bench]'
	touch $@

# The test/dev database server lives in its own environment: it is a separate program, never imported.
$(DBVENV)/.installed: requirements/db-constraints.txt
	$(PYTHON) -m venv $(DBVENV)
	$(DBVENV)/bin/python -m pip install --quiet --upgrade pip
	$(DBVENV)/bin/python -m pip install --quiet -c requirements/db-constraints.txt 'secantusdb==0.7.0b3'
	touch $@

# Unpacked from the distribution's prometheus package (Debian, Ubuntu) rather than installed,
# which would start a system-wide server: the tests check and unit-test deploy/prometheus with
# them, and scrape the running service with a real Prometheus.
$(TOOLS)/.installed:
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)/deb
	cd $(TOOLS)/deb && { apt-get download prometheus || { \
	  echo "fetching the package lists (apt-get update) for the prometheus package"; \
	  $(SUDO) apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/deb/root
	mv $(TOOLS)/deb/root/usr/bin/promtool $(TOOLS)/deb/root/usr/bin/prometheus $(TOOLS)/
	rm -rf $(TOOLS)/deb
	touch $@

# A browser installs system-wide (its libraries too), unlike the monitoring tools above.
browser:
	@echo "installing the distribution's chromium package for the docs page's browser test"
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	  || { $(SUDO) apt-get update -qq && \
	       $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

install: $(INSTALLED) $(DBVENV)/.installed

run: install
	$(PY) -m models.fetch --model-dir "$(LABELSVC_MODEL_DIR)"
	exec $(PY) -m service serve

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy

pytest: install $(MONITORING_TOOLS) $(BROWSER)
	$(PY) -m pytest

test: lint typecheck pytest

bench: install $(VENV)/.bench-installed
	$(PY) -m bench.run_all

openapi: $(INSTALLED)
	$(PY) -m service openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) $(DBVENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
