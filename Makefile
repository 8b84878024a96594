# latentgen — set-up, tests, benchmarks. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROMPT ?= a cat wearing a hat
STAMP  := $(VENV)/.installed

.PHONY: install run test test-all lint format bench train-builtin train-builtin-release10 clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-torch
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	scripts/install-torch $(BIN)/pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

run: install  ## generate one image with the built-in model: make run PROMPT="a red circle"
	$(BIN)/latentgen generate "$(PROMPT)" --out outputs

test: install  ## the fast test suite (what CI runs)
	$(BIN)/pytest -q

test-all: install  ## including slow tests (training, full evaluation)
	$(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install  ## speed against diffusers' own pipeline; results in benchmarks/
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_batch.py

train-builtin: install  ## train the built-in model from nothing (about 6 h on 2 cores; resumable)
	scripts/train-builtin

train-builtin-release10: install  ## the shipped release 10's longer recipe (about 16 h; resumable)
	scripts/train-builtin-release10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
