# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The first use of any target creates .venv and installs the pinned environment (constraints.txt).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

.PHONY: install demo test test-fast test-nbs test-slow lab export clean-nbs readme samples bench

install: $(STAMP)

$(STAMP): settings.ini setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch 2.11.0 + torchaudio 2.11.0 + torchvision 0.26.0 together (torchaudio needs its exact torch)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -c "import torch, torchaudio, av, avlearn; print('installed avlearn', avlearn.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# first light: cross-modal pretraining on the toy world, then linear probe + retrieval vs random initialisation
demo: $(STAMP)
	$(VENV)/bin/avlearn-train --config configs/demo.yaml --out runs/demo --no_resume
	$(VENV)/bin/avlearn-eval --out runs/demo

# everything: notebooks and package agree, the test suite, every notebook under nbval
test: $(STAMP)
	time $(PY) -m pytest -q -p no:cacheprovider tests nbs --nbval-lax --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests -x

test-nbs: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax nbs

# cells and tests flagged slow (nbdev tst_flags) run only here
test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --run-slow tests nbs --nbval-lax

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=nbs

export: $(STAMP)
	$(VENV)/bin/nbdev_export
	$(VENV)/bin/nbdev_clean

# README.md is rendered from nbs/index.ipynb with nbconvert (quarto, which nbdev_readme needs, is not installable here)
readme: $(STAMP)
	$(PY) tools/render_readme.py

samples: $(STAMP)
	$(VENV)/bin/avlearn-toyworld --out data_samples --n 24 --seed 0 --force

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
