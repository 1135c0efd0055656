# tlsgate developer entry points. GNU make.
#
#   make demo    a self-contained node on this machine (creates .venv first)
#   make test    system packages + venv + lint + typecheck + pytest (what CI runs),
#                then the unit tier and a smoke test on the other supported Pythons
#   make bench   tlsgate vs HAProxy vs nginx, one table (not part of `test`)
#
# The virtualenv is (re)built only when pyproject.toml is newer than its stamp
# file, and the hot modules are recompiled with mypyc (scripts/compile.py) only
# when one of the sources changed, so repeated runs cost nothing.
#
# Python 3.11 to 3.13 are supported. PYTHON (the default interpreter) builds .venv and
# runs everything; `make test-other-pythons` then gives each other supported version
# found on the machine (python3.N on PATH, or pyenv's) its own .venv-3.N, rebuilt only
# when pyproject.toml changes, and runs the unit tier and tests/smoke there.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Extra arguments, e.g. `make pytest PYTEST_ARGS="-m 'not peers' -x"`.
PYTEST_ARGS ?=
BENCH_ARGS  ?=
FUZZ_ARGS   ?=
ATTACK_ARGS ?=
SOAK_ARGS   ?=
DEMO_ARGS   ?=
# How many other Pythons test-other-pythons tests at once (1: one after another). Two
# side by side take ~90 s on two cores, one after the other ~130 s: the 15-minute budget
# of `make test` (the main suite alone is ~10 minutes) has room for the former.
OTHER_PYTHONS_JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv compile system-deps demo test lint typecheck pytest pytest-pure \
        test-other-pythons fuzz bench attack soak tls-grade clean distclean

help:
	@echo "make demo         run 'tlsgate demo' (builds .venv on first use)"
	@echo "make test         system-deps + venv + lint + typecheck + pytest + other Pythons (CI)"
	@echo "make lint         ruff check + ruff format --check"
	@echo "make typecheck    mypy (strict; configured in pyproject.toml)"
	@echo "make pytest       the test suite (PYTEST_ARGS=...)"
	@echo "make test-other-pythons  unit tier + smoke test on each other supported Python found"
	@echo "make bench        tlsgate vs HAProxy vs nginx benchmark table (BENCH_ARGS=--quick ...)"
	@echo "make fuzz         fuzz every parser, ~10 min (FUZZ_ARGS=\"--seconds 30 http1\" ...)"
	@echo "make attack       slow and resource attacks vs HAProxy, ~10 min (ATTACK_ARGS=--quick ...)"
	@echo "make soak         30 min of mixed traffic with reloads and swaps (SOAK_ARGS=--quick: 3 min)"
	@echo "make tls-grade    testssl.sh against a default https listener"
	@echo "make system-deps  install the Debian packages tests and benchmarks use"
	@echo "make venv         create .venv and install tlsgate[dev] (editable)"
	@echo "make compile      compile the hot modules with mypyc (falls back to pure Python)"
	@echo "make clean        remove caches, build output and .venv-3.N; distclean also .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(None if (3, 11) <= v <= (3, 13) else f"tlsgate needs Python 3.11 to 3.13, $(PYTHON) is {v[0]}.{v[1]}: use make PYTHON=python3.13 ...")'
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
# The unit tier runs twice: on the compiled modules and on their pure-Python sources;
# then once more, with tests/smoke, on every other supported Python on the machine. Those
# last two run side by side (a minute saved on two cores), their output kept apart (-O).
test: system-deps venv lint typecheck compile pytest
	$(MAKE) --no-print-directory -j2 -O pytest-pure test-other-pythons

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

# A version that is not installed is reported as skipped; PYTHON_3_12=/path/to/python3.12
# (and so on) names an interpreter by hand. See scripts/other_pythons.py.
test-other-pythons:
	$(PYTHON) scripts/other_pythons.py --jobs $(OTHER_PYTHONS_JOBS)

# A few minutes; BENCH_ARGS="--quick" for a smoke run, "--help" for the options.
bench: system-deps venv compile
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Coverage-guided fuzzing of every parser (fuzz/README.md): a fixed budget, ~10 minutes
# with 2 jobs; pure Python (atheris instruments bytecode), so no compile step.
fuzz: venv
	$(BIN)/python fuzz/run.py $(FUZZ_ARGS)

# Good clients measured while each attack runs, tlsgate and HAProxy side by side
# (bench/attack.py --help); bounded in time, not part of `test`.
attack: system-deps venv compile
	$(BIN)/python bench/attack.py $(ATTACK_ARGS)

# Mixed traffic with a reload and a certificate swap every minute; RSS and fds sampled
# (bench/soak.py --help). 30 minutes by default, SOAK_ARGS=--quick for 3.
soak: system-deps venv compile
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# testssl.sh against a default https listener; fails on a MEDIUM or worse finding
# that is tlsgate's (scripts/tls_grade.py --help).
tls-grade: system-deps venv
	$(BIN)/python scripts/tls_grade.py

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage build dist $(COMPILE_STAMP)
	rm -rf .venv-3.* .venv-3.*.build.log fuzz/.work fuzz/crashes
	$(PYTHON) scripts/compile.py --clean
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) src/*.egg-info
