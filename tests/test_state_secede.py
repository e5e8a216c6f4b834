"""The ``long-running`` stimulus, driven on the pure state machine: a task that seceded from
its worker's threads holds no slot and no occupancy, and everything else about it is as
before (it finishes, errs, is rescheduled and blamed when its worker dies)."""

from __future__ import annotations

from test_state import add_worker, compute_keys, erred, finished, graph, sid, task

from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState


def long_running(key: str, worker: str) -> st.LongRunning:
    return st.LongRunning(sid(), key, worker)


def wide_graph_on_one_worker() -> SchedulerState:
    """One one-thread worker (two slots) holding t-0 and t-1; t-2.. queued."""
    s = SchedulerState(validate=True, chain_hints=False)
    s.handle(st.AddClient(sid(), "c1"))
    add_worker(s, "w1")
    _, wmsgs = s.handle(graph(*(task(f"t-{i}") for i in range(6))))
    assert compute_keys(wmsgs, "w1") == ["t-0", "t-1"]
    return s


def test_a_seceded_task_frees_its_slot_for_a_queued_task():
    s = wide_graph_on_one_worker()
    ws = s.workers["w1"]
    assert ws.occupancy > 0 and not ws.has_free_slot()
    _, wmsgs = s.handle(long_running("t-0", "w1"))
    assert compute_keys(wmsgs, "w1") == ["t-2"]
    ts = s.tasks["t-0"]
    assert ts.state == "processing" and ts.processing_on is ws and ts in ws.long_running
    assert ws.processing[ts] == 0.0
    assert any(t[1:3] == ("processing", "processing") for t in s.story("t-0"))
    # It finishes as any task does, and its slot is not freed twice.
    _, wmsgs = s.handle(finished("t-0", "w1"))
    assert s.tasks["t-0"].state == "memory" and not ws.long_running
    assert compute_keys(wmsgs, "w1") == []
    _, wmsgs = s.handle(finished("t-1", "w1"))
    assert compute_keys(wmsgs, "w1") == ["t-3"]


def test_a_second_or_stale_long_running_changes_nothing():
    s = wide_graph_on_one_worker()
    s.handle(long_running("t-0", "w1"))
    _, wmsgs = s.handle(long_running("t-0", "w1"))  # twice
    assert compute_keys(wmsgs, "w1") == []
    for stale in (long_running("t-5", "w1"), long_running("t-1", "w2"), long_running("nope", "w1")):
        _, wmsgs = s.handle(stale)  # queued, from another worker, unknown
        assert wmsgs == {}
    s.handle(finished("t-1", "w1"))
    _, wmsgs = s.handle(long_running("t-1", "w1"))  # after its result
    assert wmsgs == {} and s.tasks["t-1"].state == "memory"


def test_a_long_running_task_that_errs_or_is_cancelled_leaves_no_trace():
    s = wide_graph_on_one_worker()
    ws = s.workers["w1"]
    s.handle(long_running("t-0", "w1"))
    s.handle(long_running("t-1", "w1"))
    s.handle(erred("t-0", "w1"))
    s.handle(st.Cancel(sid(), "c1", ("t-1",)))
    assert s.tasks["t-0"].state == "erred" and "t-1" not in s.tasks
    assert not ws.long_running and all(t.key.startswith("t-") for t in ws.processing)


def test_the_death_of_its_worker_blames_and_reschedules_a_long_running_task():
    s = wide_graph_on_one_worker()
    s.handle(long_running("t-0", "w1"))
    s.handle(st.RemoveWorker(sid(), "w1", "killed", ("t-0", "t-2")))
    ts = s.tasks["t-0"]
    assert ts.suspicious == 1 and ts.state in ("queued", "no-worker")
    _, wmsgs = add_worker(s, "w2")
    assert "t-0" in compute_keys(wmsgs, "w2")
    assert not s.workers["w2"].long_running


def test_a_paused_worker_gets_no_slot_from_a_seceded_task():
    s = wide_graph_on_one_worker()
    s.handle(st.WorkerStatusChange(sid(), "w1", "paused"))
    _, wmsgs = s.handle(long_running("t-0", "w1"))
    assert compute_keys(wmsgs, "w1") == [] and not s.idle
    _, wmsgs = s.handle(st.WorkerStatusChange(sid(), "w1", "running"))
    assert compute_keys(wmsgs, "w1") == ["t-2"]
