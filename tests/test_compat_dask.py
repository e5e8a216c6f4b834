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
from conftest import validated

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
