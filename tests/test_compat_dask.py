"""Dask's futures API as Dask's users know it: cases from ``distributed``'s documentation
and test suite, written in Dask's idiom against ``runtime`` (``from runtime import Client``
is all a port should need).

Where runtime still differs from Dask, ``docs/coming-from-dask.md`` says how and why.
"""

from __future__ import annotations

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
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster, Client(cluster) as client:
        assert list(client.nthreads().values()) == [2]
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
    for method in ("tasks", "p2p"):  # whatever method Dask was told (p2p without distributed's workers)
        assert c.compute(df.shuffle("k", shuffle_method=method), sync=True).sort_values("v").equals(expected)
    (ours,) = dask.compute(df.shuffle("k"), scheduler=c.get)  # the expression dask.compute hands over
    assert len(ours) == 2000 and ours.index.name == "ix"
    wait_until(lambda: all(run[2] for run in c.core.request("shuffle-runs").values()), "every shuffle ended")
