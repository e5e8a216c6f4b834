"""Scheduling policies end to end: queuing, restrictions, resources and cancellation."""

from __future__ import annotations

import os
import time

import pytest
from conftest import validated, wait_until

import runtime as rt


@pytest.fixture(scope="module")
def gpu_cluster():
    """Two workers that each offer one abstract GPU."""
    runtime = rt.init(num_workers=2, resources={"GPU": 1})
    runtime.client.wait_for_workers(2)
    try:
        with validated(runtime.client):
            yield runtime
    finally:
        rt.shutdown()


@rt.remote
def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


@rt.remote
def inc(x):
    return x + 1


def _states(runtime, keys):
    states = runtime.client.request("task-states")
    return [states.get(k) for k in keys]


def test_wide_graph_waits_on_the_scheduler_not_on_workers(gpu_cluster):
    refs = [pid_after.remote(0.05) for _ in range(40)]
    keys = [r.key for r in refs]
    wait_until(lambda: None not in _states(gpu_cluster, keys), "the scheduler has every task")
    states = _states(gpu_cluster, keys)  # 40 tasks of 0.05 s on 4 slots: 0.5 s before all have run
    # 2 workers x ceil(1.1 x 1 thread) = 4 slots; the rest is queued on the scheduler.
    assert states.count("processing") <= 4 and "queued" in states
    assert len(set(rt.get(refs, timeout=60))) == 2


def test_resources_route_tasks_and_infeasible_ones_wait(gpu_cluster):
    assert len(rt.get([pid_after.options(resources={"GPU": 1}).remote(0) for _ in range(4)])) == 4
    too_big = pid_after.options(resources={"GPU": 2}).remote(0)
    with pytest.raises(rt.GetTimeoutError):
        rt.get(too_big, timeout=0.5)
    assert _states(gpu_cluster, [too_big.key]) == ["no-worker"]
    rt.cancel(too_big)
    with pytest.raises(rt.TaskCancelledError):
        rt.get(too_big, timeout=10)


def test_num_cpus_beyond_a_workers_threads_waits_in_no_worker(gpu_cluster):
    assert rt.get(pid_after.options(num_cpus=1).remote(0)) > 0  # every worker has one thread
    greedy = pid_after.options(num_cpus=2).remote(0)
    with pytest.raises(rt.GetTimeoutError):
        rt.get(greedy, timeout=0.5)
    assert _states(gpu_cluster, [greedy.key]) == ["no-worker"]
    rt.cancel(greedy)


def test_workers_restriction_runs_on_that_worker(gpu_cluster):
    workers = gpu_cluster.client.request("identity")["workers"]
    address, info = sorted(workers.items())[0]
    pids = rt.get([pid_after.options(workers=[address]).remote(0) for _ in range(5)])
    assert set(pids) == {info["pid"]}


def test_cancel_stops_a_running_task_and_its_dependents(gpu_cluster):
    slow = pid_after.remote(30)
    after = inc.remote(slow)
    wait_until(lambda: _states(gpu_cluster, [slow.key]) == ["processing"], "the slow task runs")
    rt.cancel(slow)
    for ref in (slow, after):
        with pytest.raises(rt.TaskCancelledError, match="was cancelled"):
            rt.get(ref, timeout=10)
    assert slow.cancelled()


def test_bad_restriction_options_are_named():
    with pytest.raises(ValueError, match="option resources="):
        inc.options(resources={"GPU": -1})
    with pytest.raises(ValueError, match="option allow_other_workers="):
        inc.options(allow_other_workers="yes")
