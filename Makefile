# tlsgate developer entry points. GNU make.
#
#   make demo    a self-contained node on this machine (creates .venv first)
#   make test    system packages + venv + lint + typecheck + pytest (what CI runs)
#   make bench   HTTPS keep-alive throughput: tlsgate vs HAProxy (not part of `test`)
#
# The virtualenv is (re)built only when pyproject.toml is newer than its stamp
# file, so repeated runs cost nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Extra arguments, e.g. `make pytest PYTEST_ARGS="-m 'not peers' -x"`.
PYTEST_ARGS ?=
BENCH_ARGS  ?=
DEMO_ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help venv system-deps demo test lint typecheck pytest bench clean distclean

help:
	@echo "make demo         run 'tlsgate demo' (builds .venv on first use)"
	@echo "make test         system-deps + venv + lint + typecheck + pytest (CI)"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make typecheck    mypy (strict; configured in pyproject.toml)"
	@echo "make pytest       the test suite (PYTEST_ARGS=...)"
	@echo "make bench        tlsgate vs HAProxy HTTPS benchmark (BENCH_ARGS=...)"
	@echo "make system-deps  install the Debian packages tests and benchmarks use"
	@echo "make venv         create .venv and install tlsgate[dev] (editable)"
	@echo "make clean        remove caches and build output; distclean also removes .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(None if v == (3, 11) else f"tlsgate needs Python 3.11, $(PYTHON) is {v[0]}.{v[1]}: use make PYTHON=python3.11 ...")'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash scripts/install-system-deps.sh --python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

system-deps:
	bash scripts/install-system-deps.sh

demo: venv
	$(BIN)/tlsgate demo $(DEMO_ARGS)

# Prerequisites run left to right (no -j in CI); the first failure stops the run.
test: system-deps venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

bench: system-deps venv
	$(BIN)/python bench/bench_https.py $(BENCH_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage build dist
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) src/*.egg-info
