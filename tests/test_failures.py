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


@rt.remote
def leaf(i, marker):
    if i == 150 and not os.path.exists(marker):  # the first attempt says where it runs, then works on
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(1)
    time.sleep(0.002)
    return i + 1


@rt.remote
def add(a, b):
    return a + b


def _tree_sum(refs: list) -> rt.Future:
    while len(refs) > 1:
        refs = [add.remote(refs[i], refs[i + 1]) if i + 1 < len(refs) else refs[i] for i in range(0, len(refs), 2)]
    return refs[0]


def test_a_worker_sigkilled_in_the_middle_of_a_1000_task_graph_changes_no_result(cluster, tmp_path):
    marker = str(tmp_path / "pid")
    leaves = [leaf.remote(i, marker) for i in range(500)]
    total = _tree_sum(leaves)  # 500 leaves and 499 sums: 999 tasks
    os.kill(int(_wait_for_file(marker)), signal.SIGKILL)  # one fault, mid-graph
    assert rt.get(total, timeout=120) == sum(range(1, 501))
    assert rt.get(leaves, timeout=60) == list(range(1, 501))  # 501 results checked, none lost
    cluster.client.wait_for_workers(2, timeout=30)


def test_a_task_that_kills_every_worker_errs_while_the_rest_of_its_graph_completes(cluster):
    bad = exit_worker.remote()
    after_bad = inc.remote(bad)
    leaves = [inc.remote(i) for i in range(100)]
    total = _tree_sum(leaves)
    with pytest.raises(rt.KilledWorker, match=f"task '{bad.key}' was running on 4 workers"):
        rt.get(after_bad, timeout=120)  # its dependent fails with its error
    assert rt.get(total, timeout=60) == sum(range(1, 101))
    cluster.client.wait_for_workers(2, timeout=30)
