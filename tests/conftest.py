"""Shared fixtures: one embedded cluster per test module, with the scheduler validating.

The scheduler validates every transition in these tests (RUNTIME_VALIDATE=1), so an
invalid state fails the run in the scheduler's log and the task never completes.  And
every test that ends while a cluster fixture runs (``validated``) fails if that cluster's
scheduler ever raised, or its state is invalid then (the ``validate`` request).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

os.environ.setdefault("RUNTIME_VALIDATE", "1")
os.environ.setdefault("RUNTIME_CONFIG", os.devnull)  # no config file of the user running the tests

import runtime as rt  # noqa: E402

_T = TypeVar("_T")
#: the clients of the clusters fixtures are running now, whose schedulers each test validates
_running: list[Any] = []


@contextlib.contextmanager
def validated(client: _T) -> Iterator[_T]:
    """While the block runs, each test ends by asking the scheduler ``client`` talks to
    whether its state is valid (and failing with what is wrong if not)."""
    _running.append(client)
    try:
        yield client
    finally:
        _running.remove(client)


@pytest.fixture(autouse=True)
def _scheduler_valid_when_the_test_ends() -> Iterator[None]:
    yield
    for client in list(_running):
        error = client.request("validate")
        if error is not None:
            pytest.fail(f"the scheduler's state is invalid at the end of the test: {error['error']}", pytrace=False)


def wait_until(condition: Callable[[], _T], what: str, timeout: float = 30.0) -> _T:
    """Poll ``condition`` until it returns something true, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting until {what}"
        time.sleep(0.01)
    return result


@pytest.fixture(scope="module")
def cluster():
    """A running two-worker cluster for the module, its scheduler validated after each test;
    always shut down at the end."""
    runtime = rt.init(num_workers=2)
    try:
        with validated(runtime.client):
            yield runtime
    finally:
        rt.shutdown()
        # Nothing of the cluster may be left behind.
        assert not _leftover_shm(runtime.cluster.prefix), "shared-memory objects left behind"
        assert not os.path.exists(runtime.cluster.session_dir)


def _leftover_shm(prefix: str) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


def pid_of(run_dir: str, name: str) -> int:
    """The pid ``runtime start`` recorded for ``name`` ("scheduler" or "agent") in ``run_dir``."""
    with open(os.path.join(run_dir, f"{name}.pid")) as f:
        return int(f.read().split()[0])


def runtime_cmd(*args: str, run_dir: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run the ``runtime`` command with its run directory (never the user's default)."""
    env = {**os.environ, "RUNTIME_RUN_DIR": run_dir}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
