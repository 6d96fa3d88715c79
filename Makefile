# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast results bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	bash scripts/setup.sh $(VENV)

demo: setup
	$(BIN)/wbc predict src/wbc/assets/samples

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

results: setup
	bash scripts/results.sh && $(BIN)/python scripts/results_md.py

bench: setup
	$(BIN)/python bench/run_all.py
