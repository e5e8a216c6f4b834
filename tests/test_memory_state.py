"""Memory and elasticity in the scheduler's state machine, driven directly: worker status
(paused, retiring), heartbeats, the active memory manager's policies, adaptive targets."""

from __future__ import annotations

import pytest

from runtime.comm.messages import FreeObjects, StoreRef
from runtime.scheduler import amm, placement, sampler
from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState
from tests.test_state import add_worker, compute_keys, finished, graph, sid, task


@pytest.fixture
def s() -> SchedulerState:
    state = SchedulerState(validate=True, chain_hints=False)
    state.handle(st.AddClient(sid(), "c1"))
    return state


def status(s: SchedulerState, worker: str, new: str, by_scheduler: bool = False):
    return s.handle(st.WorkerStatusChange(sid(), worker, new, by_scheduler=by_scheduler))


def test_a_paused_worker_gets_no_new_tasks_and_fills_its_slots_when_it_resumes(s):
    add_worker(s, "w1")
    add_worker(s, "w2")
    status(s, "w1", "paused")
    _, wmsgs = s.handle(graph(*(task(f"f-{i}") for i in range(4))))
    assert not compute_keys(wmsgs, "w1") and compute_keys(wmsgs, "w2")
    status(s, "w2", "paused")
    _, wmsgs = s.handle(graph(task("g-1")))
    assert not wmsgs and s.tasks["g-1"].state == "no-worker"  # every worker paused
    _, wmsgs = status(s, "w1", "running")
    assert "g-1" in compute_keys(wmsgs, "w1")


def test_a_worker_being_retired_ignores_its_own_pause_and_resume(s):
    add_worker(s, "w1")
    status(s, "w1", "closing_gracefully", by_scheduler=True)
    status(s, "w1", "running")  # the worker resuming after a pause does not undo retiring
    assert s.workers["w1"].status == "closing_gracefully"
    _, wmsgs = s.handle(graph(task("f-1")))
    assert not wmsgs and s.tasks["f-1"].state == "no-worker"
    assert s.workers_to_close(n=0) == []  # already going
    status(s, "w1", "running", by_scheduler=True)
    assert s.tasks["f-1"].state == "processing"


def test_an_unknown_status_is_ignored(s):
    add_worker(s, "w1")
    status(s, "w1", "sleepy")
    assert s.workers["w1"].status == "running"


def test_heartbeats_keep_memory_figures_for_the_sampler(s):
    add_worker(s, "w1", "n1")
    add_worker(s, "w2", "n1")
    s.handle(st.WorkerHeartbeat(sid(), "w1", 100, 150))
    s.handle(st.WorkerHeartbeat(sid(), "w2", 20, 30))
    s.handle(st.NodeHeartbeat(sid(), "n1", 1000, 500, 4000))
    s.handle(st.WorkerHeartbeat(sid(), "gone", 1, 1))  # a late beat of a removed worker
    assert s.workers["w1"].memory == 100 and s.workers["w1"].memory_rss == 150
    assert sampler.snapshot(s) == {"n1": [120, 1000, 500]}


def test_a_sampling_keeps_a_bounded_number_of_samples_over_its_whole_span(s):
    import asyncio

    async def run() -> sampler.Sampling:
        sampling = sampler.Sampling(s, sampler.MIN_INTERVAL, "c1", max_samples=8)
        await asyncio.sleep(0.5)
        sampling.stop()
        return sampling

    sampling = asyncio.run(run())
    times = [t for t, _ in sampling.samples]
    assert len(times) <= 8 + 1 and times[0] < 0.05 and times[-1] >= 0.5  # the stop adds one
    assert sampling.interval >= 4 * sampler.MIN_INTERVAL  # halved, and it samples less often


@pytest.mark.parametrize("interval", [0, -1, 0.001, float("nan"), float("inf"), "1", True, None])
def test_a_sampling_interval_below_the_floor_or_not_a_number_is_refused(interval):
    with pytest.raises(ValueError, match=r"interval must be a number of seconds >= 0.01, not "):
        sampler.check_interval(interval)


def two_nodes_with_a_copy(s: SchedulerState) -> StoreRef:
    s.handle(st.AddNode(sid(), "n1", "tcp://a"))
    s.handle(st.AddNode(sid(), "n2", "tcp://b"))
    s.handle(st.AddWorker(sid(), "w2", "n2", 1))
    big = StoreRef("n1", 10**6, "obj-a")
    s.handle(st.UpdateData(sid(), "c1", "big-1", big, 10**6))
    s.handle(graph(task("f-1", "big-1")))
    s.handle(st.AddReplica(sid(), "big-1", "n2", "obj-b", big))
    return big


def test_reduce_replicas_drops_a_copy_once_no_task_reads_it(s):
    two_nodes_with_a_copy(s)
    assert amm.reduce_replicas(s) == []  # f-1 runs on n2 and may be reading the copy
    s.handle(finished("f-1", "w2"))
    drops = amm.reduce_replicas(s)
    assert drops == [("big-1", "n2", "obj-b")]
    assert amm.reduce_replicas(s, keep=frozenset({"n1"})) == []  # n1 is retiring: keep its copies
    _, wmsgs = s.handle(st.DropReplicas(sid(), tuple(drops)))
    assert wmsgs == {"n2": [FreeObjects(("obj-b",))]}
    assert not s.tasks["big-1"].replicas and not s.nodes["n2"].replicas
    _, wmsgs = s.handle(st.DropReplicas(sid(), tuple(drops)))  # stale: nothing happens
    assert not wmsgs


def test_a_drop_is_checked_again_when_it_arrives(s):
    two_nodes_with_a_copy(s)
    s.handle(finished("f-1", "w2"))
    drops = amm.reduce_replicas(s)
    s.handle(graph(task("g-1", "big-1")))  # a reader came meanwhile
    _, wmsgs = s.handle(st.DropReplicas(sid(), tuple(drops)))
    assert not wmsgs and s.tasks["big-1"].replicas == {"n2": "obj-b"}


def test_retire_moves_copy_what_only_leaving_nodes_hold(s):
    s.handle(st.AddNode(sid(), "n1", "tcp://a"))
    s.handle(st.AddNode(sid(), "n2", "tcp://b"))
    s.handle(st.AddNode(sid(), "n3", "tcp://c"))
    s.handle(st.NodeHeartbeat(sid(), "n2", 0, 0, 100))
    s.handle(st.NodeHeartbeat(sid(), "n3", 0, 0, 100))
    for i, size in enumerate((60, 30, 20)):
        s.handle(st.UpdateData(sid(), "c1", f"put-{i}", StoreRef("n1", size, f"obj-{i}"), size))
    s.handle(st.UpdateData(sid(), "c1", "small-1", b"inline", 6))  # held by the scheduler: stays
    moves = amm.retire_moves(s, {"n1"})
    # The biggest first, each into the node with the most room left.
    assert [(ts.key, node) for ts, node in moves] == [("put-0", "n2"), ("put-1", "n3"), ("put-2", "n3")]
    s.handle(st.AddReplica(sid(), "put-0", "n3", "copy-0", StoreRef("n1", 60, "obj-0")))
    assert [ts.key for ts, _ in amm.retire_moves(s, {"n1"})] == ["put-1", "put-2"]
    # A copy on another leaving node does not count.
    assert [ts.key for ts, _ in amm.retire_moves(s, {"n1", "n3"})] == ["put-0", "put-1", "put-2"]
    with pytest.raises(ValueError, match="no other node remains"):
        amm.retire_moves(s, {"n1", "n2", "n3"})
    assert amm.retire_moves(s, {"n2"}) == []


def test_adaptive_target_follows_the_load(s):
    assert placement.adaptive_target(s) == 0
    add_worker(s, "w1")
    s.handle(graph(*(task(f"f-{i}") for i in range(100))))  # 100 x 0.5 s of work
    assert placement.adaptive_target(s, target_duration=5.0) == 10
    assert placement.adaptive_target(s, target_duration=1000.0) == 1
    for i in range(100):
        if s.tasks[f"f-{i}"].state == "processing":
            s.handle(finished(f"f-{i}", "w1"))
    add_worker(s, "w2")
    assert all(ts.state == "memory" for ts in s.tasks.values())
    assert placement.adaptive_target(s) == 2  # w1 holds results and offers no memory: it stays
    s.handle(st.ClientReleasesKeys(sid(), "c1", tuple(s.tasks)))
    assert placement.adaptive_target(s) == 0  # idle workers holding nothing may all go
