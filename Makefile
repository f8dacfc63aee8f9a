# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnlab-installed
# The versions the suite last passed with: a fresh install months from now gets a tested set.
CONSTRAINTS := constraints.txt
CONSTRAINTS_HEADER := \# The versions the full test suite last passed with (make constraints); make setup installs them.

.PHONY: setup run test test-fast lint format bench constraints clean

setup: $(STAMP)

# Every extra the tests exercise (export, postgres, timm, test), pinned by the constraints file.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[all]'
	touch $(STAMP)

run: setup
	$(BIN)/cnnlab app

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

# The edit loop: no browser, no slow crash/fuzz/leak/packaging tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not e2e and not slow"

bench: setup
	$(BIN)/python benchmarks/bench_train.py

# After a green `make test` with newer packages: record them as the tested set.
constraints: setup
	{ echo "$(CONSTRAINTS_HEADER)"; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^cnnlab'; } > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
