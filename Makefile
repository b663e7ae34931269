# Each target bootstraps .venv with pip if it is missing. Dev/CI pin torch; pyproject declares ranges.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxtl-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[torch,dev]" $(TORCH_PINS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxtl demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxtl bridge tests benchmarks
	$(VENV)/bin/ruff format --check jaxtl bridge tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format jaxtl bridge tests benchmarks
	$(VENV)/bin/ruff check --fix jaxtl bridge tests benchmarks

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.train_steps
	$(PY) -m benchmarks.report

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache .mypy_cache .ruff_cache
