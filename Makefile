# One entry point for people and CI. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
PY_DIRS := musicinterp flows tasks cli tests benchmarks scripts

.PHONY: setup demo test lint typecheck format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an open range with no torch installed would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/musicinterp run configs/demo.yaml --out runs

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: setup
	$(BIN)/mypy  # what and how: [tool.mypy] in pyproject.toml

format: setup
	$(BIN)/ruff format $(PY_DIRS)

bench: setup
	$(BIN)/python benchmarks/capture.py

clean:
	rm -rf runs .pytest_cache .mypy_cache
