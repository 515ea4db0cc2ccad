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

.PHONY: install demo test test-fast test-nbs test-slow test-lab browser lab kernel notebooks export clean-nbs readme
.PHONY: samples bench student docs test-docs
# the Jupyter kernel the notebooks name in their metadata (tools/notebook_kernel.py), registered inside .venv
KERNEL := $(VENV)/share/jupyter/kernels/avlearn/kernel.json
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
LAB_DIR ?= nbs

install: $(STAMP) $(KERNEL)

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

# `kernel` registers "Python 3 (avlearn)" = this .venv's python (no "Select Kernel" dialog in JupyterLab) and turns on
# JupyterLab's "save widget state" so a saved notebook's widgets still draw when it is reopened (tools/lab_settings.py)
kernel: $(KERNEL)
$(KERNEL): $(STAMP) tools/lab_settings.py
	$(PY) -m ipykernel install --sys-prefix --name avlearn --display-name "Python 3 (avlearn)"
	$(PY) tools/lab_settings.py

# first light: cross-modal pretraining on the toy world, then linear probe + retrieval vs random initialisation
demo: $(STAMP)
	$(VENV)/bin/avlearn-train --config configs/demo.yaml --out runs/demo --no_resume
	$(VENV)/bin/avlearn-eval --out runs/demo

# everything: notebooks and package agree, the test suite, every notebook under nbval. It prints each notebook's run
# time and fails one over NB_BUDGET s (tools/pytest_notebooks.py); the executed notebooks land in _build/executed for
# make docs. `make test NB_BUDGET=0` only prints the times.
NB_BUDGET ?= 120
test: $(STAMP) $(KERNEL)
	time $(PY) -m pytest -q -p no:cacheprovider tests nbs --nbval-lax --durations=15 --nb-budget $(NB_BUDGET) --save-executed _build/executed

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests -x

test-nbs: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax nbs

# cells and tests flagged slow (nbdev tst_flags) run only here
test-slow: $(STAMP)
	AVLEARN_RUN_SLOW=1 $(PY) -m pytest -q -p no:cacheprovider --run-slow tests nbs --nbval-lax

# JupyterLab on http://$(LAB_IP):$(LAB_PORT) (`make lab LAB_IP=0.0.0.0 LAB_PORT=9999` in a container); as root
# (containers, cloud notebooks) it adds --allow-root; with no display it opens no browser and prints the URL to open
lab: $(STAMP) $(KERNEL)
	@token=$${LAB_TOKEN:-$$($(PY) -c 'import secrets; print(secrets.token_hex(16))')}; \
	flags="--notebook-dir=$(LAB_DIR) --ServerApp.ip=$(LAB_IP) --ServerApp.port=$(LAB_PORT) --ServerApp.port_retries=0"; \
	flags="$$flags --IdentityProvider.token=$$token --MultiKernelManager.default_kernel_name=avlearn"; \
	if [ "$$(id -u)" = 0 ]; then flags="$$flags --allow-root"; fi; \
	if [ -z "$$DISPLAY$$BROWSER" ]; then flags="$$flags --no-browser"; fi; \
	echo "JupyterLab (kernel: Python 3 (avlearn)); open in a browser:"; \
	echo "    http://$(LAB_IP):$(LAB_PORT)/lab?token=$$token"; \
	echo "(stop with Ctrl-C; another port: make lab LAB_PORT=9999)"; \
	exec env -u MPLBACKEND $(VENV)/bin/jupyter lab $$flags   # inline figures: the kernel picks its own backend

export: $(STAMP)
	$(VENV)/bin/nbdev_export
	$(VENV)/bin/nbdev_clean
	$(PY) tools/notebook_kernel.py

# every notebook names the avlearn kernel (re-run after adding or merging notebooks; tests/test_notebooks.py checks)
notebooks: $(STAMP)
	$(PY) tools/notebook_kernel.py

# JupyterLab in headless Chromium: opens a notebook with a widget, Run All, checks: no kernel dialog, no error output,
# the widget drawn as a control (tests/test_lab.py; skipped without Debian's chromium and chromium-driver: make browser).
# Not part of `make test`: it takes about a minute. selenium is setup.py's `lab` extra.
test-lab: $(STAMP) $(KERNEL)
	$(PY) -c 'import selenium' 2>/dev/null || $(PY) -m pip install -q -c constraints.txt 'selenium>=4.10'
	$(PY) -m pytest -q -p no:cacheprovider --run-lab tests/test_lab.py -rs

# Debian's Chromium and its driver for make test-lab (as root, or with sudo)
browser:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get install -y -qq chromium chromium-driver || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

# student copies of every notebook in student/: solutions (### BEGIN SOLUTION ... ### END SOLUTION) replaced by
# nbgrader's preprocessors with `raise NotImplementedError()` (tools/make_student.py; tests/test_student.py)
student: $(STAMP)
	$(PY) tools/make_student.py --out student

# the course site in _site/ (tools/build_docs.py; open _site/index.html): each notebook with the outputs of the last
# `make test` if it has not changed since, else run here (DOCS_JOBS=2 runs two at once); API pages, search, the report
docs: $(STAMP)
	time $(PY) tools/build_docs.py --out _site

# the site in headless Chromium (Debian's chromium + chromium-driver, as make test-lab; make browser installs them): the index, search and three
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
