"""The extensions' pure states and the plugin host, with no process or socket."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from runtime.scheduler import stimuli as st
from runtime.scheduler.extensions.event import EventState
from runtime.scheduler.extensions.multi_lock import MultiLockState
from runtime.scheduler.extensions.queues import QueueState
from runtime.scheduler.extensions.semaphores import SemaphoreState
from runtime.scheduler.extensions.variables import VariableState
from runtime.scheduler.plugins import Plugins, SchedulerPlugin, TransitionTap
from runtime.scheduler.state import SchedulerState

# -- semaphores ---------------------------------------------------------------------------


def test_semaphore_grants_at_most_max_leases_then_in_order():
    s = SemaphoreState()
    s.register("db", 2, None)
    assert s.acquire("db", "l1", "c1", 0.0) and s.acquire("db", "l2", "c2", 0.0)
    assert not s.acquire("db", "l3", "c3", 0.0)
    s.wait("db", 3, "l3", "c3")
    s.wait("db", 4, "l4", "c4")
    assert s.value("db") == 2
    assert s.release("db", "l1", 1.0) == [3]  # the first waiter, not the second
    assert s.release("db", "l2", 1.0) == [4]
    assert s.value("db") == 2
    with pytest.raises(ValueError, match="not held"):
        s.release("db", "l1", 1.0)


def test_semaphore_a_client_that_leaves_releases_its_leases_and_waits():
    s = SemaphoreState()
    s.register("x", 1, None)
    assert s.acquire("x", "held", "dead", 0.0)
    s.wait("x", 1, "w1", "dead")
    s.wait("x", 2, "w2", "alive")
    assert s.client_gone("dead", 1.0) == [2]
    assert s.sems["x"].leases.keys() == {"w2"}
    assert not s.waiting_on


def test_semaphore_lease_expires_unless_refreshed():
    s = SemaphoreState()
    s.register("x", 1, 5.0)
    s.acquire("x", "a", "c1", 0.0)
    s.wait("x", 7, "b", "c2")
    assert s.refresh("x", ["a", "gone"], 4.0) == ["gone"]
    assert list(s.expire(8.0)) == []  # refreshed at 4
    assert list(s.expire(9.5)) == [("x", "a", [7])]


def test_semaphore_bad_registration():
    s = SemaphoreState()
    with pytest.raises(TypeError, match="max_leases"):
        s.register("x", "2", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_leases"):
        s.register("x", 0, None)
    s.register("x", 2, None)
    with pytest.raises(ValueError, match="max_leases=2"):
        s.register("x", 3, None)
    with pytest.raises(KeyError, match="no semaphore"):
        s.acquire("nope", "l", "c", 0.0)


# -- multi-locks --------------------------------------------------------------------------


def test_multi_lock_overlapping_sets_never_deadlock():
    m = MultiLockState()
    assert m.acquire("A", ["a", "b"], None, "c")
    assert not m.acquire("B", ["b", "c"], None, "c")
    assert not m.acquire("C", ["c", "a"], None, "c")
    assert m.locked(["c"]) is False and m.locked(["a"]) is True
    assert m.release("A") == ["B"]  # B was queued first on b and on c
    assert m.release("B") == ["C"]
    assert m.release("C") == []
    assert not m.queues and not m.requests


def test_multi_lock_num_locks_and_bad_input():
    m = MultiLockState()
    assert m.acquire("A", ["a"], None, "c")
    assert m.acquire("B", ["a", "b"], 1, "c")  # holds b: one is enough
    with pytest.raises(ValueError, match="num_locks"):
        m.acquire("C", ["a"], 2, "c")
    with pytest.raises(ValueError, match="acquired already"):
        m.acquire("A", ["x"], None, "c")
    with pytest.raises(ValueError, match="not acquired"):
        m.release("nope")
    assert m.client_gone("c") == []
    assert not m.requests


# -- queues -------------------------------------------------------------------------------


def _v(x: int) -> dict:
    return {"value": bytes([x])}


def test_queue_fifo_hand_off_and_batches():
    q = QueueState()
    q.create("q", 0)
    assert q.get("q", False) is None
    q.wait_get("q", 1, 0)
    assert q.put("q", _v(1)) == (True, [(1, _v(1))])  # straight to the waiting getter
    q.put("q", _v(2))
    q.put("q", _v(3))
    assert q.qsize("q") == 2
    assert q.get("q", True) == [_v(2), _v(3)]
    assert q.get("q", True) == []
    q.wait_get("q", 2, 2)
    assert q.put("q", _v(4)) == (True, [])
    assert q.put("q", _v(5)) == (True, [(2, [_v(4), _v(5)])])


def test_queue_maxsize_makes_puts_wait():
    q = QueueState()
    q.create("q", 1)
    assert q.put("q", _v(1)) == (True, [])
    assert q.put("q", _v(2)) == (False, [])
    q.wait_put("q", 9, _v(2))
    assert q.get("q", False) == _v(1)
    assert q.qsize("q") == 1 and not q.waiting_on  # the waiting put went in
    with pytest.raises(ValueError, match="maxsize=1"):
        q.create("q", 5)
    with pytest.raises(TypeError, match="maxsize"):
        q.create("r", -1)


def test_queue_a_dropped_getter_takes_nothing():
    q = QueueState()
    q.create("q", 0)
    q.wait_get("q", 1, 0)  # its reader died
    q.wait_get("q", 2, 0)
    assert q.drop_waiter(1) == []
    assert q.put("q", _v(1)) == (True, [(2, _v(1))])


# -- variables and events -----------------------------------------------------------------


def test_variable_set_wakes_waiters_and_returns_what_it_replaced():
    v = VariableState()
    v.wait("x", 1)
    v.wait("x", 2)
    v.drop_waiter(2)
    assert v.set("x", _v(1)) == (None, [1])
    assert v.set("x", _v(2)) == (_v(1), [])
    assert v.delete("x") == _v(2) and v.delete("x") is None


def test_event_set_clear_wait():
    e = EventState()
    e.wait("go", 1)
    assert not e.is_set("go")
    assert e.set("go") == [1]
    assert e.is_set("go")
    e.clear("go")
    e.wait("go", 2)
    e.drop_waiter(2)
    assert e.set("go") == [] and not e.waiters


# -- the plugin host ----------------------------------------------------------------------


class Recorder(SchedulerPlugin):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        self.seen.append((key, start, finish, stimulus_id))

    def add_client(self, scheduler: Any, client: str) -> None:
        self.seen.append(("add-client", client))

    def update_graph(self, scheduler: Any, *, client: str, keys: set, tasks: list, **kwargs: Any) -> None:
        self.seen.append(("update-graph", client, tuple(tasks)))


class Broken(SchedulerPlugin):
    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        raise RuntimeError("boom")


def _shell() -> tuple[SchedulerState, Plugins]:
    state = SchedulerState(validate=True)
    plugins = Plugins(SimpleNamespace(state=state))  # type: ignore[arg-type]

    def handle(stimulus: st.Stimulus) -> None:
        state.handle(stimulus)
        plugins.after(stimulus)

    plugins.handle = handle  # type: ignore[attr-defined]
    return state, plugins


def test_plugins_hear_each_transition_in_order_and_a_raising_one_is_removed(caplog):
    state, plugins = _shell()
    assert not isinstance(state.transition_log, TransitionTap)  # no transition hook: no tap
    rec = Recorder()
    plugins.add(rec, "rec")
    plugins.add(Broken(), "broken")
    assert isinstance(state.transition_log, TransitionTap)
    plugins.handle(st.AddClient("ac", "c"))  # type: ignore[attr-defined]
    plugins.handle(st.UpdateGraph("ug", "c", (st.TaskSpec("t-1", (b"f", b"a")),), ("t-1",)))  # type: ignore[attr-defined]
    assert rec.seen == [("add-client", "c"), ("update-graph", "c", ("t-1",)), ("t-1", "released", "waiting", "ug"),
                        ("t-1", "waiting", "no-worker", "ug")]  # fmt: skip
    assert list(plugins.plugins) == ["rec"]
    assert "broken raised in transition" in caplog.text
    plugins.remove("rec")
    assert not isinstance(state.transition_log, TransitionTap)
    assert [e[0] for e in state.transition_log] == ["t-1"] * 3  # the log kept its entries
