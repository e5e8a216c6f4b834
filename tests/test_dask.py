"""Dask collections computed on this runtime through ``client.get``, checked against Dask's own scheduler."""

from __future__ import annotations

import operator
import sys

import cloudpickle
import pytest
from conftest import validated

from runtime import Client

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
dd = pytest.importorskip("dask.dataframe")
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2) as c, validated(c.core):
        yield c


def test_array_results_equal_dasks(client):
    x = da.random.default_rng(42).random((400, 300), chunks=(100, 100))
    y = (x + x.T[:300, :300].sum(axis=0)).mean(axis=1) * 2
    (ours,) = dask.compute(y, scheduler=client.get)
    np.testing.assert_allclose(ours, y.compute(scheduler="sync"))
    big = (x @ x.T).sum()  # a reduction over stored chunks
    assert np.isclose(dask.compute(big, scheduler=client.get)[0], big.compute(scheduler="sync"))


def test_dataframe_groupby_equals_dasks(client):
    pdf = pd.DataFrame({"k": np.arange(1000) % 7, "v": np.arange(1000.0), "s": [f"s{i % 3}" for i in range(1000)]})
    ddf = dd.from_pandas(pdf, npartitions=4)
    q = ddf[ddf.v > 100].groupby("k").v.agg(["sum", "mean", "count"])
    with dask.config.set(scheduler=client.get):
        ours = q.compute()
    pd.testing.assert_frame_equal(ours.sort_index(), q.compute(scheduler="sync").sort_index())
    with dask.config.set(scheduler=client.get):
        assert ddf.s.value_counts().compute().to_dict() == pdf.s.value_counts().to_dict()


def test_bag_equals_dasks(client):
    b = db.from_sequence(range(100), npartitions=5).map(lambda x: x * 3).filter(lambda x: x % 2)
    assert dask.compute(b.sum(), b.frequencies(), scheduler=client.get) == dask.compute(
        b.sum(), b.frequencies(), scheduler="sync"
    )


def test_raw_legacy_graph_with_aliases_and_nested_keys(client):
    dsk = {
        "a": 1,
        ("b", 0): (operator.add, "a", 10),
        ("b", 1): (sum, [("b", 0), "a", 5]),
        "alias": ("b", 1),
        "c": (operator.mul, ("b", 0), (operator.add, "alias", 1)),
    }
    assert client.get(dsk, "c") == 11 * 18
    assert client.get(dsk, [["a", ("b", 1)], "alias"]) == [[1, 17], 17]


def test_graph_errors_are_clear(client):
    with pytest.raises(KeyError, match="'missing' is not in the graph"):
        client.get({"a": 1}, ["missing"])
    with pytest.raises(TypeError, match="Dask graph"):
        client.get([1, 2], ["a"])
    with pytest.raises(ZeroDivisionError):
        client.get({"a": 0, "b": (operator.truediv, 1, "a")}, "b")
    with pytest.raises(ValueError, match="cycle"):
        # (new keys: a graph's keys name its values, and "a" may still be held from above)
        client.get({"p": (operator.add, "q", 1), "q": (operator.add, "p", 1)}, "p")


def test_client_compute_returns_futures_of_finalized_values(client):
    x = da.arange(1000, chunks=100)
    pdf = pd.DataFrame({"a": np.arange(100), "b": np.arange(100) % 3})
    ddf = dd.from_pandas(pdf, npartitions=3)
    total, squares = client.compute([x.sum(), (x**2)[:10]])
    assert total.result(60) == x.sum().compute(scheduler="sync")
    np.testing.assert_array_equal(squares.result(60), np.arange(10) ** 2)
    frame = client.compute(ddf[ddf.a > 50], sync=True)
    pd.testing.assert_frame_equal(frame, pdf[pdf.a > 50])
    assert client.compute(db.from_sequence([1, 2, 3]).map(str), sync=True) == ["1", "2", "3"]
    assert client.compute([1, 2]) == [1, 2]  # not collections: passed through, as Dask's


def test_a_client_becomes_dasks_default_scheduler_until_closed(client):
    import os

    pid = dask.delayed(os.getpid)().compute()  # no scheduler named: runs on a worker
    assert pid in client.run(os.getpid).values()
    with Client(client.address) as other:
        assert dask.config.get("scheduler") == other.get
    assert dask.config.get("scheduler") == client.get  # restored on close
    with Client(client.address, set_as_default=False):
        assert dask.config.get("scheduler") == client.get
    # Named explicitly, as Dask's docs show it (dask asks the client whether it is asynchronous).
    assert dask.delayed(os.getpid)().compute(scheduler=client) in client.run(os.getpid).values()
    assert dask.compute(dask.delayed(sum)([1, 2]), scheduler=client) == (3,)
