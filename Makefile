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

.PHONY: install demo test test-fast test-nbs test-slow lab export clean-nbs readme samples bench student docs test-docs

install: $(STAMP)

$(STAMP): settings.ini setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins torch 2.11.0 + torchaudio 2.11.0 + torchvision 0.26.0 together (torchaudio needs its exact torch)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -c "import torch, torchaudio, av, avlearn; print('installed avlearn', avlearn.__version__, 'torch', torch.__version__)"
	# nbgrader is here for its preprocessors only (make student): its JupyterLab and server extensions stay off
	$(VENV)/bin/jupyter server extension disable --sys-prefix nbgrader.server_extensions.{formgrader,validate_assignment,assignment_list,course_list} >/dev/null 2>&1 || true
	$(VENV)/bin/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1 || true
	touch $(STAMP)

# first light: cross-modal pretraining on the toy world, then linear probe + retrieval vs random initialisation
demo: $(STAMP)
	$(VENV)/bin/avlearn-train --config configs/demo.yaml --out runs/demo --no_resume
	$(VENV)/bin/avlearn-eval --out runs/demo

# everything: notebooks and package agree, the test suite, every notebook under nbval. It prints each notebook's run
# time and fails one over NB_BUDGET s (tools/pytest_notebooks.py); the executed notebooks land in _build/executed for
# make docs. `make test NB_BUDGET=0` only prints the times.
NB_BUDGET ?= 120
test: $(STAMP)
	time $(PY) -m pytest -q -p no:cacheprovider tests nbs --nbval-lax --durations=15 --nb-budget $(NB_BUDGET) --save-executed _build/executed

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

# student copies of every notebook in student/: solutions (### BEGIN SOLUTION ... ### END SOLUTION) replaced by
# nbgrader's preprocessors with `raise NotImplementedError()` (tools/make_student.py; tests/test_student.py)
student: $(STAMP)
	$(PY) tools/make_student.py --out student

# the course site in _site/ (tools/build_docs.py; open _site/index.html): each notebook with the outputs of the last
# `make test` if it has not changed since, else run here (DOCS_JOBS=2 runs two at once); API pages, search, the report
docs: $(STAMP)
	time $(PY) tools/build_docs.py --out _site

# the site in headless Chromium (Debian's chromium + chromium-driver, as make test-lab): the index, search and three
# notebook pages: equations typeset, plots drawn, no script error; screenshots in _build/screenshots/
test-docs: $(STAMP)
	$(PY) -c 'import selenium' 2>/dev/null || $(PY) -m pip install -q -c constraints.txt 'selenium>=4.10'
	AVLEARN_TEST_DOCS=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_docs.py -rs

# README.md is rendered from nbs/index.ipynb with nbconvert (quarto, which nbdev_readme needs, is not installable here)
readme: $(STAMP)
	$(PY) tools/render_readme.py

samples: $(STAMP)
	$(VENV)/bin/avlearn-toyworld --out data_samples --n 24 --seed 0 --force

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
