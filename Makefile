# Two commands on a fresh machine:  make demo   |   make test
# GPU users: install your CUDA torch into .venv first, or pass TORCH="torch==<your version>".
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/janus: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/janus

.PHONY: setup demo test lint bench
setup: $(BIN)/janus

demo: setup
	$(BIN)/janus demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_synth.py
