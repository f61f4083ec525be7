# Moorage: every target does its own set-up (system packages when root,
# then the venv), so `make run` and `make test` work on a fresh Debian box.

SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -qq: errors only (not pip's and setuptools' warnings about the build); a failure still says why.
PIP := $(PY) -m pip -qq --disable-pip-version-check
STAMP := $(VENV)/.installed
# git, curl, jq, ripgrep: CLI tools the agent reaches for (local sandboxes see the host's /usr).
APT_PACKAGES := bubblewrap socat python3-venv util-linux procps git curl jq ripgrep
PACKAGES := -e service -e container -e session-store

.PHONY: help deps test-deps venv toolbox run demo chat test test-repeat test-unit lint format bench images constraints clean

help:
	@echo "make run     the service on 127.0.0.1:8080 (SQLite + local bubblewrap sandboxes)"
	@echo "make demo    the same, against the scripted model (no API key needed)"
	@echo "make chat [SESSION=id] [AFTER=seq]   a terminal client for a running service (SESSION: reconnect to that session)"
	@echo "make test    every test (unit, integration, e2e)"
	@echo "make test-repeat [N=5] [ONE_CORE=1]   the whole suite N times in a row (on one core), stop at the first failure"
	@echo "make toolbox the local sandboxes' Python data stack (container/toolbox.txt), built once"
	@echo "make lint    ruff + mypy"
	@echo "make bench   benchmarks -> bench/results*.json"
	@echo "make images  the sandbox and service images (offline; DOCKER_HOST, else a private dockerd)"

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing   (then make again)"; exit 1; \
	  fi; \
	fi

venv: $(STAMP)

$(STAMP): service/pyproject.toml container/pyproject.toml session-store/pyproject.toml requirements-dev.txt constraints.txt
	@test -x $(SYSTEM_PYTHON) || { echo "$(SYSTEM_PYTHON) not found (apt-get install python3 python3-venv)"; exit 1; }
	@echo "setting up $(VENV) (pinned versions from constraints.txt; a minute or two the first time)"
	@$(SYSTEM_PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) install -c constraints.txt $(PACKAGES) -r requirements-dev.txt
	@touch $@

# The toolbox: a read-only venv of container/toolbox.txt (numpy, pandas, matplotlib, ...) that
# local sandboxes mount as their python3 (service/moorage/sandbox/toolbox.py). Built once per
# content (lock + Python) under TOOLBOX_ROOT, shared by every checkout; quick when it exists.
# The service venv's link to it is what MOORAGE_SANDBOX_TOOLBOX=auto (the default) finds.
TOOLBOX_LOCK := container/toolbox.txt
TOOLBOX_ROOT ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/moorage/toolbox
toolbox: deps venv
	@$(PY) -m moorage.sandbox.toolbox_build build --lock $(TOOLBOX_LOCK) --root $(TOOLBOX_ROOT) --link $(VENV)/moorage-toolbox >/dev/null

run: deps venv toolbox
	@[ -n "$$ANTHROPIC_API_KEY" ] || echo "WARNING: ANTHROPIC_API_KEY is not set; model calls will fail. 'make demo' runs against the scripted model."
	MOORAGE_ALLOW_UNRESTRICTED_NETWORK=$${MOORAGE_ALLOW_UNRESTRICTED_NETWORK:-true} $(PY) -m moorage serve

demo: deps venv toolbox
	@MOORAGE_ALLOW_UNRESTRICTED_NETWORK=$${MOORAGE_ALLOW_UNRESTRICTED_NETWORK:-true} $(PY) -m moorage demo

# SESSION=<id> reconnects to a session (the client prints its id when it quits); AFTER=0 replays it.
SESSION ?=
AFTER ?=
chat: venv
	$(PY) -m moorage chat $(if $(SESSION),--session $(SESSION)) $(if $(AFTER),--after $(AFTER))

# The browser the console's tests drive (tests/e2e/test_console.py); they skip without it.
TEST_APT_PACKAGES := chromium

test-deps: deps
	@if [ "$$(id -u)" = 0 ] && ! dpkg -s $(TEST_APT_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing: $(TEST_APT_PACKAGES)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_APT_PACKAGES) >/dev/null; \
	fi

test: test-deps venv toolbox
	$(PY) -m pytest

# The whole suite N times in a row, stopping at the first failing run (a flake
# hunt). ONE_CORE=1 pins it (and every process it starts) to CPU 0 to shake timing.
N ?= 5
ONE_CORE ?=
test-repeat: test-deps venv toolbox
	@pin=""; if [ -n "$(ONE_CORE)" ]; then pin="taskset -c 0"; fi; \
	for i in $$(seq 1 $(N)); do \
	  echo "== test-repeat: run $$i of $(N)$${pin:+ (on one core: $$pin)}"; \
	  if ! $$pin $(PY) -m pytest; then \
	    echo "== test-repeat: run $$i of $(N) FAILED"; exit 1; \
	  fi; \
	done; \
	echo "== test-repeat: all $(N) runs passed$${pin:+ (on one core)}"

test-unit: venv
	$(PY) -m pytest tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: deps venv toolbox
	$(PY) bench/bench.py
	$(PY) bench/bench_store.py
	$(PY) bench/bench_eventlog.py
	$(PY) bench/bench_rehydrate.py
	$(PY) bench/bench_replicas.py
	$(PY) bench/bench_load.py
	$(PY) bench/bench_files.py
	$(PY) bench/bench_density.py
	$(PY) bench/bench_toolbox.py --lock $(TOOLBOX_LOCK)

# Images need an engine: DOCKER_HOST if set, else a private dockerd
# (container/dockerd.sh, as root). Built offline; see container/README.md.
images: venv
	@if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; \
	  else echo "run: sudo apt-get install -y docker.io debootstrap"; exit 1; fi; \
	fi
	DOCKER_HOST=$${DOCKER_HOST:-$$(container/dockerd.sh)} container/build-images.sh all

constraints: venv
	{ echo "# Versions tested together; regenerate with 'make constraints'."; \
	  $(PY) -m pip freeze | grep -v -e '^-e' -e '^moorage'; } > constraints.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
