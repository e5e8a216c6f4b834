"""Dask's futures API as Dask's users know it: cases from ``distributed``'s documentation
and test suite, written in Dask's idiom against ``runtime`` (``from runtime import Client``
is all a port should need).

Where runtime still differs from Dask, ``docs/coming-from-dask.md`` says how and why.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from concurrent.futures import CancelledError

import cloudpickle
import pytest
from conftest import validated, wait_until

from runtime import Client, LocalCluster, as_completed, wait

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def div(x, y):
    return x / y


def slowinc(x, delay=0.2):
    time.sleep(delay)
    return x + 1


@pytest.fixture(scope="module")
def c():
    with Client(n_workers=2, threads_per_worker=1) as client, validated(client.core):
        yield client


# -- errors, gather ------------------------------------------------------------------------


def test_erred_future_status_is_error(c):
    x = c.submit(div, 1, 0)
    with pytest.raises(ZeroDivisionError):
        x.result()
    assert x.status == "error"
    assert isinstance(x.exception(), ZeroDivisionError)


def test_gather_skip_drops_failed_results_from_a_list(c):
    x = c.submit(div, 1, 0)
    y = c.submit(inc, 1)
    assert c.gather([x, y], errors="skip") == [2]
    assert c.gather({"x": x, "y": y}, errors="skip") == {"x": None, "y": 2}


def test_timeouts_accept_strings(c):
    x = c.submit(inc, 1)
    assert x.result(timeout="10s") == 2
    assert c.gather([x], timeout="1 minute") == [2]
    assert wait([x], timeout="500ms").done == {x}
    with pytest.raises(ValueError, match="timeout"):
        x.result(timeout="soon")


# -- wait, as_completed, cancel ----------------------------------------------------------


def test_wait_returns_sets_and_accepts_duplicates(c):
    x, y = c.submit(inc, 1), c.submit(inc, 2)
    result = wait([x, y, x])
    assert type(result).__name__ == "DoneAndNotDoneFutures"
    assert result.done == {x, y} and result.not_done == set()


def test_wait_with_num_returns_is_rays_and_gives_lists(c):
    x, y = c.submit(inc, 10), c.submit(inc, 11)
    ready, not_ready = wait([x, y], num_returns=2, timeout=30)
    assert ready == [x, y] and not_ready == []


def test_as_completed_with_results_skips_cancelled(c):
    x = c.submit(slowinc, 1, delay=30, pure=False)
    y = c.submit(inc, 2)
    x.cancel()
    assert list(as_completed([x, y], with_results=True)) == [(y, 3)]


def test_cancel_is_synchronous(c):
    x = c.submit(slowinc, 1, delay=30, pure=False)
    x.cancel()
    assert x.cancelled() and x.status == "cancelled"
    with pytest.raises(CancelledError):
        x.result()
    y = c.submit(slowinc, 2, delay=30, pure=False)
    c.cancel([y])
    assert y.cancelled()


def test_cancel_a_collection_does_not_compute_it(c):
    da = pytest.importorskip("dask.array")
    x = c.submit(slowinc, 1, delay=30, pure=False)
    arr = da.from_delayed(x, shape=(), dtype=int)
    c.cancel(arr)
    assert x.cancelled()


# -- the cluster ---------------------------------------------------------------------------


def test_local_cluster_takes_dasks_arguments():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", silence_logs=False
        ) as cluster,
        Client(cluster) as client,
    ):
        assert list(client.nthreads().values()) == [2]
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError, match="host:port"):
        LocalCluster(n_workers=1, dashboard_address="nowhere:x")
    with pytest.raises(ValueError, match="threads_per_worker"):
        LocalCluster(n_workers=1, threads_per_worker=0)


# -- futures ---------------------------------------------------------------------------------


def test_future_client_release_traceback_and_client_futures(c):
    import traceback

    x = c.submit(inc, 1)
    assert x.client is c
    assert x.key in c.futures
    y = c.submit(div, 1, 0)
    wait([y])
    tb = y.traceback()
    assert any("div" in line for line in traceback.format_tb(tb))
    assert x.traceback() is None
    key = x.key
    x.release()
    del x
    assert key not in c.futures


def test_async_def_functions_run_on_an_event_loop(c):
    async def add_async(a, b):
        import asyncio

        await asyncio.sleep(0)
        return a + b

    assert c.submit(add_async, 1, 2).result() == 3


# -- scatter, who_has, run -------------------------------------------------------------------


def test_scatter_keeps_the_container_type(c):
    assert isinstance(c.scatter((1, 2)), tuple)
    assert isinstance(c.scatter({1, 2}), set)
    assert isinstance(c.scatter(frozenset([3])), frozenset)
    assert c.gather(c.scatter((1, 2))) == (1, 2)


def test_run_passes_dask_worker_and_get_current_task(c):
    def address(dask_worker):
        return dask_worker.address

    result = c.run(address)
    assert sorted(result) == sorted(result.values())

    def current():
        from runtime import get_worker

        return get_worker().get_current_task()

    x = c.submit(current, pure=False)
    assert x.result() == x.key


def test_scheduler_info_started(c):
    assert c.scheduler_info()["started"] <= time.time()


def test_workers_takes_a_set_and_allow_other_workers_needs_workers(c):
    workers = set(c.nthreads())
    assert c.submit(inc, 5, workers=workers).result() == 6
    with pytest.raises(ValueError, match="allow_other_workers"):
        c.submit(inc, 1, allow_other_workers=True)


# -- graphs and collections ------------------------------------------------------------------


def test_get_sync_false_returns_futures_and_retries(c):
    dsk = {"x": 1, "y": (inc, "x")}
    fut = c.get(dsk, "y", sync=False)
    assert fut.result() == 2
    assert c.get(dsk, ["y"], retries=2) == [2]


def test_compute_passes_non_collections_through(c):
    da = pytest.importorskip("dask.array")
    arr = da.ones(4, chunks=2)
    total, plain = c.compute([arr.sum(), 5], sync=True)
    assert total == 4 and plain == 5


def test_scatter_a_collection_backed_by_futures(c):
    da = pytest.importorskip("dask.array")
    x = c.submit(inc, 1)
    arr = da.from_delayed(x, shape=(), dtype=int)
    stored = c.scatter(arr)
    assert stored.result().compute(scheduler=c.get) == 2


def test_scattered_and_put_data_show_in_who_has_and_has_what(c):
    small, big = c.scatter([1, b"x" * 2_000_000])
    workers = set(c.nthreads())
    has = c.who_has([small, big])
    # a value in a node's store (or kept inline by the scheduler) is held by the workers that
    # read it without a transfer between workers: here, every worker of the one node
    assert set(has[small.key]) == workers and set(has[big.key]) == workers
    assert all(small.key in keys and big.key in keys for keys in c.has_what().values())


# -- dask.dataframe shuffles run as runtime.shuffle -------------------------------------


def _shuffles(c) -> set[str]:
    return set(c.core.request("shuffle-runs"))


def test_dataframe_shuffle_merge_and_set_index_use_runtime_shuffle(c):
    dask = pytest.importorskip("dask")
    dd = pytest.importorskip("dask.dataframe")
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame(
        {"k": rng.integers(0, 50, 2000), "v": np.arange(2000.0), "s": [f"s{i % 3}" for i in range(2000)]},
        index=pd.Index(np.arange(2000) * 3, name="ix"),
    )
    df = dd.from_pandas(pdf, npartitions=4)
    right = dd.from_pandas(pd.DataFrame({"k": np.arange(50), "w": np.arange(50) * 2.0}), npartitions=3)
    cases = [
        ("shuffle", df.shuffle("k", npartitions=5), 1),
        ("merge", df.merge(right, on="k"), 2),  # both sides shuffled by the key
        ("set_index", df.set_index("k"), 1),  # by divisions: the _partitions column
    ]
    for name, frame, nshuffles in cases:
        before = _shuffles(c)
        ours = c.compute(frame, sync=True)
        assert len(_shuffles(c) - before) == nshuffles, name
        theirs = frame.compute(scheduler="sync")
        ours, theirs = ours.sort_values("v"), theirs.sort_values("v")
        if name == "merge":  # its index is each partition's row number: the order rows came in
            ours, theirs = ours.reset_index(drop=True), theirs.reset_index(drop=True)
        assert ours.equals(theirs), name  # index and dtypes too
        if name == "shuffle":  # each key in the one partition Dask's own shuffle gives it
            for mine, dasks in zip(c.compute(frame.to_delayed(), sync=True), frame.to_delayed(), strict=True):
                assert set(mine["k"]) == set(dasks.compute(scheduler="sync")["k"])
    expected = df.shuffle("k").compute(scheduler="sync").sort_values("v")
    # Whatever method Dask was told: p2p too, without distributed's workers (dask imports a
    # check from distributed for it, so only where distributed is installed)
    methods = ("tasks", "p2p") if importlib.util.find_spec("distributed") else ("tasks",)
    for method in methods:
        assert c.compute(df.shuffle("k", shuffle_method=method), sync=True).sort_values("v").equals(expected)
    (ours,) = dask.compute(df.shuffle("k"), scheduler=c.get)  # the expression dask.compute hands over
    assert len(ours) == 2000 and ours.index.name == "ix"
    wait_until(lambda: all(run[2] for run in c.core.request("shuffle-runs").values()), "every shuffle ended")


def test_who_has_and_has_what_agree_on_a_finished_small_result(c):
    x = c.submit(inc, 41, pure=False)
    assert x.result() == 42
    holders = c.who_has([x])[x.key]
    assert holders  # the worker that computed it holds it
    by_worker = c.has_what()
    assert sorted(w for w, keys in by_worker.items() if x.key in keys) == holders
    assert c.who_has()[x.key] == holders


# -- submit's own keywords never reach the function -----------------------------------------


def takes_kwargs(**kwargs):
    return sorted(kwargs)


def test_dasks_submit_keywords_are_not_passed_to_the_function(c):
    assert c.submit(takes_kwargs, fifo_timeout="1s", retries=None, pure=False, other=1).result() == ["other"]

    def one(i, **kwargs):
        return sorted(kwargs)

    assert c.gather(c.map(one, [1], fifo_timeout=0, x=2)) == [["x"]]


class Counter:
    n = 0

    def __init__(self, start=0):
        self.n = start

    def increment(self, by=1):
        self.n += by
        return self.n


def test_submit_actor_true_gives_an_actor(c):
    counter = c.submit(Counter, 10, actor=True).result()
    assert counter.increment().result() == 11
    assert counter.increment(by=2).result() == 13
    assert counter.n == 13  # attributes are read from the worker

    def use(actor):  # the proxy passes to tasks, which call the same actor
        return actor.increment().result()

    assert c.submit(use, counter, pure=False).result() == 14
    with pytest.raises(TypeError, match="needs a class"):
        c.submit(inc, 1, actor=True)
    with pytest.raises(TypeError):
        counter.increment(by="y").result()  # a method's error; the actor lives on
    assert counter.increment().result() == 15

    class Failing:
        def __init__(self):
            raise ValueError("no actor for you")

    with pytest.raises(ValueError, match="no actor for you"):  # the future waits for the constructor
        c.submit(Failing, actor=True).result(timeout=30)


# -- the rest of the Client API ---------------------------------------------------------------


def test_fire_and_forget_runs_tasks_nobody_holds(c, tmp_path):
    from runtime import fire_and_forget

    def mark(path):
        time.sleep(0.2)  # still running when its future is gone
        open(path, "w").close()

    marker = tmp_path / "done"
    future = c.submit(mark, str(marker), pure=False)
    key = future.key
    fire_and_forget(future)
    del future  # nobody holds it now
    wait_until(marker.exists, "the forgotten task ran")
    wait_until(lambda: key not in c.who_has(), "the scheduler forgot it once done")


def test_futures_of_and_persist(c):
    import runtime

    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    x = c.persist(dask.delayed(inc)(1))
    [f] = runtime.futures_of(x)
    assert f.result() == 2 and x.compute() == 2
    arr = c.persist(da.ones((4, 4), chunks=2))
    assert len(runtime.futures_of(arr)) == 4
    assert arr.sum().compute() == 16
    a, b = c.persist([dask.delayed(inc)(5), 7])
    assert a.compute() == 6 and b == 7


def test_replicate_rebalance_metadata_and_versions(c):
    x = c.scatter(b"x" * 200_000)
    c.replicate([x])
    c.rebalance([x])
    assert x.result() == b"x" * 200_000
    c.set_metadata("a", 1)
    c.set_metadata(["b", "c"], {"d": 2})
    assert c.get_metadata("a") == 1 and c.get_metadata(["b", "c", "d"]) == 2 and c.get_metadata("b") == {"c": {"d": 2}}
    with pytest.raises(KeyError):
        c.get_metadata("missing")
    assert c.get_metadata("missing", None) is None
    v = c.get_versions(check=True)
    assert set(v) == {"client", "scheduler", "workers"} and len(v["workers"]) == 2
    assert v["scheduler"]["packages"]["python"] == v["client"]["packages"]["python"]


def test_run_on_scheduler(c):
    def workers(dask_scheduler=None):
        return len(dask_scheduler.state.workers)

    assert c.run_on_scheduler(workers) == 2
    assert c.run_on_scheduler(lambda x, y=0: x + y, 1, y=2) == 3

    async def coroutine():
        return "awaited"

    assert c.run_on_scheduler(coroutine) == "awaited"
    with pytest.raises(ZeroDivisionError):
        c.run_on_scheduler(div, 1, 0)


def test_upload_file(c, tmp_path):
    module = tmp_path / "uploaded_mod_abc.py"
    module.write_text("VALUE = 42\n")
    c.upload_file(str(module))

    def read():
        import uploaded_mod_abc

        return uploaded_mod_abc.VALUE

    assert c.submit(read, pure=False).result() == 42
    assert set(c.run(read).values()) == {42}
    c.restart()  # fresh worker processes get it too, as workers that join later
    assert set(c.run(read).values()) == {42}
    with pytest.raises(FileNotFoundError):
        c.upload_file(str(tmp_path / "nope.py"))


def test_retry_runs_failed_tasks_again_from_their_root(c, tmp_path):
    flag = tmp_path / "ok"

    def flaky(path):
        import os

        if not os.path.exists(path):
            raise ValueError("not yet")
        return 1

    x = c.submit(flaky, str(flag), pure=False)
    y = c.submit(inc, x, pure=False)
    with pytest.raises(ValueError):
        y.result()
    assert x.status == y.status == "error"
    flag.touch()
    c.retry([y])  # its root, x, runs again, then y
    assert y.result(timeout=30) == 2
    assert x.result() == 1
    c.retry([x, y])  # nothing failed: nothing happens
    z = c.submit(div, 1, 0)
    with pytest.raises(ZeroDivisionError):
        z.result()
    z.retry()
    with pytest.raises(ZeroDivisionError):
        z.result(timeout=30)


def test_scatter_and_gather_take_dasks_keywords(c):
    worker = next(iter(c.nthreads()))
    [x] = c.scatter([5], workers=[worker], direct=True, timeout="5s")
    y = c.scatter(6, worker, False, True)  # Dask's positional order: workers, broadcast, direct
    assert c.gather([x, y], direct=True) == [5, 6]
    assert worker in c.who_has([x])[x.key]


def test_get_task_stream_and_performance_report(c, tmp_path):
    from runtime import get_task_stream, performance_report

    with get_task_stream() as ts:
        c.gather(c.map(slowinc, range(3), delay=0.01, pure=False))
    assert len(ts.data) == 3
    record = ts.data[0]
    assert record["status"] == "OK" and record["worker"] in c.nthreads() and record["key"].startswith("slowinc")
    (ran,) = record["startstops"]
    assert ran["action"] == "compute" and ran["stop"] >= ran["start"]
    assert len(c.get_task_stream(count=2)) == 2
    report = tmp_path / "report.html"
    with performance_report(filename=str(report)):
        c.submit(inc, 100, pure=False).result()
    assert "1 tasks" in report.read_text() and "inc" in report.read_text()
