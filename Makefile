# `make train` and `make test` create .venv and install the project with pinned versions first.
# torch==2.13.0 is pinned here (a CPU wheel on the development machines); pyproject keeps ranges
# open so that GPU users can bring their own torch build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PINS := torch==2.13.0 hydra-core==1.3.8 omegaconf==2.3.1 wandb==0.31.0 einops==0.8.2 numpy==2.4.6 \
        tqdm==4.70.1 matplotlib==3.11.2 pytest==9.2.0 pytest-xdist==3.8.0
STAMP := $(VENV)/.installed

.PHONY: install train test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=10 $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun *.egg-info
