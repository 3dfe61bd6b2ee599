# Everything a fresh machine needs, in the project's own files.
#   make demo   a real job, started and checkpointed the way pbs_mom does it (CRIU)
#   make test   lint, type checks and the whole test suite (real CRIU included)
# The system interpreter: jobs run as ordinary users and must be able to execute the installed
# programs (mom-checkpoint-run is the job's own first process), so no interpreter under /root.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup venv criu test-user demo test lint typecheck clean

setup: venv criu test-user

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || sh scripts/apt-install.sh python3-venv
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

criu:
	sh scripts/install-criu.sh

test-user:
	sh scripts/add-test-user.sh

demo: setup
	sh scripts/demo.sh

lint: venv
	$(BIN)/ruff check mom_checkpoint tests
	$(BIN)/ruff format --check mom_checkpoint tests

typecheck: venv
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
