# Two entry points that work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
FM := $(VENV)/bin/fm

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test bench browser
setup: $(VENV)/.installed

# The browser tests drive Debian's Chromium (never a downloaded one). As root
# on a machine without it, install it; elsewhere those tests say what is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || true

# The main job: run the quickstart headless with the flowmetal kernel, then
# print the steps it recorded in notebooks/.flowmetal/01-quickstart.ipynb.duckdb.
demo: setup
	mkdir -p build
	$(FM) run notebooks/01-quickstart.ipynb -o build/01-quickstart.out.ipynb
	$(FM) log --history notebooks/01-quickstart.ipynb

# Tiers run in order (unit, kernel, faults, browser; see tests/conftest.py);
# `$(PY) -m pytest -m unit` is the in-process tier alone, in seconds.
test: setup browser
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

bench: setup
	$(PY) bench/cell_overhead.py
