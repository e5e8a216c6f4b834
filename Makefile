# The two commands the README opens with.  Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint perf clean browser bytecode

# The state machine's modules compiled by mypyc (runtime/scheduler/compiled.py's MODULES):
# an edit to one of them rebuilds, so the tests run what the sources say (compiled).
COMPILED := $(foreach m,entities state placement order clients,runtime/scheduler/$(m).py)
STATE_TESTS := $(wildcard tests/test_state*.py) tests/test_extensions_state.py tests/test_memory_state.py \
	tests/test_compiled.py

$(VENV)/.installed: pyproject.toml setup.py $(COMPILED)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@$(PY) -c "from runtime.scheduler import compiled as c; print('runtime: the state machine runs', c.running(), '-', c.BUILD)"
	touch $@

# The package's bytecode, written here: where PYTHONDONTWRITEBYTECODE is set (as in many
# containers, and on this project's CI machine) Python never writes it, and every process a
# cluster starts compiled the runtime's modules again (~60 ms of CPU each, a third of a local
# cluster's start-up).  A wheel install does this itself; compileall redoes only what changed.
bytecode: $(VENV)/.installed
	@$(PY) -m compileall -q runtime

demo: bytecode
	$(PY) examples/quickstart.py

# The whole suite on the compiled state machine, then the state machine's own tests on its
# plain Python sources (what runs where no C compiler is).
test: lint bytecode
	RUNTIME_VALIDATE=1 $(PY) -m pytest
	RUNTIME_VALIDATE=1 RUNTIME_PURE_PYTHON=1 $(PY) -m pytest -q $(STATE_TESTS)

# Headless Chromium for the dashboard's browser test (tests/test_dashboard.py skips without it).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install chromium; the dashboard's browser test will be skipped"

lint: $(VENV)/.installed
	$(PY) -m ruff check runtime tests perf examples setup.py
	$(PY) -m ruff format --check runtime tests perf examples setup.py

# Benchmarks against Dask and Ray (installed into .venv only for this target).
$(VENV)/.perf-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,perf]'
	touch $@

perf: $(VENV)/.perf-installed bytecode
	$(PY) perf/bench_tasks.py
	$(PY) perf/bench_objects.py
	$(PY) perf/bench_actors.py
	$(PY) perf/bench_scheduler.py
	$(PY) perf/bench_local.py
	$(PY) perf/bench_client.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	rm -f runtime/scheduler/*.so runtime/scheduler/_compiled.json
