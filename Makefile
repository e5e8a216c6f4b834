# The two commands the README opens with.  Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint perf clean browser

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: lint
	RUNTIME_VALIDATE=1 $(PY) -m pytest

# Headless Chromium for the dashboard's browser test (tests/test_dashboard.py skips without it).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install chromium; the dashboard's browser test will be skipped"

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
