"""Work stealing on the pure state machine: the policy (``stealing.balance``) and the steal
protocol's stimuli (``RequestSteals``, ``StealResponse``), including the races where the
victim starts or finishes the task as it is stolen."""

from __future__ import annotations

from test_state import add_worker, compute_keys, finished, sid

from runtime.comm.messages import CancelCompute, StealRequest, StoreRef
from runtime.scheduler import stealing
from runtime.scheduler import stimuli as st
from runtime.scheduler.actors import ACTORS_CLIENT
from runtime.scheduler.state import SchedulerState

RUN = (b"func", b"args")


def spec(key: str, *deps: str, workers: tuple[str, ...] = ("w1",), loose: bool = True) -> st.TaskSpec:
    return st.TaskSpec(key, RUN, deps, 0, key.split("-")[0], workers, None, loose)


def two_nodes(n: int = 8, nbytes: int = 1_000_000, loose: bool = True, client: str = "c1") -> SchedulerState:
    """w1 on n1 and w2 on n2, one thread each; input x-i stored on n1 for each task f-i,
    all placed on w1 (its restriction; loose unless told)."""
    s = SchedulerState(validate=True)
    s.handle(st.AddClient(sid(), client))
    add_worker(s, "w1", "n1")
    add_worker(s, "w2", "n2")
    for i in range(n):
        s.handle(st.UpdateData(sid(), client, f"x-{i}", StoreRef("n1", nbytes, f"obj-{i}"), nbytes))
    tasks = tuple(spec(f"f-{i}", f"x-{i}", loose=loose) for i in range(n))
    _, wmsgs = s.handle(st.UpdateGraph(sid(), client, tasks, tuple(t.key for t in tasks)))
    assert compute_keys(wmsgs, "w1") == [f"f-{i}" for i in range(n)]
    return s


def request(s: SchedulerState, moves: list[tuple[str, str, str]]) -> tuple[str, dict]:
    stimulus = st.RequestSteals(sid(), tuple(moves))
    _, wmsgs = s.handle(stimulus)
    return stimulus.stimulus_id, wmsgs


def answer(s: SchedulerState, key: str, worker: str, req: str, state: str) -> dict:
    _, wmsgs = s.handle(st.StealResponse(sid(), key, worker, req, state))
    return wmsgs


def test_balance_takes_the_last_queued_tasks_of_a_saturated_worker_for_an_idle_one():
    s = two_nodes()
    # w2 takes tasks until it holds half the average work per thread (4 s / 2 / 2): the ones w1 would start last.
    assert stealing.balance(s) == [("f-7", "w1", "w2"), ("f-6", "w1", "w2")]


def test_a_confirmed_steal_moves_the_task_to_the_thief():
    s = two_nodes()
    w1, w2 = s.workers["w1"], s.workers["w2"]
    req, wmsgs = request(s, stealing.balance(s))
    assert wmsgs == {"w1": [StealRequest("f-7", req), StealRequest("f-6", req)]}
    ts = s.tasks["f-7"]
    assert ts.processing_on is w1 and s.steals[ts].thief is w2
    assert stealing.balance(s) == []  # the thief is full once the steals in flight land
    wmsgs = answer(s, "f-7", "w1", req, "queued")
    assert wmsgs["w1"] == [CancelCompute("f-7")]  # a no-op on the victim, which dropped it
    assert compute_keys(wmsgs, "w2") == ["f-7"]
    compute = wmsgs["w2"][0]
    assert compute.deps == {"x-7": StoreRef("n1", 1_000_000, "obj-7")} and "n1" in compute.sources
    assert ts.processing_on is w2 and ts not in w1.processing and ts not in s.steals
    assert abs(w1.occupancy + w2.occupancy - 8 * 0.5) < 1e-9
    s.handle(finished("f-7", "w2"))
    assert ts.state == "memory"
    story = [(t[1], t[2], t[4]) for t in s.story("f-7")]
    assert (("processing", "processing", req)) in story  # asked for
    moved = [(a, b) for a, b, sid_ in story if sid_ not in (req, story[0][2])]
    assert moved[:4] == [("processing", "processing"), ("processing", "released"), ("released", "waiting"),
                         ("waiting", "processing")]  # fmt: skip


def test_a_victim_that_started_the_task_keeps_it_and_is_not_asked_again():
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2")])
    assert answer(s, "f-7", "w1", req, "executing") == {}
    ts = s.tasks["f-7"]
    assert ts.processing_on is s.workers["w1"] and s.steals[ts].declined
    assert ("f-7", "w1", "w2") not in stealing.balance(s)
    req2, wmsgs = request(s, [("f-7", "w1", "w2")])  # a stale suggestion: checked again, dropped
    assert wmsgs == {}
    s.handle(finished("f-7", "w1"))
    assert ts.state == "memory" and ts not in s.steals


def test_a_victim_that_finishes_the_task_as_it_is_stolen_keeps_its_result():
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2")])
    s.handle(finished("f-7", "w1"))  # its result went before its answer
    ts = s.tasks["f-7"]
    assert ts.state == "memory" and ts not in s.steals
    for state in ("gone", "queued", "executing"):  # whatever it says, the steal is void
        assert answer(s, "f-7", "w1", req, state) == {}
        assert ts.state == "memory"


def test_an_answer_to_an_older_request_is_stale():
    """f-7 is cancelled and submitted again while the request is out, and lands on the same
    victim: the victim dropped the old run, but runs the new one; the answer moves nothing."""
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2")])
    s.handle(st.Cancel(sid(), "c1", ("f-7",)))
    assert "f-7" not in s.tasks
    _, wmsgs = s.handle(st.UpdateGraph(sid(), "c1", (spec("f-7", "x-7"),), ("f-7",)))
    assert compute_keys(wmsgs, "w1") == ["f-7"]
    assert answer(s, "f-7", "w1", req, "queued") == {}
    assert s.tasks["f-7"].processing_on is s.workers["w1"]
    # An answer from another worker than the victim, or naming another request, is ignored too.
    req2, _ = request(s, [("f-7", "w1", "w2")])
    assert answer(s, "f-7", "w2", req2, "queued") == {} and answer(s, "f-7", "w1", "nope", "queued") == {}
    assert answer(s, "nope", "w1", req2, "queued") == {}
    assert s.tasks["f-7"].processing_on is s.workers["w1"]


def test_a_thief_gone_before_the_answer_leaves_the_task_to_placement():
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2")])
    s.handle(st.RemoveWorker(sid(), "w2"))
    wmsgs = answer(s, "f-7", "w1", req, "queued")
    assert compute_keys(wmsgs, "w1") == ["f-7"] and wmsgs["w1"][0] == CancelCompute("f-7")
    assert s.tasks["f-7"].processing_on is s.workers["w1"]
    assert s.events[-1] == ("stealing", ("reschedule", "f-7", "queued", "w1", "w2", req))


def test_a_thief_paused_before_the_answer_is_passed_over():
    s = two_nodes()
    add_worker(s, "w3", "n2")
    req, _ = request(s, [("f-7", "w1", "w3")])
    s.handle(st.WorkerStatusChange(sid(), "w3", "paused"))
    wmsgs = answer(s, "f-7", "w1", req, "queued")
    assert compute_keys(wmsgs, "w3") == []
    assert s.tasks["f-7"].processing_on is not s.workers["w3"]


def test_a_victim_that_dies_voids_its_steals():
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2")])
    _, wmsgs = s.handle(st.RemoveWorker(sid(), "w1"))
    assert not s.steals and "f-7" in compute_keys(wmsgs, "w2")
    assert answer(s, "f-7", "w1", req, "queued") == {}


def test_what_is_never_stolen():
    # a strict restriction, long-running tasks, actors' creations, work that moving costs more than
    s = two_nodes(loose=False)
    assert stealing.balance(s) == []
    s = two_nodes()
    for i in range(4, 8):
        s.handle(st.LongRunning(sid(), f"f-{i}", "w1"))
    assert stealing.balance(s) == [("f-3", "w1", "w2")]  # not the long-running ones
    s = two_nodes(client=ACTORS_CLIENT)
    assert stealing.balance(s) == []
    s = two_nodes(nbytes=10**10)  # 100 s to move each input, 0.5 s to compute
    assert stealing.balance(s) == []
    s = two_nodes(n=2)  # one runs, one waits 0.5 s: worth a 0.01 s fetch
    assert stealing.balance(s) == [("f-1", "w1", "w2")]
    s = two_nodes(n=2, nbytes=30_000_000)  # but not a 0.3 s one (0.3 + 0.5 > 1.0 - 0.5 / 2)
    assert stealing.balance(s) == []


def test_a_move_that_no_longer_holds_is_not_requested():
    s = two_nodes()
    s.handle(finished("f-7", "w1"))
    req, wmsgs = request(s, [("f-7", "w1", "w2"), ("f-6", "w2", "w1"), ("f-5", "w1", "w9"), ("f-4", "w1", "w1")])
    assert wmsgs == {} and not s.steals


def test_cost_levels():
    s = two_nodes(n=1)
    ts = s.tasks["f-0"]
    assert stealing.steal_level(s, ts) == round(6 + __import__("math").log2((0.01 + 0.1) / 0.5))
    s.task_durations["f"] = 0.001
    assert stealing.steal_level(s, ts) is not None  # 110x: costly, but allowed
    s.task_durations["f"] = 0.0001
    assert stealing.steal_level(s, ts) is None  # 1100x: never


def test_a_late_answer_to_a_voided_request_does_not_move_the_task_of_a_newer_one():
    """r0 is voided (f-7 cancelled, submitted again, back on w1), r1 asks again: r0's late
    "queued" is about the run w1 dropped before the new one arrived; only r1's answer counts."""
    s = two_nodes()
    r0, _ = request(s, [("f-7", "w1", "w2")])
    s.handle(st.Cancel(sid(), "c1", ("f-7",)))
    s.handle(st.UpdateGraph(sid(), "c1", (spec("f-7", "x-7"),), ("f-7",)))
    r1, wmsgs = request(s, [("f-7", "w1", "w2")])
    assert wmsgs == {"w1": [StealRequest("f-7", r1)]}
    assert answer(s, "f-7", "w1", r0, "queued") == {}
    assert s.tasks["f-7"].processing_on is s.workers["w1"]
    assert compute_keys(answer(s, "f-7", "w1", r1, "queued"), "w2") == ["f-7"]


def test_what_stealing_does_is_left_for_the_event_log_as_dask_logs_it():
    s = two_nodes()
    req, _ = request(s, [("f-7", "w1", "w2"), ("f-6", "w1", "w2"), ("f-5", "w1", "w2")])
    assert s.events == [("stealing", ("request", [["f-7", "w1", "w2"], ["f-6", "w1", "w2"], ["f-5", "w1", "w2"]]))]
    s.events.clear()
    answer(s, "f-7", "w1", req, "queued")
    answer(s, "f-6", "w1", req, "executing")
    answer(s, "f-6", "w1", req, "executing")  # declined already: nothing more to say of it
    answer(s, "f-5", "w1", "an-older-request", "queued")
    answer(s, "nope", "w1", req, "queued")
    assert s.events == [
        ("stealing", ("confirm", "f-7", "queued", "w1", "w2", req)),
        ("stealing", ("already-computing", "f-6", "executing", "w1", "w2", req)),
        ("stealing", ("already-aborted", "f-6", "executing", "w1", req)),
        ("stealing", ("stale-response", "f-5", "queued", "w1", "an-older-request")),
        ("stealing", ("already-aborted", "nope", "queued", "w1", req)),
    ]
