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
        hydra-joblib-launcher==1.2.0 joblib==1.6.0 hydra-optuna-sweeper==1.3.0 optuna==2.10.1
STAMP := $(VENV)/.installed

.PHONY: install train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

train: $(STAMP)
	$(PY) train.py $(ARGS)

# The float-sensitive tests again under other kernels of this CPU: generic ATen code, AVX2, MKL's
# portable path. Another CPU rounds as one of these might: a tolerance that holds for one CPU's
# rounding only fails here, not first in CI. Any failure fails the target, "no tests ran" (5) too.
KERNELS := ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --durations=10 $(ARGS)
	for kernel in $(KERNELS); do \
		echo "float-sensitive tests under $$kernel"; \
		env $$kernel $(PY) -m pytest -n 2 --dist loadfile -q -m float_sensitive || exit 1; \
	done

# epochs/s of the harness against benchmarks/reference.py, measured in one run (README "Performance")
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun *.egg-info
