"""Shared fixtures: one embedded cluster per test module, with the scheduler validating.

The scheduler validates every transition in these tests (RUNTIME_VALIDATE=1), so an
invalid state fails the run in the scheduler's log and the task never completes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("RUNTIME_VALIDATE", "1")
os.environ.setdefault("RUNTIME_CONFIG", os.devnull)  # no config file of the user running the tests

import runtime as rt  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A running two-worker cluster for the module; always shut down at the end."""
    runtime = rt.init(num_workers=2)
    try:
        yield runtime
    finally:
        rt.shutdown()
        # Nothing of the cluster may be left behind.
        assert not _leftover_shm(runtime.cluster.prefix), "shared-memory objects left behind"
        assert not os.path.exists(runtime.cluster.session_dir)


def _leftover_shm(prefix: str) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


def runtime_cmd(*args: str, run_dir: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run the ``runtime`` command with its run directory (never the user's default)."""
    env = {**os.environ, "RUNTIME_RUN_DIR": run_dir}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
