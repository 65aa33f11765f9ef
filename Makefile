# afterwork — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install check test chaos soak demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make check: formatting, lint, strict typing, and the public API's type completeness
check: install
	$(VENV)/bin/ruff format --check src tests examples bench
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/mypy
	bash scripts/verifytypes

## make test: the whole suite (installs the servers and browser it needs first)
test: install
	bash scripts/install-system-deps
	bash scripts/test $(PYTEST_ARGS)

## make chaos: every chaos test, the fleet tier too (several processes at once, SIGKILLs, failovers)
chaos: install
	bash scripts/install-system-deps
	$(PY) -m pytest -m "chaos or fleet" --fleet $(PYTEST_ARGS)

## make soak: the long load proofs only (the soak tier: a minute or more each)
soak: install
	bash scripts/install-system-deps
	$(PY) -m pytest -m soak --soak $(PYTEST_ARGS)

## make demo: the example app on the embedded default store
demo: install
	bash scripts/demo

bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
