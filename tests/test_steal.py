"""Work stealing with real processes: two nodes, every input stored on node A and every task
placed there; idle workers on node B take a share only while ``scheduler.work-stealing`` is
on, and every task still runs exactly once with the right result."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import numpy as np
import pytest

import runtime as rt
from runtime import Client, LocalCluster, config

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TASKS = 16


def work(x: np.ndarray, runs: str) -> tuple[float, str]:
    """Sleep 200 ms; note this run in ``runs`` (one file per run); the input's sum and the node."""
    open(os.path.join(runs, f"{int(x[0])}-{os.getpid()}-{time.monotonic_ns()}"), "x").close()
    time.sleep(0.2)
    return float(x.sum()), rt.get_worker().node


def run_on_node_a(stealing: bool, runs: str) -> tuple[list[str], str, tuple]:
    """The nodes the tasks ran on, each checked to have run once with the right result; node A;
    the events of topic "stealing"."""
    with config.set({"scheduler.work-stealing": stealing, "scheduler.work-stealing-interval": "50ms"}):
        cluster = LocalCluster(2, n_nodes=2)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        node_a = [w for w, info in client.scheduler_info()["workers"].items() if info["node"] == cluster.node]
        inputs = client.scatter([np.full(100_000, i, dtype="f8") for i in range(TASKS)])  # 800 kB: stored on A
        futures = [client.submit(work, x, runs, workers=node_a, allow_other_workers=True) for x in inputs]
        results = client.gather(futures)
        assert client.core.request("validate") is None  # the scheduler's state, checked
        events = client.get_events("stealing")
        keys = {f.key: i for i, f in enumerate(futures)}
        node_of = {w: info["node"] for w, info in client.scheduler_info()["workers"].items()}
    assert [r[0] for r in results] == [100_000.0 * i for i in range(TASKS)]
    counts = sorted(int(name.split("-")[0]) for name in os.listdir(runs))
    assert counts == list(range(TASKS)), "a task ran twice, or not at all"
    assert {node for _, node in results} <= set(cluster.nodes)
    nodes = [node for _, node in results]
    # A task whose last move was a confirmed steal ran on its thief's node (Dask's event
    # shapes); each task's first move takes it off node A, where they were all placed.
    moved: dict[str, str | None] = {}  # key -> its last confirmed thief (None: rescheduled since)
    for _, (action, *fields) in events:
        if action in ("confirm", "reschedule"):
            key, state, victim, thief, _request = fields
            assert state == "queued" and (key in moved or node_of[victim] == cluster.node)
            moved[key] = thief if action == "confirm" else None
    for key, thief in moved.items():
        assert thief is None or nodes[keys[key]] == node_of[thief]
    return nodes, cluster.node, events


@pytest.mark.timeout(120)
def test_idle_workers_on_another_node_take_a_share_only_with_stealing(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    on.mkdir()
    off.mkdir()
    ran, node_a, events = run_on_node_a(True, str(on))
    on_b = sum(node != node_a for node in ran)
    assert on_b >= TASKS // 4, f"node B ran {on_b} of {TASKS} tasks with work stealing on"
    actions = [msg[0] for _, msg in events]
    assert "request" in actions and "confirm" in actions, actions
    ran, node_a, events = run_on_node_a(False, str(off))
    assert set(ran) == {node_a}, "tasks left node A with work stealing off"
    assert events == ()


def test_bad_work_stealing_settings_are_refused_by_name():
    with pytest.raises(config.ConfigError, match="scheduler.work-stealing"):
        config.set({"scheduler.work-stealing": "sometimes"})
    with pytest.raises(config.ConfigError, match="work-stealing-interval.*above 0"):
        config.set({"scheduler.work-stealing-interval": 0})
    with pytest.raises(config.ConfigError, match="work-stealing-interval"):
        config.set({"scheduler.work-stealing-interval": "soon"})


class _Outbox:
    def __init__(self) -> None:
        self.sent: list = []

    def put(self, msg, lazy: bool = False) -> None:
        self.sent.append(msg)


def test_a_worker_gives_up_only_a_task_it_has_not_started():
    from runtime.comm import messages as m
    from runtime.worker.worker import Worker

    worker = Worker("unix:///nowhere", "n1", "p", "w1")
    worker._outbox = outbox = _Outbox()  # type: ignore[assignment]
    queued = m.ComputeTask("queued", (b"f", b"a"), 0, {})
    worker._compute_task(queued)
    worker._executing["running"] = (0, m.ComputeTask("running", (b"f", b"a"), 0, {}))
    for key in ("queued", "running", "done", "queued"):
        worker._steal_request(m.StealRequest(key, "r1"))
    assert outbox.sent == [
        m.StealResponse("queued", "r1", "queued"),
        m.StealResponse("running", "r1", "executing"),
        m.StealResponse("done", "r1", "gone"),
        m.StealResponse("queued", "r1", "gone"),  # dropped the first time: not there now
    ]
    assert "queued" not in worker._live  # its heap entry is skipped when its turn comes
