# Two set-up-and-go commands (README.md): `make demo` and `make test`. Both create .venv/ if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lab notebooks benchmark assignments grade clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[lab,dev,hf]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py --out out

test: $(STAMP)
	$(PY) -m pytest -q

notebooks: $(STAMP)
	$(VENV)/bin/jupytext --to notebook --update lessons/[0-9]*.py

lab: notebooks
	$(VENV)/bin/jupyter lab lessons/

benchmark: $(STAMP)
	$(PY) -m benchmarks.optimizer_step

# Student notebooks (stubs, no hidden tests) under build/assignments/, instructor versions in its solutions/.
assignments: $(STAMP)
	$(PY) -m lessons.assignments.build --out build/assignments

# Grade a folder of submitted notebooks into one CSV: make grade SUBMISSIONS=path/to/folder
SUBMISSIONS ?= submissions
grade: $(STAMP)
	$(PY) -m lessons.grade $(SUBMISSIONS) --csv grades.csv

clean:
	rm -rf $(VENV) out build .pytest_cache .hypothesis lessons/*.ipynb
