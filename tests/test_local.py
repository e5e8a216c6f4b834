"""The local schedulers (sync, threads, processes) against the distributed one: the same
small programs give the same results and the same errors on each."""

from __future__ import annotations

import gc
import os
import re
import threading
import time

import pytest

import runtime as rt
from runtime import config, local

ALL = ["distributed", "sync", "threads", "processes"]
LOCAL = ["sync", "threads", "processes"]


@rt.remote
def inc(x):
    return x + 1


@rt.remote
def add(*xs):
    return sum(xs)


@rt.remote
def total(d):
    return d["a"] + sum(d["rest"])


@rt.remote
def boom(x):
    raise ValueError(f"boom {x}")


@rt.remote
def slow(x, seconds):
    time.sleep(seconds)
    return x


@rt.remote
def where():
    return os.getpid(), threading.get_ident()


@rt.remote
def flaky(path):
    """Fails until it has run three times (counted in a file: it may run in other processes)."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        if len(f.read()) < 3:
            raise OSError("not yet")
    return "ok"


@pytest.fixture
def scheduler(request, cluster):
    """Run the test under one scheduler (the cluster fixture serves "distributed")."""
    with config.set(scheduler=request.param):
        yield request.param
    local.shutdown()


def _same_note(exc: BaseException) -> str:
    """The note on an error with task keys and the worker taken out: equal on every scheduler."""
    note = exc.__notes__[-1]
    return re.sub(r" on worker \S+", "", re.sub(r"'[\w.]+-\w+'", "KEY", note))


@pytest.mark.parametrize("scheduler", ALL, indirect=True)
def test_same_results(scheduler):
    a = inc.remote(1)
    b = add.remote(a, inc.remote(a), 10)
    p = rt.put([1, 2, 3])
    c = total.remote({"a": b, "rest": [a, (a, b)[0]]})
    d = add.remote(*[inc.remote(i) for i in range(20)])
    assert rt.get([a, b, c, p, d]) == [2, 15, 19, [1, 2, 3], 210]
    assert rt.get(a) == 2 and a.result() == 2
    done, pending = rt.wait([d, c], num_returns=2, timeout=30)
    assert done == [d, c] and pending == []
    x, y = where.options(num_returns=2).remote()  # (pid, thread) in two futures
    assert len(rt.get([x, y])) == 2


@pytest.mark.parametrize("scheduler", ALL, indirect=True)
def test_same_errors(scheduler):
    e = boom.remote(1)
    dependent = inc.remote(e)
    with pytest.raises(ValueError, match="boom 1") as raised:
        rt.get(e)
    assert _same_note(raised.value) == "raised by task KEY"
    with pytest.raises(ValueError, match="boom 1") as raised:
        rt.get([inc.remote(1), dependent])
    assert _same_note(raised.value) == "task KEY failed because its dependency KEY raised"
    # A second get raises again, with one note, not two.
    with pytest.raises(ValueError) as again:
        dependent.result()
    assert len(again.value.__notes__) == 1


@pytest.mark.parametrize("scheduler", ALL, indirect=True)
def test_retries_and_cancel(scheduler, tmp_path):
    assert rt.get(flaky.options(retries=2).remote(str(tmp_path / "a"))) == "ok"
    with pytest.raises(OSError, match="not yet"):
        rt.get(flaky.options(retries=1).remote(str(tmp_path / "b")))
    s = slow.remote(1, 0.5 if scheduler != "sync" else 0)
    after = inc.remote(s)
    rt.cancel(s)
    with pytest.raises(rt.TaskCancelledError):
        rt.get(after)


@pytest.mark.parametrize("scheduler", ["distributed", "threads", "processes"], indirect=True)
def test_timeout_leaves_futures_usable(scheduler):
    f = slow.remote(7, 1.0)
    with pytest.raises(rt.GetTimeoutError):
        rt.get(f, timeout=0.05)
    done, pending = rt.wait([f], num_returns=1, timeout=0.01)
    assert (done, pending) == ([], [f])
    assert rt.get(f, timeout=60) == 7


def test_sync_runs_in_the_calling_thread_in_a_fixed_order():
    order = []

    @rt.remote
    def note(i, *deps):
        order.append((i, threading.get_ident()))
        return i

    def program():
        order.clear()
        leaves = [note.remote(i) for i in range(6)]
        pairs = [note.remote(10 + i, leaves[2 * i], leaves[2 * i + 1]) for i in range(3)]
        rt.get(note.remote(99, *pairs))
        return list(order)

    with config.set(scheduler="sync"):
        first, second = program(), program()
    local.shutdown()
    assert first == second  # deterministic
    assert {t for _, t in first} == {threading.get_ident()}  # so pdb works
    # Depth first: a pair runs as soon as its two leaves are done, not after all leaves.
    assert [i for i, _ in first][:3] == [0, 1, 10]


def test_per_call_scheduler_wins_over_the_setting():
    here = os.getpid(), threading.get_ident()
    with config.set(scheduler="sync"):
        f = where.remote()
        assert rt.get(f) == here
        pid, thread = rt.get(where.remote(), scheduler="threads")
        assert pid == os.getpid() and thread != here[1]
        assert rt.get(where.remote(), scheduler="processes")[0] != os.getpid()
        with pytest.raises(ValueError, match="local scheduler"):
            rt.get(where.remote(), scheduler="distributed")
        with pytest.raises(ValueError, match="unknown|expected one of"):
            rt.get(f, scheduler="dask")
    local.shutdown()


def test_nested_get_in_a_task_does_not_deadlock():
    @rt.remote
    def outer(x):
        return rt.get(inc.remote(x)) * 10

    with config.set(scheduler="threads", num_workers=1):
        assert rt.get([outer.remote(i) for i in range(3)], timeout=60) == [10, 20, 30]
    local.shutdown()


def test_processes_dead_process_and_unpicklable_argument():
    @rt.remote
    def die():
        os._exit(3)

    with config.set(scheduler="processes", num_workers=1):
        with pytest.raises(rt.KilledWorker, match="process died"):
            rt.get(die.remote(), timeout=60)
        lock = threading.Lock()
        with pytest.raises(TypeError, match="argument 0 of inc"):
            rt.get(inc.remote(lock), timeout=60)
        assert rt.get(inc.remote(1), timeout=60) == 2  # the pool came back
    local.shutdown()


def test_released_futures_leave_the_local_scheduler():
    with config.set(scheduler="sync"):
        refs = [inc.remote(i) for i in range(50)]
        assert rt.get(add.remote(*refs)) == sum(range(1, 51))
        ls = local.local_scheduler()
        del refs
        rt.get(rt.put(1))  # a later call hands the releases to the state machine
        assert len(ls.state.tasks) <= 1
        # Futures dropped before their graph ran (released while the next .remote() calls
        # come in): their tasks still run for the root, then nothing is left.
        refs = [inc.remote(i) for i in range(1200)]
        root = add.remote(*refs)
        del refs
        assert rt.get([inc.remote(0), root]) == [1, sum(range(1, 1201))]
        del root
        rt.get(rt.put(1))
        assert len(ls.state.tasks) <= 1
    local.shutdown()


def test_what_the_gc_froze_for_a_graph_is_given_back():
    """.remote() calls freeze what they made for the cyclic GC; the get that runs the graph,
    or shutting the scheduler down when none comes, unfreezes it, so no cycle is lost."""
    gc.unfreeze()
    with config.set(scheduler="sync"):
        refs = [inc.remote(i) for i in range(300)]
        assert gc.get_freeze_count() > 0
        assert rt.get(add.remote(*refs)) == sum(range(1, 301))
        assert gc.get_freeze_count() == 0
        refs = [inc.remote(i) for i in range(300)]
        assert gc.get_freeze_count() > 0
        local.shutdown()
        assert gc.get_freeze_count() == 0
        del refs
    local.shutdown()


def test_sync_ctrl_c_in_a_task_leaves_it_to_run_again():
    calls = []

    @rt.remote
    def interrupted(x):
        calls.append(x)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return x

    with config.set(scheduler="sync"):
        f = interrupted.remote(5)
        with pytest.raises(KeyboardInterrupt):
            rt.get(f)
        assert rt.get(f) == 5 and calls == [5, 5]
    local.shutdown()
