# The two commands the README opens with.  Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint perf clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: lint
	RUNTIME_VALIDATE=1 $(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check runtime tests perf examples
	$(PY) -m ruff format --check runtime tests perf examples

# Benchmarks against Dask and Ray (installed into .venv only for this target).
$(VENV)/.perf-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,perf]'
	touch $@

perf: $(VENV)/.perf-installed
	$(PY) perf/bench_tasks.py
	$(PY) perf/bench_objects.py
	$(PY) perf/bench_actors.py
	$(PY) perf/bench_scheduler.py
	$(PY) perf/bench_local.py
	$(PY) perf/bench_client.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
