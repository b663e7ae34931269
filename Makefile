# Each target bootstraps .venv with pip if it is missing. Dev/CI pin torch; pyproject declares ranges.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxtl-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist), each test file on one worker so its module fixtures are built once. Compiling
# is mostly single-threaded, so two workers keep both cores of a small CI machine busy. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: install demo demo-readme test lint format bench gpu-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[torch,dev]" $(TORCH_PINS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxtl demo --out demo_out

# The demo's table in README.md, regenerated from a demo run's results.json (kept in benchmarks/results/demo/).
demo-readme: $(STAMP)
	$(VENV)/bin/jaxtl demo --out benchmarks/results/demo
	$(PY) -m benchmarks.report --demo benchmarks/results/demo/results.json --write README.md

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxtl bridge tests benchmarks
	$(VENV)/bin/ruff format --check jaxtl bridge tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format jaxtl bridge tests benchmarks
	$(VENV)/bin/ruff check --fix jaxtl bridge tests benchmarks

test: lint
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Every CPU benchmark side by side with PyTorch, then the README table regenerated from the JSON results.
bench: $(STAMP)
	$(PY) -m benchmarks.run_all --write README.md

# The wheels the one GPU run installs on the GPU machine (README, section GPU): jaxtl built from this checkout and
# cp312 grain, array_record, portpicker, into the git-ignored .whl/.
gpu-wheels: $(STAMP)
	$(PY) -m benchmarks.gpu_wheels

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache .mypy_cache .ruff_cache
