# One entry point for people and CI. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test lint format bench clean

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
	$(BIN)/ruff check musicinterp flows tasks cli tests benchmarks
	$(BIN)/ruff format --check musicinterp flows tasks cli tests benchmarks

format: setup
	$(BIN)/ruff format musicinterp flows tasks cli tests benchmarks

bench: setup
	$(BIN)/python benchmarks/capture_speed.py

clean:
	rm -rf runs .pytest_cache
