# Two entry points: `make demo` trains NPG on CartPole-v1, `make test` runs the tests.
# Each one creates .venv on a fresh clone by itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint docs notebooks bench clean venv install-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m npgjax.train --env CartPole-v1 --algo npg --seeds 4 --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check npgjax tests benchmarks notebooks docs .ci
	$(BIN)/python -m pytest -n 2 -q --durations=15 --doctest-modules npgjax tests

lint: $(STAMP)
	$(BIN)/ruff check .

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

notebooks: $(DOCS_STAMP)
	$(BIN)/python docs/execute_notebooks.py

docs: notebooks
	$(BIN)/mkdocs build --strict

# Build a wheel, install it without extras in a fresh venv (build/install-check), and check
# that it ships LICENSE and py.typed, pulls no gymnax/flax/matplotlib, and imports and steps.
CHECK_VENV := build/install-check
install-check:
	rm -rf $(CHECK_VENV)
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECK_VENV)/bin/python -m pip wheel --quiet --no-deps -w $(CHECK_VENV)/dist .
	$(CHECK_VENV)/bin/python -m pip install --quiet $(CHECK_VENV)/dist/npgjax-*.whl
	cd $(CHECK_VENV) && bin/python $(CURDIR)/.ci/check_core_install.py dist/npgjax-*.whl

bench: $(STAMP)
	$(BIN)/python benchmarks/fvp_cost.py

clean:
	rm -rf $(VENV) site runs .pytest_cache build
