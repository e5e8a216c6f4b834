"""Worker memory with real processes: heartbeats, the nanny's restart past the limit, sampling."""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import pytest
from conftest import validated, wait_until

import runtime as rt

cloudpickle.register_pickle_by_value(sys.modules[__name__])

LIMIT = 300 * 10**6


@pytest.fixture(scope="module")
def small_workers():
    """Two workers with a 300 MB limit each (pause at 240 MB, restart at 285 MB)."""
    runtime = rt.init(num_workers=2, memory_limit=LIMIT)
    try:
        runtime.client.wait_for_workers(2, timeout=60)
        with validated(runtime.client):
            yield runtime
    finally:
        rt.shutdown()


@rt.remote
def hog(step=20 * 10**6):
    """Allocate and touch memory until something stops it."""
    chunks = []
    while True:
        chunks.append(b"x" * step)
        time.sleep(0.02)


@rt.remote
def inc(x):
    time.sleep(0.01)
    return x + 1


def _workers(runtime) -> dict:
    return runtime.client.request("identity")["workers"]


def test_heartbeats_report_each_workers_memory_and_limit(small_workers):
    deadline = time.monotonic() + 30
    while not all(w["memory"] for w in _workers(small_workers).values()):
        assert time.monotonic() < deadline, "no heartbeat with memory figures arrived"
        time.sleep(0.1)
    for w in _workers(small_workers).values():
        assert w["memory_limit"] == LIMIT and 0 < w["memory"] < LIMIT and w["status"] == "running"


def test_a_task_past_the_memory_limit_gets_its_worker_restarted_and_the_cause_reported(small_workers):
    bad = hog.remote()
    good = [inc.remote(i) for i in range(50)]
    with pytest.raises(rt.KilledWorker) as info:
        rt.get(bad, timeout=120)
    text = str(info.value)
    assert f"task '{bad.key}' was running on 4 workers that died" in text  # the task, 3 restarts allowed
    assert "memory limit reached: " in text and "of 286.10 MiB" in text  # the cause, with the limit
    assert "/w" in text and "node-" in text  # the workers, named with their node
    assert "pausing (no new tasks)" in text  # the worker's last log lines: it paused at 80% first
    assert rt.get(good, timeout=60) == list(range(1, 51))  # other work completed
    small_workers.client.wait_for_workers(2, timeout=60)  # and the nanny restarted the workers


def _store_used(runtime) -> int:
    """Bytes in the node stores' shared memory, as the scheduler last heard."""
    return sum(used for _, used, _ in runtime.client.request("memory").values())


def test_memory_sampler_records_cluster_memory_over_time(small_workers):
    import numpy as np

    ms = rt.MemorySampler()
    with ms.sample("put", interval=0.1):
        ref = rt.put(np.ones(10_000_000))  # 80 MB in the node's store
        # The node agent recounts its store about every second, and tells the scheduler.
        wait_until(lambda: _store_used(small_workers) >= 80_000_000, "the scheduler hears of the array", 60)
        time.sleep(0.5)  # and five samples more: this is a sampling over time
    rows = ms.samples["put"]
    assert len(rows) >= 5 and all(len(r) == 4 for r in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert rows[-1][1] > 0  # workers' own memory
    assert rows[-1][2] >= 80_000_000  # the store holds the array
    (node,) = ms.by_node["put"][-1][1]
    assert node == small_workers.cluster.node
    del ref
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs pandas"):
            ms.to_pandas()
    else:
        frame = ms.to_pandas("store")
        assert list(frame.columns) == ["put"] and frame["put"].iloc[-1] >= 80_000_000
    with pytest.raises(ValueError, match="field"):
        ms.to_pandas("bogus")
    with pytest.raises(ValueError, match="interval"):
        with ms.sample("bad", interval=0):
            pass


def test_memory_sampling_refuses_an_interval_below_its_floor(small_workers):
    with pytest.raises(ValueError, match=r"interval must be a number of seconds >= 0.01, not 0$"):
        with rt.MemorySampler().sample(interval=0):
            pass
    # A client that skips MemorySampler's check is refused by the scheduler.
    reply = small_workers.client.request("memory-sampling-start", interval=0)
    assert "interval must be a number of seconds >= 0.01, not 0" in reply["error"]


def test_a_memory_sampling_ends_when_its_client_is_killed(small_workers):
    client = small_workers.client
    script = (
        "import time\n"
        "from runtime.client.client import ClusterClient\n"
        f"c = ClusterClient({client.address!r})\n"
        "print(c.request('memory-sampling-start', interval=0.01), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        sampling = proc.stdout.readline().strip()
        assert sampling.startswith("sampling-")
        clients = client.request("status")["clients"]
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    while client.request("status")["clients"] >= clients:
        assert time.monotonic() < deadline, "the scheduler did not notice the killed client leave"
        time.sleep(0.05)
    assert client.request("memory-sampling-stop", id=sampling) == {"error": f"no memory sampling {sampling!r}"}
