"""Chain hints (#18 point 2), in the pure state machine: a task's worker gets, with it, each
dependent waiting for it alone, and runs it as soon as the task finishes there; the scheduler
takes the hint when the worker says it started it, and revokes it in every other case.

The real-cluster side (the worker following hints) is covered by every chain in the suite,
and measured by ``perf/bench_tasks.py``'s chain."""

from __future__ import annotations

import pickle

import pytest
from test_state import add_worker, graph, sid, task

from runtime.comm.messages import CancelCompute, ComputeTask, KeyErred, KeyInMemory
from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState


@pytest.fixture
def s() -> SchedulerState:
    state = SchedulerState(validate=True)  # chain_hints on: the default
    state.handle(st.AddClient(sid(), "c1"))
    add_worker(state, "w1")
    return state


def sent(worker_msgs: dict, worker: str) -> list:
    return [(type(m).__name__, m.key, getattr(m, "after", "")) for m in worker_msgs.get(worker, [])]


def done(key: str, worker: str, started: tuple[str, ...] = ()) -> st.TaskFinished:
    return st.TaskFinished(sid(), key, worker, b"v", 1, 0.0, 0.001, started)


def test_the_worker_of_a_task_gets_the_chain_below_it_and_the_scheduler_takes_each_link_when_started(s):
    _, wmsgs = s.handle(graph(task("a-1"), task("b-1", "a-1"), task("c-1", "b-1"), wanted=("c-1",)))
    hints = [("ComputeTask", "b-1", "a-1"), ("ComputeTask", "c-1", "b-1")]
    assert sent(wmsgs, "w1") == [("ComputeTask", "a-1", ""), *hints]
    assert wmsgs["w1"][1].deps == {}  # its one input is made there
    assert s.tasks["b-1"].hinted is s.workers["w1"] and s.tasks["b-1"].state == "waiting"
    _, wmsgs = s.handle(done("a-1", "w1", started=("b-1",)))
    assert sent(wmsgs, "w1") == []  # b runs there already, and c is there as a hint
    assert s.tasks["b-1"].state == "processing" and s.tasks["b-1"].processing_on is s.workers["w1"]
    assert [t[1:3] for t in s.story("b-1")][-1] == ("waiting", "processing")
    s.handle(done("b-1", "w1", started=("c-1",)))
    cmsgs, _ = s.handle(done("c-1", "w1"))
    assert cmsgs == {"c1": [KeyInMemory("c-1", b"v", 1)]}


def test_a_revoked_link_takes_the_links_below_it_and_they_come_again_with_it(s):
    s.handle(graph(task("a-1"), task("b-1", "a-1"), task("c-1", "b-1"), wanted=("c-1",)))
    _, wmsgs = s.handle(done("a-1", "w1"))  # b not started: its hint, and c's below it, are gone
    assert sent(wmsgs, "w1") == [
        ("CancelCompute", "b-1", ""), ("CancelCompute", "c-1", ""),
        ("ComputeTask", "b-1", ""), ("ComputeTask", "c-1", "b-1"),
    ]  # fmt: skip


def test_a_hint_not_taken_is_revoked_before_the_dependent_is_placed(s):
    s.handle(graph(task("a-1"), task("b-1", "a-1"), wanted=("b-1",)))
    _, wmsgs = s.handle(done("a-1", "w1"))  # the worker did not start b (the hint came too late)
    assert sent(wmsgs, "w1") == [("CancelCompute", "b-1", ""), ("ComputeTask", "b-1", "")]
    assert wmsgs["w1"][1].deps == {"a-1": b"v"} and s.tasks["b-1"].hinted is None


def test_a_hint_is_revoked_when_its_task_is_released_or_errs_or_its_input_leaves(s):
    s.handle(graph(task("a-1"), task("b-1", "a-1"), wanted=("b-1",)))
    _, wmsgs = s.handle(st.ClientReleasesKeys(sid(), "c1", ("b-1",)))
    assert ("CancelCompute", "b-1", "") in sent(wmsgs, "w1") and ("CancelCompute", "a-1", "") in sent(wmsgs, "w1")

    s.handle(graph(task("a-2"), task("b-2", "a-2"), wanted=("b-2",)))
    exc = pickle.dumps(ValueError("boom"))
    cmsgs, wmsgs = s.handle(st.TaskErred(sid(), "a-2", "w1", exc, "tb", "ValueError: boom"))
    assert sent(wmsgs, "w1") == [("CancelCompute", "b-2", "")]
    assert [type(m) for m in cmsgs["c1"]] == [KeyErred] and s.tasks["b-2"].hinted is None


def test_a_worker_that_dies_takes_its_hints_and_the_next_worker_gets_them_anew(s):
    add_worker(s, "w2", node="n2")
    _, wmsgs = s.handle(graph(task("a-1"), task("b-1", "a-1"), wanted=("b-1",)))
    first = s.tasks["a-1"].processing_on.address
    other = "w2" if first == "w1" else "w1"
    _, wmsgs = s.handle(st.RemoveWorker(sid(), first, "killed"))
    assert first not in wmsgs  # nothing to a dead worker
    assert sent(wmsgs, other) == [("ComputeTask", "a-1", ""), ("ComputeTask", "b-1", "a-1")]
    s.handle(done("a-1", other, started=("b-1",)))
    assert s.tasks["b-1"].processing_on is s.workers[other]


def test_only_a_dependent_that_waits_for_that_task_alone_and_may_run_anywhere_is_hinted(s):
    both = task("c-1", "a-1", "b-1")
    restricted = st.TaskSpec("r-1", (b"f", b"x"), ("a-1",), 0, "r", ("w1",))
    _, wmsgs = s.handle(graph(task("a-1"), task("b-1"), both, restricted, wanted=("c-1", "r-1")))
    hints = [m.key for m in wmsgs["w1"] if type(m) is ComputeTask and m.after]
    assert hints == []  # c waits for two tasks; r is restricted (the rules might put it elsewhere)


def test_a_started_report_for_a_revoked_hint_changes_nothing(s):
    s.handle(graph(task("a-1"), task("b-1", "a-1"), wanted=("b-1",)))
    s.handle(st.ClientReleasesKeys(sid(), "c1", ("b-1",)))  # revoked; a released too
    s.handle(graph(task("a-1"), task("b-1", "a-1"), wanted=("b-1",)))  # again, a new hint
    _, wmsgs = s.handle(done("a-1", "w1", started=("b-1",)))
    assert s.tasks["b-1"].state == "processing" and sent(wmsgs, "w1") == []
    assert isinstance(wmsgs, dict) and CancelCompute("b-1") not in wmsgs.get("w1", [])


def test_the_many_dependents_of_one_task_are_not_hinted_to_its_worker(s):
    add_worker(s, "w2", node="n2")
    _, wmsgs = s.handle(graph(task("a-1"), *[task(f"b-{i}", "a-1") for i in range(4)], wanted=("b-0", "b-1")))
    assert not [m for msgs in wmsgs.values() for m in msgs if type(m) is ComputeTask and m.after]


def test_a_hinted_task_that_loses_another_input_is_no_hint_any_more(s):
    from runtime.comm.messages import StoreRef

    add_worker(s, "w2", node="n2")
    _, wmsgs = s.handle(graph(task("p-1")))
    where = s.tasks["p-1"].processing_on
    value = StoreRef(where.node, 10, "rt-1-abcdef-" + "0" * 28)
    s.handle(st.TaskFinished(sid(), "p-1", where.address, value, 10, 0.0, 0.001))
    _, wmsgs = s.handle(graph(task("a-1"), task("b-1", "a-1", "p-1"), wanted=("b-1",)))
    hinted = s.tasks["b-1"].hinted
    assert hinted is s.tasks["a-1"].processing_on  # b waits for a alone: a hint with a
    _, wmsgs = s.handle(st.RemoveNode(sid(), where.node, "gone"))  # p's only copy goes with it
    if hinted.address in s.workers:
        assert ("CancelCompute", "b-1", "") in sent(wmsgs, hinted.address)
    assert s.tasks["b-1"].hinted is None or s.tasks["b-1"].hinted is not hinted
