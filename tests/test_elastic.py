"""Clusters that change while they work: the active memory manager, retiring a node without
losing data, node agents joining and leaving, and scale/adapt.  Tests run in order on one
two-node cluster; the last ones retire a node and scale what is left."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime.client.client import ClusterClient
from runtime.comm.serialize import dumps_function
from runtime.objstore import store

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def total(a):
    return float(a.sum())


def make(n, v):
    return np.full(n, float(v))


def nap(x, seconds):
    time.sleep(seconds)
    return x


@pytest.fixture(scope="module")
def cluster():
    with rt.LocalCluster(n_workers=2, n_nodes=2, amm_interval=0.2) as cluster:
        client = ClusterClient(cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix)
        try:
            client.wait_for_workers(2, timeout=60)
            with validated(client):
                yield cluster, client
        finally:
            client.close()
    for prefix in cluster.prefixes:
        assert not [f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix)]


def submit(client, func, *args, **restrictions):
    return client.submit(dumps_function(func), func.__name__, args, {}, restrictions=restrictions or None)


def workers_on(client, node: str) -> list[str]:
    return [a for a, w in client.request("identity")["workers"].items() if w["node"] == node]


def objects(prefix: str) -> list[str]:
    return [name for name, _, _ in store.list_objects(prefix)]


def test_the_active_memory_manager_drops_a_copy_nobody_needs(cluster):
    cluster, client = cluster
    ref = client.put(np.arange(2_000_000, dtype=np.float64))  # 16 MB in node 0's store
    far = submit(client, total, ref, workers=workers_on(client, cluster.nodes[1]))
    assert far.result(timeout=60) == float(np.arange(2_000_000).sum())
    # node 1 fetched a copy to read it; with the reader done, the copy goes, the value stays.
    wait_until(lambda: not objects(cluster.prefixes[1]), "the copy on node 1 is dropped", 60)
    assert len(objects(cluster.prefixes[0])) == 1
    again = submit(client, total, ref, workers=workers_on(client, cluster.nodes[1]))
    assert again.result(timeout=60) == float(np.arange(2_000_000).sum())


def test_a_node_agent_may_join_and_leave_at_any_time(cluster, tmp_path):
    cluster, client = cluster
    node = f"node-{cluster.cluster_id}-late"
    agent = subprocess.Popen(
        [sys.executable, "-m", "runtime.worker.agent", "--scheduler", cluster.scheduler_address, "--node", node,
         "--num-workers", "1", "--log-dir", str(tmp_path), "--watch-parent"],
        stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: workers_on(client, node), "the late agent's worker joins", 60)
        # Stored on the new node; may be recomputed elsewhere once that node is gone.
        here = submit(client, make, 100_000, 3, workers=workers_on(client, node), allow_other_workers=True)
        assert client.get([submit(client, total, here)], timeout=60) == [300_000.0]
    finally:
        agent.stdin.close()  # its parent pipe: the agent leaves
        agent.wait(30)
    wait_until(lambda: node not in client.request("identity")["nodes"], "the late agent is gone", 60)
    # Its store went with it: a value only it held is recomputed when needed.
    assert client.get([submit(client, total, here)], timeout=60) == [300_000.0]


def test_retiring_a_node_first_moves_the_values_only_it_holds(cluster):
    cluster, client = cluster
    far = workers_on(client, cluster.nodes[1])
    made = [submit(client, make, 200_000, i, workers=far) for i in range(10)]  # 1.6 MB each, on node 1
    small = [submit(client, nap, i, 0.0, workers=far) for i in range(10)]  # inline: held by the scheduler
    rt.wait(made + small, num_returns=20, timeout=60)  # each future asks its own client
    assert len(objects(cluster.prefixes[1])) == 10
    result = client.retire_workers(nodes=[cluster.nodes[1]], timeout=60)
    assert result["nodes"] == [cluster.nodes[1]] and result["workers"] == far and result["copied"] == 10
    cluster.agent_procs[1].wait(30)  # its agent stopped, and took its store with it
    assert not objects(cluster.prefixes[1])
    wait_until(lambda: not workers_on(client, cluster.nodes[1]), "node 1's workers are gone", 60)
    # Nothing was lost: every value is read from its copy on node 0, none recomputed.
    checked = [f.result(timeout=30).sum() for f in made]
    assert checked == [200_000.0 * i for i in range(10)]
    assert client.get(small, timeout=30) == list(range(10))
    keys = {f.key for f in made}
    runs = [t[0] for t in client.request("story", keys=list(keys)) if t[0] in keys and t[2] == "processing"]
    assert sorted(runs) == sorted(keys)  # each ran once: no recomputation
    with pytest.raises(ValueError, match="no such worker or node: nobody"):
        client.retire_workers(["nobody"])


def test_retiring_a_busy_worker_times_out_and_leaves_it_working(cluster):
    cluster, client = cluster
    (worker,) = client.request("identity")["workers"]
    busy = submit(client, nap, 1, 3.0)
    wait_until(lambda: client.request("task-states").get(busy.key) == "processing", "the task runs", 60)
    with pytest.raises(TimeoutError, match="1 workers still running tasks"):
        client.retire_workers([worker], timeout=0.5)
    assert client.request("identity")["workers"][worker]["status"] == "running"  # nothing was stopped
    assert busy.result(timeout=30) == 1
    assert submit(client, nap, 2, 0.0).result(timeout=30) == 2
    with pytest.raises(TypeError, match="not a string"):
        client.retire_workers(worker)


def test_adapt_scales_up_with_the_load_and_back_down_when_idle(cluster):
    cluster, client = cluster
    cluster.adapt(minimum=1, maximum=3, interval=0.2, target_duration=1.0, wait_count=2)
    futures = [submit(client, nap, i, 0.3) for i in range(40)]  # 12 s of work for one worker
    wait_until(lambda: len(client.request("identity")["workers"]) == 3, "adapt starts two more workers", 60)
    assert client.get(futures, timeout=120) == list(range(40))
    del futures
    wait_until(lambda: len(client.request("identity")["workers"]) == 1, "adapt retires the idle workers", 60)
    cluster.scale(2)
    client.wait_for_workers(2, timeout=60)
    with pytest.raises(ValueError, match="adapt"):
        cluster.adapt(minimum=3, maximum=1)
    with pytest.raises(ValueError, match="scale"):
        cluster.scale(-1)
