"""The Dask-style futures Client on a real two-worker cluster it started itself."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import io
import os
import sys
import threading
import time
import traceback

import cloudpickle
import numpy as np
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime import (
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Client,
    GetTimeoutError,
    LocalCluster,
    TaskCancelledError,
    WorkerPlugin,
    as_completed,
    wait,
)

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(x, y=0):
    return x + y


def boom(x):
    raise ValueError(f"boom {x}")


def slow_inc(x, delay=0.3):
    time.sleep(delay)
    return x + 1


def spin(seconds):
    """Busy in Python bytecode: an asynchronous exception reaches it at once."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


def started(path, then, *args):
    """Note that the task is running (a file at ``path``), then call ``then(*args)``."""
    open(path, "w").close()
    return then(*args)


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2) as c, validated(c.core):
        yield c
    # The cluster it started is gone, store objects and all.
    assert c.cluster is not None and not os.path.exists(c.cluster.session_dir)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(c.cluster.prefix)]


# -- submit and map --------------------------------------------------------------------


def test_submit_pure_keys_and_options(client):
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    assert a.key == b.key and a.key.startswith("inc-")
    assert a.result(30) == 2
    # A large argument goes by reference (runtime.ClusterClient.pickle_args); the key is
    # still a hash of the argument itself.
    big = np.ones(1_000_000)
    s1, s2 = client.submit(np.sum, big), client.submit(np.sum, big)
    assert s1.key == s2.key and s1.result(30) == 1e6
    assert client.gather(client.map(np.sum, [big, big * 2])) == [1e6, 2e6]
    c, d = client.submit(inc, 1, pure=False), client.submit(inc, 1, pure=False)
    assert c.key != d.key
    e = client.submit(add, a, y=10, key="my-key", priority=5, retries=1, workers=list(client.nthreads()))
    assert e.key == "my-key" and e.result(30) == 12


def test_submit_bad_arguments_name_what_was_wrong(client):
    with pytest.raises(TypeError, match="callable"):
        client.submit(42)
    with pytest.raises(TypeError, match="key"):
        client.submit(inc, 1, key=7)
    with pytest.raises(ValueError, match="retries"):
        client.submit(inc, 1, retries=-1)
    with pytest.raises(ValueError, match="resources"):
        client.submit(inc, 1, resources={"GPU": -1})


def test_map_many_iterables_batches_and_keys(client):
    futures = client.map(add, range(25), range(100, 125), batch_size=7)
    assert client.gather(futures) == [x + y for x, y in zip(range(25), range(100, 125), strict=True)]
    named = client.map(inc, [1, 2], key=["first", "second"])
    assert [f.key for f in named] == ["first", "second"]
    prefixed = client.map(inc, [1, 2], key="incs")
    assert all(f.key.startswith("incs-") for f in prefixed)
    assert client.submit(sum, futures).result(30) == sum(range(25)) + sum(range(100, 125))
    with pytest.raises(TypeError, match="callable"):
        client.map(None, [1])
    with pytest.raises(TypeError, match="argument 1"):
        client.map(inc, 5)
    with pytest.raises(ValueError, match="one non-empty string per item"):
        client.map(inc, [1, 2], key=["only-one"])
    with pytest.raises(ValueError, match="batch_size"):
        client.map(inc, [1], batch_size=0)


# -- results ---------------------------------------------------------------------------


def test_gather_nested_and_errors(client):
    good, bad = client.submit(inc, 1), client.submit(boom, 1)
    assert client.gather({"a": [good, (good, 3)], "b": good}) == {"a": [2, (2, 3)], "b": 2}
    assert list(client.gather(iter([good, good]))) == [2, 2]
    with pytest.raises(ValueError, match="boom 1") as info:
        client.gather([good, bad])
    assert any("raised by task" in note for note in info.value.__notes__)
    # Dask: failed futures are left out of lists, None elsewhere
    assert client.gather([good, bad, (bad,), {"x": bad}], errors="skip") == [2, (None,), {"x": None}]
    with pytest.raises(ValueError, match='errors must be "raise" or "skip"'):
        client.gather([good], errors="ignore")


def test_result_timeout_expires_and_future_stays_usable(client):
    f = client.submit(slow_inc, 1, delay=1.5, pure=False)
    with pytest.raises(GetTimeoutError):
        f.result(timeout=0.05)
    assert f.result(timeout=60) == 2


def test_exception_traceback_and_done_callbacks(client):
    bad = client.submit(boom, 2)
    exc = bad.exception(30)
    assert isinstance(exc, ValueError) and "boom 2" in str(exc)
    assert "in boom" in "".join(traceback.format_tb(bad.traceback()))  # a traceback object, as Dask's
    good = client.submit(inc, 2)
    assert good.exception(30) is None and good.traceback() is None
    seen = []
    event = threading.Event()
    pending = client.submit(slow_inc, 5, pure=False)
    pending.add_done_callback(lambda f: (seen.append(f.result()), event.set()))
    assert event.wait(30) and seen == [6]
    good.add_done_callback(lambda f: seen.append("already done"))  # runs at once, here
    assert seen[-1] == "already done"
    with pytest.raises(TypeError, match="callable"):
        good.add_done_callback("nope")


def test_cancel_pending_future(client):
    f = client.submit(slow_inc, 1, delay=1, pure=False)
    client.cancel(f)
    with pytest.raises(TaskCancelledError):
        f.result(30)
    assert f.cancelled()
    with pytest.raises(TypeError, match="Future"):
        client.cancel([f, "not a future"])


def test_force_cancel_interrupts_a_python_loop(client, tmp_path):
    before = client.nthreads()
    mark = tmp_path / "running"
    f = client.submit(started, str(mark), spin, 300, pure=False)
    wait_until(mark.exists, "the task has started")
    f.cancel(force=True)
    with pytest.raises(TaskCancelledError):
        f.result(30)
    # The worker lived on: the same workers run the next tasks.
    assert client.gather(client.map(inc, range(4), pure=False)) == [1, 2, 3, 4]
    assert client.nthreads() == before


def test_force_cancel_of_a_running_sleep_restarts_its_worker(client, tmp_path):
    mark = tmp_path / "running"
    f = client.submit(started, str(mark), time.sleep, 300, pure=False)
    wait_until(mark.exists, "the task has started")
    worker = next(w for w, keys in client.processing().items() if f.key in keys)
    f.cancel(force=True)
    with pytest.raises(TaskCancelledError):
        f.result(30)
    # time.sleep does not see the interrupt: after the grace period the nanny restarts the worker.
    wait_until(lambda: worker not in client.nthreads() and len(client.nthreads()) == 2, "a new worker replaced it", 60)
    assert client.submit(inc, 41, pure=False).result(60) == 42


# -- waiting ---------------------------------------------------------------------------


def test_wait_return_when(client):
    fast, slow = client.submit(inc, 10), client.submit(spin, 120, pure=False)
    done, not_done = wait([fast, slow], return_when=FIRST_COMPLETED, timeout=30)
    assert done == {fast} and not_done == {slow}
    bad = client.submit(boom, 3)
    done, not_done = wait([slow, bad], return_when=FIRST_EXCEPTION, timeout=30)
    assert done == {bad} and not_done == {slow}
    with pytest.raises(GetTimeoutError, match="1 of 2 not done"):
        wait([fast, slow], timeout=0.05)
    ready, _ = wait([fast, slow], num_returns=1)  # Ray's form
    assert ready == [fast]
    slow.cancel(force=True)
    result = wait([fast, slow], timeout=30)
    assert result.done == {fast, slow} and result.not_done == set()
    with pytest.raises(ValueError, match="return_when"):
        wait([fast], return_when="WHENEVER")
    with pytest.raises(TypeError, match="Future"):
        wait("abc")


def test_as_completed_order_add_results_and_batches(client):
    slow = client.submit(spin, 120, pure=False)
    fast = client.submit(inc, 100, pure=False)
    ac = as_completed([slow, fast])
    assert next(ac) is fast
    added = client.submit(inc, 200, pure=False)
    ac.add(added)
    assert next(ac) is added
    slow.cancel(force=True)  # a cancelled future counts as completed
    assert next(ac) is slow and slow.cancelled()
    assert ac.is_empty()
    ac = as_completed([slow, fast], with_results=True)  # with results: a cancelled one is skipped
    assert list(ac) == [(fast, 101)]
    assert ac.is_empty()

    pairs = as_completed(client.map(inc, range(5), pure=False), with_results=True)
    assert sorted(r for _, r in pairs) == [1, 2, 3, 4, 5]

    errors = as_completed([client.submit(boom, 9)], with_results=True, raise_errors=False)
    [(f, exc)] = list(errors)
    assert isinstance(exc, ValueError)

    batches = list(as_completed(client.map(inc, range(6), pure=False)).batches())
    assert sum(len(b) for b in batches) == 6
    with pytest.raises(TypeError, match="Future"):
        as_completed([1, 2])


# -- data and the cluster --------------------------------------------------------------


def test_scatter_list_dict_and_hash(client):
    import numpy as np

    big = np.arange(1_000_000, dtype=np.float64)
    [small, stored] = client.scatter([3, big])
    assert client.submit(add, small, 4).result(30) == 7
    assert client.submit(np.sum, stored).result(30) == big.sum()
    assert client.scatter(3).key == small.key  # hash=True: same value, same key
    assert client.scatter(3, hash=False).key != small.key
    named = client.scatter({"x": 1, "y": 2})
    assert named["x"].key == "x" and client.gather(named) == {"x": 1, "y": 2}
    with pytest.raises(TypeError, match="strings"):
        client.scatter({1: "a"})
    with pytest.raises(TypeError, match="already"):
        client.scatter(small)


def test_run_info_who_has_has_what(client):
    pids = client.run(os.getpid)
    info = client.scheduler_info()
    assert set(pids) == set(info["workers"]) and len(pids) == 2
    assert {w: info["workers"][w]["pid"] for w in pids} == pids
    assert client.nthreads() == {w: 1 for w in pids}
    f = client.submit(inc, 77)
    f.result(30)
    [holder] = client.who_has([f])[f.key]
    assert holder in pids and f.key in client.has_what()[holder]
    with pytest.raises(ZeroDivisionError) as info:
        client.run(lambda: 1 / 0)
    assert "raised by Client.run on worker" in info.value.__notes__[0]
    errors = client.run(lambda: 1 / 0, on_error="return")
    assert set(errors) == set(pids) and all(isinstance(e, ZeroDivisionError) for e in errors.values())
    with pytest.raises(TypeError, match="callable"):
        client.run("os.getpid")
    with pytest.raises(ValueError, match="no such worker"):
        client.run(os.getpid, workers=["tcp://nowhere:1"])
    with pytest.raises(TypeError, match="workers"):
        client.run(os.getpid, workers=[1])
    with pytest.raises(TimeoutError, match="2 of 5 workers joined"):
        client.wait_for_workers(5, timeout=0.3)
    with pytest.raises(ValueError, match="whole number"):
        client.wait_for_workers(0)
    with pytest.raises(TypeError, match="Future"):
        client.who_has(["not a future"])


def test_run_reaches_busy_workers_and_survives_one_leaving(client):
    busy = client.map(spin, [120, 120], pure=False)
    wait_until(lambda: sum(len(keys) for keys in client.processing().values()) == 2, "both tasks are processing")
    assert len(client.run(os.getpid, timeout=30)) == 2  # not queued behind the spinning tasks
    client.cancel(busy, force=True)
    victim = next(iter(client.nthreads()))
    answers = client.run(os._exit, 3, workers=[victim], on_error="return", timeout=60)
    assert "left before it answered" in str(answers[victim])
    wait_until(lambda: victim not in client.nthreads() and len(client.nthreads()) == 2, "a new worker replaced it", 60)


class Recorder(WorkerPlugin):
    name = "recorder"

    def setup(self, worker):
        self.events = worker.recorded = []
        return worker.address

    def transition(self, key, start, finish, **kwargs):
        self.events.append((key, start, finish))


def _recorded(key):
    return [e[1:] for e in rt.get_worker().recorded if e[0] == key]


def test_register_plugin_sees_transitions(client):
    result = client.register_plugin(Recorder())
    assert set(result) == set(client.nthreads()) and all(result[w] == w for w in result)
    f = client.submit(inc, 1000, pure=False)
    f.result(30)
    seen = client.run(_recorded, f.key)
    assert [("ready", "executing"), ("executing", "memory")] in seen.values()
    with pytest.raises(TypeError, match="worker plugin"):
        client.register_plugin(object())


def test_progress_bar_fills_and_times_out(client):
    out = io.StringIO()
    rt.progress(client.map(slow_inc, range(4), delay=0.1, pure=False), file=out)
    assert "4/4" in out.getvalue()
    with pytest.raises(GetTimeoutError, match="1 of 1"):
        rt.progress(client.submit(slow_inc, 1, delay=3, pure=False), timeout=0.05, file=io.StringIO())
    with pytest.raises(TypeError, match="progress"):
        rt.progress(5)
    if importlib.util.find_spec("ipywidgets") is None:  # asked for a widget it cannot show: text, blocking
        out = io.StringIO()
        assert rt.progress([client.submit(inc, 3)], notebook=True, file=out) is None
        assert "1/1" in out.getvalue()


# -- Executor --------------------------------------------------------------------------


def test_executor_contract(client):
    assert isinstance(client, cf.Executor)
    ex = client.get_executor()
    fs = [ex.submit(inc, i) for i in range(5)]
    done, not_done = cf.wait(fs, timeout=30)
    assert not not_done and sorted(f.result() for f in done) == [1, 2, 3, 4, 5]
    assert [f.result() for f in cf.as_completed([ex.submit(inc, 9)], timeout=30)] == [10]
    with pytest.raises(ValueError, match="boom"):
        ex.submit(boom, 4).result(30)
    assert list(ex.map(add, [1, 2], [10, 20])) == [11, 22]
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(inc, 1)
    with pytest.raises(TypeError, match="num_cpus"):
        client.get_executor(num_cpus=2)


def test_stdlib_wait_and_as_completed_take_our_futures(client):
    slow, fast = client.submit(spin, 120, pure=False), client.submit(inc, 1)
    done, not_done = cf.wait([slow, fast], return_when=cf.FIRST_COMPLETED, timeout=30)
    assert done == {fast} and not_done == {slow}
    bad = client.submit(boom, 5)
    done, _ = cf.wait([slow, bad], return_when=cf.FIRST_EXCEPTION, timeout=30)
    assert done == {bad}
    late = client.submit(inc, 2, pure=False)
    assert [f.result() for f in cf.as_completed([late, fast], timeout=30)] in ([3, 2], [2, 3])
    with pytest.raises(cf.TimeoutError):
        list(cf.as_completed([slow], timeout=0.05))
    slow.cancel(force=True)
    done, not_done = cf.wait([slow, fast, bad], timeout=30)
    assert not not_done and slow.cancelled()


class TeardownMarker(WorkerPlugin):
    name = "teardown-marker"

    def __init__(self, directory):
        self.directory = directory

    def teardown(self, worker):
        open(os.path.join(self.directory, str(os.getpid())), "w").close()


def test_restart_cancels_futures_and_replaces_workers(client, tmp_path):
    f = client.submit(inc, 5)
    f.result(30)
    old = client.run(os.getpid)
    client.register_plugin(TeardownMarker(str(tmp_path)))
    client.restart()
    assert {int(p.name) for p in tmp_path.iterdir()} == set(old.values())  # each old worker tore it down
    with pytest.raises(TaskCancelledError):
        f.result(5)
    new = client.run(os.getpid)
    assert len(new) == 2 and not set(new.values()) & set(old.values())
    assert client.submit(inc, 5).result(30) == 6
    assert client.run(lambda: hasattr(rt.get_worker(), "recorded")) == {w: True for w in new}  # plugin kept


# -- construction ----------------------------------------------------------------------


def test_client_arguments_are_checked():
    with pytest.raises(TypeError, match="address string or a LocalCluster"):
        Client(42)
    with pytest.raises(TypeError, match="n_workers"):
        Client("tcp://127.0.0.1:1", n_workers=2)
    with pytest.raises(ValueError, match="timeout"):
        Client("tcp://127.0.0.1:1", timeout=0)
    with pytest.raises(OSError):
        Client("unix:///nonexistent/runtime-test.sock", timeout=2)


def test_client_on_a_cluster_leaves_it_running():
    with LocalCluster(1) as cluster:
        with Client(cluster) as c:
            assert c.submit(inc, 1).result(30) == 2
        assert cluster.scheduler_proc.poll() is None
        with Client(cluster.scheduler_address) as c2, pytest.raises(RuntimeError, match="closed"):
            c2.close()
            c2.submit(inc, 1)


def test_a_remote_function_submitted_runs_as_its_function(client):
    @rt.remote(retries=1)
    def double(x):
        return 2 * x

    assert client.submit(double, 21).result(30) == 42
    assert client.gather(client.map(double, [1, 2])) == [2, 4]


def test_actor_results_feed_client_tasks(cluster):
    @rt.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    ref = counter.incr.remote()  # an actor call's result, known at first only to this process
    with Client(cluster.cluster, set_as_default=False) as client:
        assert client.submit(inc, ref).result(30) == 2
        assert client.gather(client.map(add, [ref, ref], [10, 20])) == [11, 21]


def test_a_burst_of_graphs_leaves_as_one_in_the_order_sent():
    from runtime.client.client import merge_graphs
    from runtime.comm import messages as m

    def spec(key, *deps):
        return m.TaskSpec(key, (b"f", b"a"), deps)

    def graph(*specs, priority=0):
        return m.UpdateGraph(tuple(specs), tuple(s.key for s in specs), priority)

    batch = [graph(spec("a")), graph(spec("b", "a")), graph(spec("a")), graph(spec("c"), priority=1)]
    batch += [m.ReleaseKeys(("x",)), graph(spec("d", "c"), priority=1)]
    merged = merge_graphs(batch)
    # one graph per run of equal priority; a key sent twice keeps its first description
    assert [t.key for t in merged[0].tasks] == ["a", "b"] and merged[0].wanted == ("a", "b", "a")
    assert [t.dependencies for t in merged[0].tasks] == [(), ("a",)]
    assert merged[1] == batch[3]
    assert merged[2:] == batch[4:]  # another message ends a run: nothing moves across it
    assert merge_graphs(batch[:1]) == batch[:1]
