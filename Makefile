# `make train` and `make test` create .venv and install the project with pinned versions first.
# torch==2.13.0 is pinned here (a CPU wheel on the development machines); pyproject keeps ranges
# open so that GPU users can bring their own torch build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PINS := torch==2.13.0 hydra-core==1.3.8 omegaconf==2.3.1 wandb==0.31.0 einops==0.8.2 numpy==2.4.6 \
        tqdm==4.70.1 matplotlib==3.11.2 pytest==9.2.0 pytest-xdist==3.8.0 \
        hydra-submitit-launcher==1.2.0 submitit==1.5.4 \
        hydra-joblib-launcher==1.2.0 joblib==1.6.0 hydra-optuna-sweeper==1.3.0 optuna==2.10.1 \
        ruff==0.17.6 import-linter==2.17
STAMP := $(VENV)/.installed
# uv installs them (it fetches, unpacks and compiles bytecode in parallel): on a fresh 2-core machine the
# pins and the project took 36-39 s, where pip took 79 s (docs/performance.md). uv reads no pip
# configuration: where pip is told to look for wheels on the machine's disk (find-links in any section
# of pip.conf or PIP_FIND_LINKS, as `pip config list` shows them: torch's CPU wheel on the development
# machines), uv is told too. The shell asks .venv's pip when the line runs: make expands a recipe's
# lines before it runs the first, when a fresh clone has no .venv yet (and uv took PyPI's CUDA torch)
UV_PIN := uv==0.13.8
UV := $(VENV)/bin/uv
FIND_LINKS = $$($(PY) -m pip config list 2>/dev/null | sed -n "s/^[^ ]*\.find-links='\(.*\)'$$/\1/p" \
             | tr ' ' '\n' | sort -u | grep . | sed 's/^/--find-links /')
UV_INSTALL = $(UV) pip install --quiet --python $(PY) $(FIND_LINKS)
# the interp extra (TransformerLens, for grok.to_hooked_transformer): the tests need it, a run does not.
# Installed without compiling bytecode up front (its 28 packages: 6,000 modules, 2,900 of them
# transformers'), for tests/test_interp.py alone, which imports a part of them: 2-7 s more for it, once
# where Python caches bytecode, every run where PYTHONDONTWRITEBYTECODE is set
INTERP_PINS := transformer-lens==3.9.0
INTERP := $(VENV)/.interp
# what ruff lints and formats
SOURCES := grok tests benchmarks hydra_plugins docs/examples train.py sweep.py

.PHONY: help install train test lint format reproduce bench gpu-check clean

help:  ## this list of targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "  make %-10s %s\n", $$1, $$2 }'

install: $(STAMP)  ## the virtual environment .venv, pinned versions, the project in editable mode

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(UV_PIN)
	$(UV_INSTALL) --compile-bytecode $(PINS) -e ".[test]"
	touch $@

$(INTERP): $(STAMP)
	$(UV_INSTALL) $(INTERP_PINS)
	touch $@

train: $(STAMP)  ## the default experiment (ARGS="task=divide train_frac=0.1" for another)
	$(PY) train.py $(ARGS)

# The float-sensitive tests again under other kernels of this CPU: generic ATen code, AVX2, MKL's
# portable path. Another CPU rounds as one of these might: a tolerance that holds for one CPU's
# rounding only fails here, not first in CI. Each kernel is a worker of one pytest (--dist each: every
# test on every worker, gw0, gw1, gw2 in KERNELS' order). Any failure fails the target, "no tests ran" (5) too.
KERNELS := ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE
# only the files that hold such tests are collected: each worker imports what it collects
FLOAT_SENSITIVE := $(shell grep -l float_sensitive tests/test_*.py)

test: $(STAMP) $(INTERP) lint  ## lint, layering, the test suite, then the float-sensitive tests under other CPU kernels
	$(PY) -m pytest -n 2 --dist loadfile --durations=10 $(ARGS)
	@echo "float-sensitive tests under other kernels: gw0, gw1, gw2 = $(KERNELS)"
	$(PY) -m pytest -q -m float_sensitive --dist each $(foreach kernel,$(KERNELS),--tx popen//env:$(kernel)) $(FLOAT_SENSITIVE)

# ruff's lint and format check, and the layering of grok/ as import-linter contracts (pyproject.toml):
# a new import cycle or an upward import fails here, and so in CI
lint: $(STAMP)  ## ruff (lint, format check) and import-linter (the layering of grok/)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/lint-imports

format: $(STAMP)  ## ruff format and ruff's safe fixes, in place
	$(VENV)/bin/ruff check --fix $(SOURCES)
	$(VENV)/bin/ruff format $(SOURCES)

# a result of the literature, run and reported (docs/results.md): NAME a named sweep or a preset
reproduce: $(STAMP)  ## NAME=power2022_small (docs/results.md): a result of the literature, its table and figures
	$(PY) sweep.py reproduce $(NAME) $(ARGS)

# epochs/s of the harness against benchmarks/reference.py, measured in one run (docs/performance.md)
bench: $(STAMP)  ## speed against the reference implementation, in one run; writes bench.json
	$(PY) benchmarks/bench.py $(ARGS)

# On a machine with a GPU: the CUDA cases of the tests that run on every device (marker gpu, tests/conftest.py),
# then make bench's figures on the GPU: the default experiment, p=113, compile=true (CUDA graphs) through the
# model's own forward (a GPU's default) and through the tables (tables=true), runs trained together (K = 1, 8,
# 64) against one after another, with peak memory; and a whole compile=true run of the default experiment to
# grokking, its time to grok. Without CUDA: says so, and passes.
GPU_BENCH := --device cuda --experiment "" --experiment "task.p=113" --experiment "compile=true" \
	--experiment "compile=true tables=true" --skip-load --grok --grok-with "compile=true"

gpu-check: $(STAMP) $(INTERP)  ## on a GPU machine: the tests on CUDA, then the GPU's make bench figures
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m pytest -m gpu -q -rs && $(PY) benchmarks/bench.py $(GPU_BENCH) $(ARGS); \
	elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then \
		echo "make gpu-check: this machine has a GPU (nvidia-smi) but .venv's PyTorch sees none: install a CUDA build of torch"; \
		exit 1; \
	else \
		echo "make gpu-check: skipped: PyTorch sees no CUDA device here (torch.cuda.is_available() is False)"; \
	fi

clean:  ## remove .venv, outputs and build files
	rm -rf $(VENV) outputs multirun *.egg-info
