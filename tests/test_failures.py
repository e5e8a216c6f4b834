"""Workers that die under a task: the task runs again elsewhere, or errs as KilledWorker."""

from __future__ import annotations

import os
import signal
import time

import pytest

import runtime as rt


@rt.remote
def record_pid_then_sleep(marker, value):
    if not os.path.exists(marker):  # only the first attempt sleeps
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    return value * 2


@rt.remote
def inc(x):
    return x + 1


@rt.remote
def exit_worker():
    os._exit(3)


def _wait_for_file(path: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and open(path).read():
            return open(path).read()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def test_worker_killed_mid_task_reruns_it(cluster, tmp_path):
    marker = str(tmp_path / "pid")
    ref = record_pid_then_sleep.remote(marker, 21)
    downstream = inc.remote(ref)
    pid = int(_wait_for_file(marker))
    os.kill(pid, signal.SIGKILL)
    assert rt.get(downstream, timeout=60) == 43
    assert rt.get(ref) == 42
    # The node agent restarted the dead worker.
    cluster.client.wait_for_workers(2, timeout=30)


def test_task_that_keeps_killing_workers_errs_as_killed_worker(cluster):
    bad = exit_worker.remote()
    good = [inc.remote(i) for i in range(20)]
    with pytest.raises(rt.KilledWorker, match=f"task '{bad.key}' was running on 4 workers that died") as info:
        rt.get(bad, timeout=90)
    # The cause comes from the node agent that saw the worker exit, not just "connection closed".
    assert "last cause: exit code 3" in str(info.value)
    assert rt.get(good, timeout=60) == list(range(1, 21))
    cluster.client.wait_for_workers(2, timeout=30)
