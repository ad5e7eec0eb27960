# `make demo` and `make test` set everything up themselves: system libraries (apt-get, with sudo
# when not root), a virtual environment in .venv (unless one is active), and the package.
SHELL := /bin/bash
VENV ?= .venv
ENV_DIR := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(VENV))
PYTHON := $(ENV_DIR)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_PACKAGES := libusb-1.0-0 python3-venv
STAMP := $(ENV_DIR)/.omnivec-installed

.PHONY: demo test test-fast lint format install system-deps clean

demo: install
	$(ENV_DIR)/bin/omnivec demo

test: install
	$(PYTHON) -m pytest -q

# ruff (lint rules and formatting, pyproject.toml [tool.ruff]) and mypy over omnivec/ ([tool.mypy]).
lint: install
	$(ENV_DIR)/bin/ruff check .
	$(ENV_DIR)/bin/ruff format --check .
	$(ENV_DIR)/bin/mypy

format: install
	$(ENV_DIR)/bin/ruff check --fix .
	$(ENV_DIR)/bin/ruff format .

# Everything but the end-to-end tests marked `integration` (real CLI runs, kill/resume, torchrun).
test-fast: install
	$(PYTHON) -m pytest -q -m "not integration"

install: $(STAMP)

$(STAMP): pyproject.toml | system-deps
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $@

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
