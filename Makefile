# Two commands on a fresh clone: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# The CPU build of torch. This machine keeps it on disk; elsewhere PyTorch's CPU index serves it.
TORCH := torch==2.13.0

.PHONY: run test test-fast lint format install system-deps wheel-check clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py deploy/requirements-nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# Pinned CPU torch first, so nothing below pulls a multi-GB CUDA build.
	$(PIP) install -q "$(TORCH)" || $(PIP) install -q "$(TORCH)" --index-url https://download.pytorch.org/whl/cpu \
		|| $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e '.[dev]'
	grep -v '^\s*#' deploy/requirements-nodeps.txt | grep -v '^\s*$$' | xargs -r $(PIP) install -q --no-deps
	touch $(STAMP)

system-deps:
	@missing=$$(grep -v '^\s*#' deploy/apt-packages.txt | grep -v '^\s*$$' | while read p; do \
		dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "Installing Debian packages: $$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: $(STAMP)
	$(VENV)/bin/espalier serve

test: $(STAMP) system-deps lint
	$(VENV)/bin/python -m pytest

# The tests that need no model, no app, no browser and no database server, for while you work.
test-fast: $(STAMP) lint
	$(VENV)/bin/python -m pytest -m "not slow and not browser and not postgres and not platform" -q

# The project's own habits: ruff (lint and format, line length 120) and the layer contracts.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Proves the built wheel imports and runs outside the source tree.
wheel-check: $(STAMP)
	rm -rf dist /tmp/espalier-wheel-venv
	$(PY) -m build --wheel --outdir dist . >/dev/null
	$(PYTHON) -m venv --system-site-packages /tmp/espalier-wheel-venv
	/tmp/espalier-wheel-venv/bin/pip install -q --no-deps dist/*.whl
	cd /tmp && /tmp/espalier-wheel-venv/bin/espalier --version

clean:
	rm -rf $(VENV) dist build *.egg-info
