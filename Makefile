# Two entry points: `make demo` (train a Chichewa student, evaluate, write runs/demo) and `make test`.
# Each creates .venv and installs what it needs. torch is pinned to the CPU wheel first: a bare `torch`
# requirement on a machine without torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	touch $@

# the demo needs only its models and data; the tests (and lint, benchmarks) everything
$(VENV)/.installed-demo: setup.cfg pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.installed: setup.cfg pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed-demo

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(PY) examples/demo.py --output-dir runs/demo

# CI runs this (.ci/run): the whole suite, with the ten slowest tests listed
test: install
	$(PY) -m pytest -q --durations=10 tests

# the local loop: everything but the multi-process and end-to-end runs
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# ruff, then the import-linter contracts in setup.cfg (one direction of dependencies)
lint: install
	$(VENV)/bin/ruff check optical_st tests examples benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/ot_kernel.py

clean:
	rm -rf $(VENV) runs build *.egg-info
