"""Two node agents on one machine, each with its own store, behave like two hosts."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import numpy as np
import pytest
from conftest import validated

import runtime as rt
from runtime.api import context
from runtime.client.client import ClusterClient
from runtime.comm.serialize import dumps_function
from runtime.objstore import store
from runtime.objstore.transfer import fetch_sync

# Workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def total(a):
    assert not a.flags.writeable
    return float(a.sum())


def make(n):
    return np.full(n, 2.0)


@pytest.fixture(scope="module")
def two_nodes():
    # No active memory manager: these tests count transfers, and it would drop idle copies.
    with rt.LocalCluster(n_workers=2, n_nodes=2, amm_interval=0) as cluster:
        client = ClusterClient(cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix)
        try:
            client.wait_for_workers(2)
            with validated(client):
                yield cluster, client
        finally:
            client.close()
    for prefix in cluster.prefixes:  # both stores are emptied on the way out
        assert not [f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix)]


def _workers_on(client: ClusterClient, node: str) -> list[str]:
    return [a for a, w in client.request("identity")["workers"].items() if w["node"] == node]


def _fetch_lines(cluster: rt.LocalCluster, i: int) -> list[str]:
    with open(os.path.join(cluster.session_dir, "logs", f"agent-{i}.log")) as f:
        return [line for line in f if "fetched" in line]


def _objects(prefix: str) -> list[str]:
    return [name for name, _, _ in store.list_objects(prefix)]


def test_an_object_crosses_to_another_node_once_and_is_shared_there(two_nodes):
    cluster, client = two_nodes
    far = _workers_on(client, cluster.nodes[1])
    ref = client.put(np.arange(5_000_000, dtype=np.float64))  # 40 MB in node 0's store
    before = len(_fetch_lines(cluster, 1))
    futures = [
        client.submit(dumps_function(total), "total", (ref,), {}, restrictions={"workers": far}) for _ in range(6)
    ]
    assert client.get(futures, timeout=60) == [float(np.arange(5_000_000).sum())] * 6
    assert len(_fetch_lines(cluster, 1)) == before + 1  # one transfer for six readers
    assert len(_objects(cluster.prefixes[1])) == 1
    # The scheduler knows of the copy: later tasks on node 1 read it with no fetch at all.
    more = client.submit(dumps_function(total), "total", (ref,), {}, restrictions={"workers": far})
    assert more.result(timeout=30) == float(np.arange(5_000_000).sum())
    assert len(_fetch_lines(cluster, 1)) == before + 1
    # Dropping the value frees both copies.
    del ref, futures, more
    client.request("identity")  # a round trip: the release has reached the scheduler
    deadline = time.time() + 10
    while _objects(cluster.prefixes[1]) and time.time() < deadline:
        time.sleep(0.05)
    assert not _objects(cluster.prefixes[1])


def test_a_copy_made_for_a_process_that_then_died_is_recorded_and_freed_with_the_value(two_nodes):
    cluster, client = two_nodes
    ref = client.put(np.ones(2_000_000))  # 16 MB in node 0's store
    nodes = client.request("identity")["nodes"]
    here, there = (nodes[n]["address"] for n in cluster.nodes)
    # What a worker on node 1 does before it reads the value; then it is killed, saying nothing.
    fetch_sync(there, cluster.nodes[1], ref.key, ref._state.value, here)
    copy = store.local_name(cluster.prefixes[1], ref._state.value.name)
    assert copy in _objects(cluster.prefixes[1])
    del ref  # the agent told the scheduler of its copy: it goes with the value
    client.request("identity")
    deadline = time.time() + 10
    while copy in _objects(cluster.prefixes[1]) and time.time() < deadline:
        time.sleep(0.05)
    assert copy not in _objects(cluster.prefixes[1])


def test_the_driver_reads_a_value_made_on_another_node(two_nodes):
    cluster, client = two_nodes
    far = _workers_on(client, cluster.nodes[1])
    ref = client.submit(dumps_function(make), "make", (1_000_000,), {}, restrictions={"workers": far})
    value = ref.result(timeout=30)
    assert value.sum() == 2_000_000.0 and not value.flags.writeable


def test_scatter_broadcast_places_a_copy_in_every_store(two_nodes):
    cluster, _ = two_nodes
    with rt.Client(cluster) as client:
        value = np.arange(2_000_000, dtype=np.float64)  # 16 MB: stored, not inline
        ref = client.scatter(value, broadcast=True)
        assert store.local_name(cluster.prefixes[1], ref._state.value.name) in _objects(cluster.prefixes[1])
        far = _workers_on(client.core, cluster.nodes[1])
        before = len(_fetch_lines(cluster, 1))
        assert client.submit(np.sum, ref, workers=far).result(60) == value.sum()
        assert len(_fetch_lines(cluster, 1)) == before  # already there: nothing crossed at run time


@rt.remote
class Summer:
    def total(self, a):
        return total(a)

    def make(self, n):
        return np.full(n, 2.0)


def test_an_actor_on_the_other_node_reads_and_returns_stored_values(two_nodes, monkeypatch):
    cluster, client = two_nodes
    monkeypatch.setattr(context, "_current", context.Runtime(client, None))  # the API on this client
    far = _workers_on(client, cluster.nodes[1])
    summer = Summer.options(workers=far).remote()
    before = len(_fetch_lines(cluster, 1))
    arr = rt.put(np.ones(1_000_000))  # 8 MB into this node's store
    assert rt.get([summer.total.remote(arr) for _ in range(3)], timeout=60) == [1_000_000.0] * 3
    assert len(_fetch_lines(cluster, 1)) == before + 1  # copied to the actor's node once
    big = summer.make.remote(1_000_000)  # written into the actor's node's store
    value = rt.get(big, timeout=60)
    assert value.sum() == 2_000_000.0 and not value.flags.writeable
    near = _workers_on(client, cluster.nodes[0])
    assert rt.get(rt.remote(total).options(workers=near).remote(big), timeout=60) == 2_000_000.0
    rt.kill(summer)
