# make demo  : set up everything, then cluster the sample photos with the embedded engine
# make test  : set up everything, then run the whole test suite
# make bench : the benchmarks of bench/ (prints ratios against reference runs; starts the dev Hadoop)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt bin/setup-system
	bin/setup-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

demo: setup
	bin/demo

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) bench/bench_core.py
	$(PY) bench/bench_dither.py
	$(PY) bench/bench_dag.py
	$(PY) bench/bench_scheduler.py
	bin/hadoop-dev up
	$(PY) bench/bench_hadoop.py
	$(PY) bench/bench_palette.py
	$(PY) bench/bench_ledger.py

clean:
	rm -rf demo-output .pytest_cache
