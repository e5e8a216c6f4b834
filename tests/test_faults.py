"""Failure detection: node agents frozen or killed, a scheduler killed or frozen.

Every test runs with a 2-second heartbeat timeout (inherited by the cluster's processes)
and checks the answer, not the timing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

import runtime as rt
from runtime.client.client import ClusterClient
from runtime.comm.serialize import dumps_function
from runtime.objstore import store

cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 50_000  # floats per block: 400 KB, so blocks live in the node stores, not inline


def make(i):
    time.sleep(0.02)
    return np.full(N, float(i))


def add(*blocks):
    return float(sum(float(b.sum()) if isinstance(b, np.ndarray) else b for b in blocks))


@pytest.fixture
def short_heartbeats(monkeypatch):
    monkeypatch.setenv("RUNTIME_HEARTBEAT_TIMEOUT", "2")
    monkeypatch.setenv("RUNTIME_HEARTBEAT_INTERVAL", "0.2")


def _two_nodes() -> tuple[rt.LocalCluster, ClusterClient]:
    cluster = rt.LocalCluster(n_workers=2, n_nodes=2)
    client = ClusterClient(cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix)
    client.wait_for_workers(2)
    return cluster, client


def _submit_sum(client: ClusterClient, blocks: range) -> tuple[list[rt.Future], rt.Future]:
    made = [client.submit(dumps_function(make), "make", (i,), {}) for i in blocks]
    partial = [client.submit(dumps_function(add), "add", tuple(made[j : j + 10]), {}) for j in range(0, len(made), 10)]
    return made, client.submit(dumps_function(add), "total", tuple(partial), {})


def _expected(blocks: range) -> float:
    return float(N * sum(blocks))


def _log(cluster: rt.LocalCluster, name: str) -> str:
    with open(os.path.join(cluster.session_dir, "logs", name)) as f:
        return f.read()


def _close(cluster: rt.LocalCluster, client: ClusterClient) -> None:
    client.close()
    cluster.close()
    for prefix in cluster.prefixes:  # a killed agent could not empty its store: do it for it
        store.sweep(prefix)


def test_a_frozen_node_agent_is_removed_and_its_work_done_elsewhere(short_heartbeats):
    cluster, client = _two_nodes()
    frozen = cluster.agent_procs[1]
    try:
        made, total = _submit_sum(client, range(40))
        made[10].result(timeout=60)  # some blocks are in both stores by now
        os.kill(frozen.pid, signal.SIGSTOP)
        assert total.result(timeout=90) == _expected(range(40))
        identity = client.request("identity")
        assert list(identity["nodes"]) == [cluster.nodes[0]]
        assert {w["node"] for w in identity["workers"].values()} == {cluster.nodes[0]}  # its workers went with it
        assert f"removing node {cluster.nodes[1]}: its node agent sent no heartbeat" in _log(cluster, "scheduler.log")
        # Woken up, it finds it was removed and stops, emptying its store.
        os.kill(frozen.pid, signal.SIGCONT)
        assert frozen.wait(timeout=30) == 0
        assert not [f for f in os.listdir(store.SHM_DIR) if f.startswith(cluster.prefixes[1])]
    finally:
        os.kill(frozen.pid, signal.SIGCONT) if frozen.poll() is None else None
        _close(cluster, client)


def test_a_killed_node_agent_loses_no_result(short_heartbeats):
    cluster, client = _two_nodes()
    try:
        made, total = _submit_sum(client, range(200))
        made[30].result(timeout=60)
        cluster.agent_procs[1].kill()
        assert total.result(timeout=120) == _expected(range(200))
        # Every block is still readable: those only node 1 held were computed again.
        assert [float(b[0]) for b in client.get(made, timeout=120)] == [float(i) for i in range(200)]
    finally:
        _close(cluster, client)


def test_a_killed_scheduler_fails_every_call_fast_and_its_agent_stops(short_heartbeats):
    with rt.LocalCluster(n_workers=1) as cluster:
        client = ClusterClient(cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix)
        try:
            client.wait_for_workers(1)
            pending = client.submit(dumps_function(time.sleep), "sleep", (60,), {})
            cluster.scheduler_proc.kill()
            with pytest.raises(ConnectionError, match="lost the connection to the scheduler"):
                pending.result(timeout=30)
            for call in (
                lambda: client.submit(dumps_function(time.sleep), "sleep", (1,), {}),
                lambda: client.request("identity"),
                lambda: client.put(1),
            ):
                with pytest.raises(ConnectionError, match="lost the connection to the scheduler"):
                    call()
            assert cluster.agent_procs[0].wait(timeout=30) == 0  # and it stopped its workers on the way
        finally:
            client.close()


def test_a_frozen_scheduler_makes_its_agents_stop_and_its_clients_fail_within_the_timeout(short_heartbeats):
    with rt.LocalCluster(n_workers=1) as cluster, rt.config.set({"heartbeat.client-timeout": 2}):
        client = ClusterClient(cluster.scheduler_address)
        try:
            client.wait_for_workers(1)  # the agent has joined
            pending = client.submit(dumps_function(time.sleep), "sleep", (60,), {})
            assert rt.Lock("frozen", client=client).acquire()
            waited: list[BaseException] = []  # a thread waiting on its own request channel

            def wait_for_lock() -> None:
                try:
                    rt.Lock("frozen", client=client).acquire()
                except BaseException as e:
                    waited.append(e)

            waiter = threading.Thread(target=wait_for_lock)
            waiter.start()
            os.kill(cluster.scheduler_proc.pid, signal.SIGSTOP)
            try:
                # No timeout given: the client's own watch on its scheduler ends the wait.
                with pytest.raises(ConnectionError, match="has not answered for .*frozen, overloaded or unreachable"):
                    pending.result()
                waiter.join(30)
                assert len(waited) == 1 and "has not answered" in str(waited[0]), waited
                assert cluster.agent_procs[0].wait(timeout=30) == 0
            finally:
                os.kill(cluster.scheduler_proc.pid, signal.SIGCONT)
        finally:
            client.close()
        assert "heard nothing from the scheduler" in _log(cluster, "agent.log")
