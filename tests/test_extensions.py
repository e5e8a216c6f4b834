"""Coordination primitives, published datasets and scheduler plugins on a real cluster:
from the driver, from tasks, and when their holders and readers die."""

from __future__ import annotations

import datetime
import gc
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import wait_until

import runtime as rt
from runtime import Client, Event, Lock, MultiLock, Queue, Semaphore, Variable


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.client.address, set_as_default=True) as c:
        yield c


def _client_process(code: str, address: str, **env: str) -> subprocess.Popen:
    """A separate process with its own client of the cluster, running ``code`` (with ``c``)."""
    script = f"import sys, time, runtime as rt\nc = rt.Client({address!r})\n" + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def test_lock_excludes_tasks_and_accepts_every_timeout_form(client):
    counter = Variable("counter")
    counter.set(0)

    def add_one(lock: Lock, counter: Variable) -> None:
        with lock:  # read-modify-write: only safe under the lock
            counter.set(counter.get() + 1)

    lock = Lock("count-lock")
    client.gather(client.map(add_one, [lock] * 20, [counter] * 20, pure=False))
    assert counter.get() == 20
    assert lock.acquire(timeout="1s")
    assert not Lock("count-lock").acquire(timeout=datetime.timedelta(milliseconds=50))
    assert not Lock("count-lock").acquire(blocking=False)
    assert lock.locked()
    with pytest.raises(RuntimeError, match="released too often"):
        Lock("count-lock").release()  # another object: it holds no lease
    lock.release()
    assert not lock.locked()


def test_semaphore_bounds_holders_across_tasks(client):
    sem = Semaphore(max_leases=2, name="two-at-a-time")

    def hold(sem: Semaphore, i: int) -> int:
        with sem:
            return sem.get_value()

    values = client.gather(client.map(hold, [sem] * 10, range(10)))
    assert max(values) <= 2 and sem.get_value() == 0
    with pytest.raises(RuntimeError, match="max_leases=2"):
        Semaphore(max_leases=3, name="two-at-a-time").acquire()


def test_semaphore_holder_killed_with_sigkill_releases_at_once(client):
    sem = Semaphore(max_leases=1, name="killed-holder")

    def hold_and_die(sem: Semaphore, held: Event) -> str:
        if held.is_set():  # the rerun after the kill
            return "rerun"
        sem.acquire()
        held.set()
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"

    held = Event("killed-holder-held")
    fut = client.submit(hold_and_die, sem, held)
    assert held.wait(timeout=60)
    assert sem.acquire(timeout=60)  # its process died: its lease ended with its connection
    sem.release()
    assert fut.result(timeout=60) == "rerun"


def test_semaphore_frozen_holder_loses_its_lease_after_the_lease_timeout(client):
    holder = _client_process(
        """
        sem = rt.Semaphore(1, name="frozen-holder")
        sem.acquire()
        print("held", flush=True)
        time.sleep(600)
        """,
        client.address,
        RUNTIME_SCHEDULER__LOCKS__LEASE_TIMEOUT="1s",
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # alive, connected, and silent
        assert Semaphore(1, name="frozen-holder").acquire(timeout=60)
    finally:
        holder.kill()
        holder.wait()


def test_client_that_disconnects_while_waiting_on_a_lock_is_forgotten(client):
    lock = Lock("waited-on")
    assert lock.acquire()
    waiter = _client_process(
        """
        print("waiting", flush=True)
        rt.Lock("waited-on").acquire()
        print("acquired", flush=True)
        """,
        client.address,
    )
    assert waiter.stdout.readline().strip() == "waiting"
    waiter.kill()
    waiter.wait()
    lock.release()
    other = Lock("waited-on")
    assert other.acquire(timeout=30)  # not granted to the dead waiter
    other.release()


def test_multi_lock_overlapping_sets(client):
    a = MultiLock(["ma", "mb"])
    assert a.acquire()
    b = MultiLock(["mb", "mc"])
    assert not b.acquire(timeout=0.05)
    assert a.locked()
    a.release()
    assert b.acquire(timeout=10)
    b.release()


def test_queue_carries_values_and_keeps_futures_alive(client):
    q = Queue("jobs-q", maxsize=2)
    fut = client.submit(lambda: 41)
    q.put(fut)
    q.put("plain")
    key = fut.key
    del fut
    gc.collect()
    with pytest.raises(TimeoutError, match="full"):
        q.put("third", timeout=0)
    assert q.qsize() == 2

    def take(q: Queue) -> int:
        return q.get().result() + 1  # a future made by the driver, resolved in a task

    assert client.submit(take, q).result(timeout=60) == 42
    assert q.get() == "plain"
    with pytest.raises(TimeoutError):
        q.get(timeout="50ms")
    q.put(1)
    q.put(2)
    assert q.get(batch=True) == [1, 2]
    wait_until(lambda: key not in client.core.request("task-states"), "the future, taken and dropped, is released")


def test_queue_reader_that_dies_loses_no_item(client):
    q = Queue("dying-reader")
    pid = Variable("dying-reader-pid")

    def read(q: Queue, pid: Variable) -> str:
        pid.set(os.getpid())
        return q.get()

    fut = client.submit(read, q, pid, pure=False)
    first = wait_until(lambda: pid.get(timeout=60), "the reader started")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pid.get() != first, "the reader ran again")  # its task reruns on another worker
    q.put("the item")
    assert fut.result(timeout=60) == "the item"


def test_large_items_wait_in_the_store_not_in_the_scheduler(client):
    # A value over inline-threshold is stored and queued as its key: a task takes it zero-copy
    # (a read-only view), and its bytes never sit in the scheduler's memory.
    q, v = Queue("big-items"), Variable("big-item")
    q.put(np.arange(1_000_000))
    v.set(np.ones(500_000))

    def take(q: Queue, v: Variable) -> tuple[int, bool, float]:
        a = q.get(timeout=30)
        return int(a.sum()), a.flags.writeable, float(v.get(timeout=30).sum())

    assert client.submit(take, q, v, pure=False).result(timeout=60) == (499_999_500_000, False, 500_000.0)
    q.put(np.ones(200_000))
    taken = q.get(timeout=30)
    assert taken.sum() == 200_000 and not taken.flags.writeable
    v.delete()


def test_variable_keeps_its_future_alive(client):
    v = Variable("held-future")
    fut = client.submit(lambda: "kept")
    v.set(fut)
    del fut
    gc.collect()

    def read(v: Variable) -> str:
        return v.get(timeout=30).result()

    assert client.submit(read, v).result(timeout=60) == "kept"
    v.delete()
    with pytest.raises(TimeoutError):
        v.get(timeout=0.05)


def test_event_from_tasks(client):
    ev = Event("go-event")

    def wait_for(ev: Event) -> bool:
        return ev.wait(timeout=60)

    fut = client.submit(wait_for, ev)
    assert not ev.is_set()
    ev.set()
    assert fut.result(timeout=60) is True
    ev.clear()
    assert not ev.wait(timeout=0.05)


def test_published_future_outlives_its_client(client):
    with Client(client.address, set_as_default=False) as other:
        other.publish_dataset(answer=other.submit(lambda: 7), plain=[1, 2])
        with pytest.raises(ValueError, match="published already"):
            other.publish_dataset(plain=3)
    assert sorted(client.list_datasets()) == ["answer", "plain"]
    assert client.datasets["answer"].result(timeout=30) == 7
    assert client.get_dataset("plain") == [1, 2]
    assert client.get_dataset("nope", default=None) is None
    with pytest.raises(KeyError, match="nope"):
        client.get_dataset("nope")
    client.unpublish_dataset("answer")
    del client.datasets["plain"]
    assert client.list_datasets() == []


def test_bad_input_gets_a_clear_error(client):
    assert "unknown request 'queue-frobnicate'" in client.core.request("queue-frobnicate")["error"]
    with pytest.raises(TypeError, match="max_leases"):
        Semaphore(max_leases="2")  # type: ignore[arg-type]
    error = client.core.request("semaphore-register", name="raw", max_leases="2")["error"]
    assert "max_leases" in error
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        Lock("neg").acquire(timeout=-1)
    error = client.core._call(client.core._ask("event-wait", name="neg", timeout=-1))["error"]
    assert "timeout must be a number of seconds >= 0" in error
    with pytest.raises(ValueError, match="duration"):
        Event("neg").wait(timeout="soon")
    with pytest.raises(TypeError, match="list of lock names"):
        MultiLock("ab")  # type: ignore[arg-type]


def test_scheduler_plugin_hears_transitions_and_one_that_raises_is_removed(client, tmp_path):
    log = str(tmp_path / "transitions")

    class Recorder(rt.SchedulerPlugin):
        name = "recorder"

        def __init__(self, path: str):
            self.path = path

        def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
            with open(self.path, "a") as f:
                f.write(f"{key} {start} {finish}\n")

    class Broken(rt.SchedulerPlugin):
        name = "broken"

        def update_graph(self, scheduler, **kwargs):
            raise RuntimeError("boom")

    assert client.register_plugin(Recorder(log)) == "recorder"
    client.register_plugin(Broken())
    fut = client.submit(lambda: 1, key="plugged-1")
    assert fut.result(timeout=30) == 1
    assert client.submit(lambda: 2).result(timeout=30) == 2  # the scheduler carries on without Broken
    lines = wait_until(lambda: "plugged-1 processing memory\n" in open(log).read() and open(log).read(), "memory")
    assert "plugged-1 released waiting" in lines
    client.unregister_scheduler_plugin("recorder")
