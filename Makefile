# Everything a fresh machine needs, in the project's own files.
#   make demo   a real job checkpointed, ended and restarted the way pbs_mom does it (CRIU)
#   make test   lint, type checks and the whole test suite (real CRIU included)
# The system interpreter: jobs run as ordinary users and must be able to execute the installed
# programs (mom-checkpoint-run is the job's own first process), so no interpreter under /root.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup venv criu test-user demo test lint typecheck install clean man deb rpm packaging-tools reliability benchmark

setup: venv criu test-user packaging-tools

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

# The ordinary user the test jobs run as, and sudo for the users' restart flow (mom-restart --own).
test-user:
	sh scripts/add-test-user.sh
	@command -v sudo >/dev/null 2>&1 || sh scripts/apt-install.sh sudo

demo: setup
	$(BIN)/python scripts/demo.py

lint: venv
	$(BIN)/ruff check mom_checkpoint tests scripts
	$(BIN)/ruff format --check mom_checkpoint tests scripts
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

# Every fault and abuse scenario many times, and long fuzzing: writes docs/RELIABILITY.md.
reliability: setup
	$(BIN)/python scripts/reliability.py

# The hook against the seed's script and raw CRIU, side by side: writes docs/PERFORMANCE.md.
# It drops the page cache before each dump: run it on a quiet machine (it waits up to an hour).
benchmark: setup
	$(BIN)/python scripts/benchmark --wait-quiet 3600

# A node install: a private venv on the system Python and the three programs in $(SBIN).
PREFIX ?= /opt/mom-checkpoint
SBIN ?= /usr/local/sbin
install:
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || sh scripts/apt-install.sh python3-venv
	$(PYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q .
	install -d -m 0755 $(SBIN) /etc/mom-checkpoint
	install -d -m 0711 /var/spool/checkpoint
	for p in mom-checkpoint mom-restart mom-checkpoint-run; do ln -sf $(PREFIX)/venv/bin/$$p $(SBIN)/$$p; done
	test -e /etc/mom-checkpoint/config.toml || install -m 0644 packaging/config.toml /etc/mom-checkpoint/config.toml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Packages (docs/PACKAGING.md). Man pages into build/man, packages into dist/.
man: venv
	VENV=$(VENV) sh scripts/build-man.sh

deb: venv
	VENV=$(VENV) sh scripts/build-deb.sh

rpm: venv packaging-tools
	VENV=$(VENV) sh scripts/build-rpm.sh

# What building and testing the packages needs beyond Debian's own dpkg-deb: rpmbuild (Debian's
# rpm package) and logrotate (to check the logrotate entry).
packaging-tools:
	@command -v rpmbuild >/dev/null 2>&1 && command -v logrotate >/dev/null 2>&1 || \
		sh scripts/apt-install.sh rpm logrotate
