"""Every method of a future on every owner: a future behaves the same whoever made it.

The owners: the cluster client behind ``runtime.init`` (``@remote`` tasks), a
``runtime.Client`` on the same cluster, and the ``sync``, ``threads`` and ``processes``
local schedulers.  One cluster serves the whole module.
"""

from __future__ import annotations

import io
import sys
import threading
import time
import traceback

import cloudpickle
import pytest

import runtime as rt
from runtime import FIRST_COMPLETED, FIRST_EXCEPTION, TaskCancelledError, as_completed, config, local
from runtime.api import context

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

OWNERS = ["cluster", "client", "sync", "threads", "processes"]


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def total(d):
    return d["a"] + sum(d["rest"])


def boom(x):
    raise ValueError(f"boom {x}")


def nap(seconds, x=None):
    time.sleep(seconds)
    return x


_REMOTE = {fn: rt.remote(fn) for fn in (inc, add, total, boom, nap)}


class Owner:
    """Makes tasks under one owner: ``Client.submit`` or ``@remote`` under a scheduler setting."""

    def __init__(self, name: str, client: rt.Client | None = None):
        self.name = name
        self.client = client

    def submit(self, fn, *args):
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False)
        return _REMOTE[fn].remote(*args)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(scope="module")
def futures_client(cluster):
    with rt.Client(cluster.cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(params=OWNERS)
def owner(request, cluster):
    if request.param == "client":
        yield Owner("client", request.getfixturevalue("futures_client"))
        return
    with config.set(scheduler="distributed" if request.param == "cluster" else request.param):
        yield Owner(request.param)
    local.shutdown()


def test_result_get_and_done(owner):
    a = owner.submit(inc, 1)
    b = owner.submit(inc, a)
    assert b.result(timeout=60) == 3
    assert rt.get(a) == 2 and rt.get([b, a], timeout=60) == [3, 2]
    assert a.done() and b.done() and not b.cancelled() and b.status == "finished"


def test_a_future_as_an_argument(owner):
    a = owner.submit(inc, 1)
    b = owner.submit(add, a, owner.submit(inc, a), 10)  # 2 + 3 + 10
    c = owner.submit(total, {"a": b, "rest": [a, (a, b)[1]]})  # futures inside lists and dicts
    assert rt.get(c, timeout=60) == 15 + 2 + 15


def test_exception_and_traceback(owner):
    bad = owner.submit(boom, 3)
    exc = bad.exception(timeout=60)
    assert isinstance(exc, ValueError) and str(exc) == "boom 3"
    assert exc.__notes__[-1].startswith(f"raised by task {bad.key!r}")
    assert "in boom" in "".join(traceback.format_tb(bad.traceback()))
    assert bad.done() and bad.status == "error"
    with pytest.raises(ValueError, match="boom 3"):
        rt.get(bad)
    with pytest.raises(ValueError) as again:  # raised again, with one note, not two
        bad.result()
    assert len(again.value.__notes__) == 1
    dependent = owner.submit(inc, bad)
    exc = dependent.exception(timeout=60)
    assert isinstance(exc, ValueError) and f"its dependency {bad.key!r} raised" in exc.__notes__[-1]
    good = owner.submit(inc, 1)
    assert good.exception(timeout=60) is None and good.traceback() is None


def test_cancel(owner):
    slow = owner.submit(nap, 1.0, 1)
    after = owner.submit(inc, slow)
    slow.cancel()
    with pytest.raises(TaskCancelledError):
        after.result(timeout=60)
    assert slow.cancelled() and after.cancelled() and slow.done()
    assert isinstance(slow.exception(timeout=60), TaskCancelledError) and slow.traceback() is None
    other = owner.submit(nap, 1.0, 2)
    rt.cancel([other])
    with pytest.raises(TaskCancelledError):
        rt.get(other, timeout=60)


def test_add_done_callback(owner):
    seen = []
    called = threading.Event()
    pending = owner.submit(inc, 5)
    pending.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert pending.result(timeout=60) == 6
    assert called.wait(60) and seen == [6]
    here = []
    pending.add_done_callback(lambda f: here.append(threading.current_thread()))  # done: at once, here
    assert here == [threading.current_thread()]
    failed = owner.submit(boom, 1)
    failed.add_done_callback(lambda f: seen.append(type(f.exception()).__name__))
    rt.wait([failed], timeout=60)
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [6, "ValueError"]
    with pytest.raises(TypeError, match="callable"):
        pending.add_done_callback("nope")


def test_as_completed(owner):
    futures = [owner.submit(inc, i) for i in range(5)]
    assert sorted(f.result() for f in as_completed(futures, timeout=60)) == [1, 2, 3, 4, 5]
    pairs = as_completed([owner.submit(inc, i) for i in range(3)], with_results=True, timeout=60)
    assert sorted(result for _, result in pairs) == [1, 2, 3]
    errors = list(as_completed([owner.submit(boom, 9)], with_results=True, raise_errors=False, timeout=60))
    assert isinstance(errors[0][1], ValueError)
    ac = as_completed([owner.submit(inc, 1)], timeout=60)
    first = next(ac)
    ac.add(owner.submit(inc, first.result()))  # added while iterating
    assert [f.result() for f in ac] == [3]
    batches = list(as_completed([owner.submit(inc, i) for i in range(4)], timeout=60).batches())
    assert sum(len(b) for b in batches) == 4


def test_wait_ray_and_dask(owner):
    futures = [owner.submit(inc, i) for i in range(3)]
    done, pending = rt.wait(futures, num_returns=2, timeout=60)  # Ray's
    assert len(done) == 2 and len(pending) == 1 and all(f.done() for f in done)
    assert done == [f for f in futures if f in done] and pending == [f for f in futures if f not in done]
    done, not_done = rt.wait([*futures, futures[0]])  # Dask's ALL_COMPLETED, the default: sets
    assert done == set(futures) and not_done == set()
    fresh = [owner.submit(inc, i) for i in range(3)]
    done, _ = rt.wait(fresh, return_when=FIRST_COMPLETED, timeout=60)
    assert done and all(f.done() for f in done)
    bad = owner.submit(boom, 1)
    done, _ = rt.wait([bad, owner.submit(nap, 0.5, 1)], return_when=FIRST_EXCEPTION, timeout=60)
    assert bad in done


def test_progress(owner):
    out = io.StringIO()
    assert rt.progress([owner.submit(inc, i) for i in range(3)], file=out, timeout=60) is None
    assert "3/3" in out.getvalue()
    out = io.StringIO()
    rt.progress({"x": owner.submit(boom, 1)}, file=out, timeout=60)  # failed tasks count as done
    assert "1/1" in out.getvalue() and "failed=1" in out.getvalue()


def test_futures_of_several_owners_together(cluster, futures_client):
    from_cluster = _REMOTE[inc].remote(1)
    from_client = futures_client.submit(inc, 2, pure=False)
    with config.set(scheduler="sync"):
        from_sync = _REMOTE[inc].remote(3)
    try:
        mixed = [from_cluster, from_client, from_sync]
        assert rt.get(mixed, timeout=60) == [2, 3, 4]
        done, not_done = rt.wait([*mixed, _REMOTE[inc].remote(4)], timeout=60)
        assert len(done) == 4 and not not_done
        again = [futures_client.submit(inc, 5, pure=False)]
        with config.set(scheduler="threads"):
            again.append(_REMOTE[inc].remote(6))
        assert sorted(f.result() for f in as_completed(again, timeout=60)) == [6, 7]
        done, _ = rt.wait(again + [_REMOTE[nap].remote(0.5, 1)], num_returns=2, timeout=60)
        assert len(done) == 2
    finally:
        local.shutdown()


def test_a_client_future_never_asks_the_current_runtime(futures_client, monkeypatch):
    """rt.get/wait/cancel go to the future's own client: a Client() made before any init()
    never starts a second cluster."""

    def no_runtime():
        raise AssertionError("a runtime.Client future went through the current runtime")

    monkeypatch.setattr(context, "current_runtime", no_runtime)
    f = futures_client.submit(inc, 1, pure=False)
    assert rt.get(f, timeout=60) == 2
    assert rt.wait([f], timeout=60).done == {f}
    slow = futures_client.submit(nap, 1.0, pure=False)
    rt.cancel(slow)
    with pytest.raises(TaskCancelledError):
        rt.get(slow, timeout=60)


def test_a_scheduler_argument_must_fit_the_futures_owner(cluster, futures_client):
    with pytest.raises(ValueError, match="distributed cluster"):
        rt.get(futures_client.submit(inc, 1), scheduler="sync")
    with config.set(scheduler="sync"):
        f = _REMOTE[inc].remote(1)
    try:
        with pytest.raises(ValueError, match="local scheduler"):
            rt.wait([f], scheduler="distributed")
        assert rt.get(f, scheduler="threads") == 2
    finally:
        local.shutdown()


def test_futures_of_a_shut_down_local_scheduler_fail_at_once():
    with config.set(scheduler="sync"):
        done, pending = _REMOTE[inc].remote(1), _REMOTE[inc].remote(2)
        assert rt.get(done) == 2  # sync runs what get needs, in order: not pending's task
    local.shutdown()
    assert pending.cancelled()
    for use in (lambda: rt.get(done), lambda: rt.wait([pending]), lambda: pending.cancel()):
        with pytest.raises(rt.ClientClosedError, match="to a local scheduler that was shut down"):
            use()
