# Two entry points: `make demo` trains NPG on CartPole-v1, `make test` runs the tests.
# Each one creates .venv on a fresh clone by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint docs notebooks bench clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m npgjax.train --env CartPole-v1 --algo npg --seeds 4 --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check npgjax tests benchmarks notebooks docs
	$(BIN)/python -m pytest -n 2 -q --doctest-modules npgjax tests

lint: $(STAMP)
	$(BIN)/ruff check .

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

notebooks: $(DOCS_STAMP)
	$(BIN)/python docs/execute_notebooks.py

docs: notebooks
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/fvp_cost.py

clean:
	rm -rf $(VENV) site runs .pytest_cache
