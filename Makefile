# make demo  : set up everything, then cluster the sample photos with the embedded engine
# make test  : set up everything, then run the whole test suite
# make bench : the benchmarks of bench/ (prints ratios against reference runs; starts the dev Hadoop)
# make docs  : the docs site (MkDocs + Material, docs/ and mkdocs.yml) built into site/, warnings as errors
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The docs tools live in their own venv (pins: docs/requirements.txt), apart from the project's.
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed

.PHONY: setup demo test bench clean docs docs-venv docs-serve docs-screenshot

setup: $(STAMP)

# The pinned requirements, then the checkout itself as a package, editable (pyproject.toml): the
# console script kmeans-colours, and the Airflow plugin and provider found through their entry points.
$(STAMP): requirements.txt constraints.txt pyproject.toml bin/setup-system
	bin/setup-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# The editable build leaves kmeans_colours.egg-info in the checkout: with the checkout on
	# sys.path (bin/airflow's PYTHONPATH) it is a second copy of the distribution, whose
	# airflow.plugins entry point registers the plugin again ("Plugin 'kmeans' already
	# registered"). The installed metadata is the .dist-info in the venv.
	rm -rf kmeans_colours.egg-info
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

# The reference pages (CLI, DAG params, settings) are generated from the code at build time by
# docs/gen_reference.py, an MkDocs hook: nothing generated is committed. --strict: any warning
# (a broken link or anchor, a page missing from the nav or a nav entry to no page) fails the build.
# NO_MKDOCS_2_WARNING: Material's banner about its end of life (docs/requirements.txt notes it).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --clean --site-dir site

docs-venv: $(DOCS_STAMP)

$(DOCS_STAMP): docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet --upgrade pip==25.3
	$(DOCS_VENV)/bin/python -m pip install --quiet -r docs/requirements.txt
	touch $(DOCS_STAMP)

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs serve --strict

# The report pictures of docs/images/, from the reports `make demo` publishes.
docs-screenshot: setup
	test -e demo-output/results/latest/report.html || bin/demo
	$(PY) docs/screenshot.py

clean:
	rm -rf demo-output .pytest_cache site
