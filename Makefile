# tlsgate developer entry points. GNU make.
#
#   make demo    a self-contained node on this machine (creates .venv first)
#   make test    system packages + venv + lint + typecheck + pytest (what CI runs)
#   make bench   tlsgate vs HAProxy vs nginx, one table (not part of `test`)
#
# The virtualenv is (re)built only when pyproject.toml is newer than its stamp
# file, and the hot modules are recompiled with mypyc (scripts/compile.py) only
# when one of the sources changed, so repeated runs cost nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Extra arguments, e.g. `make pytest PYTEST_ARGS="-m 'not peers' -x"`.
PYTEST_ARGS ?=
BENCH_ARGS  ?=
DEMO_ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help venv compile system-deps demo test lint typecheck pytest pytest-pure bench clean distclean

help:
	@echo "make demo         run 'tlsgate demo' (builds .venv on first use)"
	@echo "make test         system-deps + venv + lint + typecheck + pytest (CI)"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make typecheck    mypy (strict; configured in pyproject.toml)"
	@echo "make pytest       the test suite (PYTEST_ARGS=...)"
	@echo "make bench        tlsgate vs HAProxy vs nginx benchmark table (BENCH_ARGS=--quick ...)"
	@echo "make system-deps  install the Debian packages tests and benchmarks use"
	@echo "make venv         create .venv and install tlsgate[dev] (editable)"
	@echo "make compile      compile the hot modules with mypyc (falls back to pure Python)"
	@echo "make clean        remove caches and build output; distclean also removes .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(None if v == (3, 11) else f"tlsgate needs Python 3.11, $(PYTHON) is {v[0]}.{v[1]}: use make PYTHON=python3.11 ...")'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash scripts/install-system-deps.sh --python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# The modules scripts/compile.py compiles; the stamp is rebuilt when one changes.
COMPILED_SOURCES := $(shell sed -n 's/^    "\(tlsgate\/.*\.py\)",$$/src\/\1/p' scripts/compile.py)
COMPILE_STAMP    := $(VENV)/.compiled

compile: $(COMPILE_STAMP)

$(COMPILE_STAMP): $(STAMP) scripts/compile.py $(COMPILED_SOURCES)
	$(BIN)/python scripts/compile.py
	@touch $@

system-deps:
	bash scripts/install-system-deps.sh

demo: venv compile
	$(BIN)/tlsgate demo $(DEMO_ARGS)

# Prerequisites run left to right (no -j in CI); the first failure stops the run.
# The unit tier runs twice: on the compiled modules and on their pure-Python sources.
test: system-deps venv lint typecheck compile pytest pytest-pure

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv compile
	$(BIN)/pytest $(PYTEST_ARGS)

pytest-pure: venv
	TLSGATE_PURE=1 $(BIN)/pytest -q tests/unit

# A few minutes; BENCH_ARGS="--quick" for a smoke run, "--help" for the options.
bench: system-deps venv compile
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage build dist $(COMPILE_STAMP)
	$(PYTHON) scripts/compile.py --clean
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) src/*.egg-info
