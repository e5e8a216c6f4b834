"""Pub/sub between tasks and actors goes worker to worker, as Dask's does: the scheduler only
tells publishers where the subscribers are (and relays for drivers).  Real processes."""

from __future__ import annotations

import itertools
import os
import signal
import sys

import cloudpickle
import pytest
from conftest import wait_until

import runtime as rt
from runtime import Client

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module

_names = itertools.count()


def fresh(what: str) -> str:
    return f"direct-{what}-{os.getpid()}-{next(_names)}"


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.client.address) as c:
        yield c


@rt.remote
class Subscriber:
    """Subscribes to a topic on a worker; hands out what it got."""

    def __init__(self, topic: str):
        self.sub = rt.Sub(topic)

    def take(self, n: int) -> list:
        return [self.sub.get(timeout=30) for _ in range(n)]

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.sub.close()


@rt.remote
class Publisher:
    """A long-lived publisher on a worker: what it knows of its subscribers, and puts."""

    def __init__(self, topic: str):
        self.pub = rt.Pub(topic)

    def targets(self) -> tuple:
        t = self.pub._pubsub.targets[self.pub.name]
        return t.addresses, t.relay

    def put(self, *msgs: object) -> None:
        for msg in msgs:
            self.pub.put(msg)


def _publish(topic: str, n: int) -> tuple:
    pub = rt.Pub(topic)  # inside a task: the worker process's client, which sends directly
    for i in range(n):
        pub.put(i)
    return pub.subscribers


def _state(client: Client, topic: str) -> dict:
    return client.core.request("pubsub-state", topic=topic)


def _two_workers(client: Client) -> list[str]:
    client.wait_for_workers(2)
    return sorted(client.scheduler_info()["workers"])[:2]


def test_a_task_publishes_to_an_actor_without_the_scheduler(client):
    topic = fresh("task-to-actor")
    a, b = _two_workers(client)
    sub = Subscriber.options(workers=[b]).remote(topic)
    rt.get(sub.pid.remote(), timeout=30)  # it has subscribed
    (address,) = _state(client, topic)["addresses"].values()
    assert client.submit(_publish, topic, 5, workers=[a], pure=False).result(timeout=30) == (address,)
    assert rt.get(sub.take.remote(5), timeout=30) == [0, 1, 2, 3, 4]
    assert _state(client, topic)["relayed"] == 0  # not one message passed the scheduler
    rt.kill(sub)


def test_publishers_are_told_of_subscribers_joining_and_leaving(client):
    topic = fresh("join-leave")
    pub = Publisher.remote(topic)
    assert rt.get(pub.targets.remote(), timeout=30) == ((), False)
    sub = Subscriber.remote(topic)
    rt.get(sub.pid.remote(), timeout=30)
    (address,) = _state(client, topic)["addresses"].values()
    wait_until(lambda: rt.get(pub.targets.remote()) == ((address,), False), "the publisher heard of the actor")
    driver_sub = rt.Sub(topic, client=client)  # a driver: reached through the scheduler
    wait_until(lambda: rt.get(pub.targets.remote()) == ((address,), True), "the publisher heard of the driver")
    rt.get(pub.put.remote("a", "b"), timeout=30)
    assert [driver_sub.get(timeout=30) for _ in range(2)] == ["a", "b"]
    assert rt.get(sub.take.remote(2), timeout=30) == ["a", "b"]
    assert _state(client, topic)["relayed"] == 2  # to the driver only
    driver_sub.close()
    rt.get(sub.close.remote(), timeout=30)
    wait_until(lambda: rt.get(pub.targets.remote()) == ((), False), "the publisher heard both left")
    assert _state(client, topic)["subscribers"] == {}
    rt.kill(pub)
    rt.kill(sub)


def test_a_subscriber_that_dies_is_cleaned_up(client):
    topic = fresh("dies")
    a, b = _two_workers(client)
    pub = Publisher.options(workers=[a]).remote(topic)
    sub = Subscriber.options(workers=[b]).remote(topic)
    pid = rt.get(sub.pid.remote(), timeout=30)
    wait_until(lambda: rt.get(pub.targets.remote())[0], "the publisher heard of the subscriber")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _state(client, topic)["subscribers"] == {}, "the scheduler forgot the dead subscriber")
    wait_until(lambda: rt.get(pub.targets.remote()) == ((), False), "the publisher forgot it too")
    rt.get(pub.put.remote("to nobody"), timeout=30)  # nothing to deliver, nothing breaks
    assert _state(client, topic)["relayed"] == 0
    rt.kill(pub)


def test_a_message_over_the_frame_limit_is_refused_naming_its_topic(client, monkeypatch):
    # Relayed, it once ended the driver's connection to the scheduler (and every future with it).
    from runtime.comm import codec

    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", 10_000)
    topic = fresh("too-large")
    pub = rt.Pub(topic)
    with pytest.raises(ValueError, match=f"for topic '{topic}' is over the 10,000-byte limit.*Queue or Variable"):
        pub.put(b"x" * 20_000)
    pub.put(b"x" * 100)  # the client is fine
    assert client.submit(len, "abc").result(timeout=30) == 3
