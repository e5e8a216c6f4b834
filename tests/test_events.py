"""Events (log_event, get_events, subscribe_topic) and pub/sub (Pub, Sub): the pure state of
each scheduler extension, then the real thing on a cluster, from drivers and tasks."""

from __future__ import annotations

import asyncio
import datetime
import gc
import itertools
import os
import signal
import subprocess
import sys
import threading

import cloudpickle
import msgspec
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime import Client
from runtime.comm import messages as m
from runtime.comm.messages import MalformedMessage
from runtime.comm.serialize import SerializationError
from runtime.config import parse_timeout
from runtime.scheduler.extensions.event_log import EventLog
from runtime.scheduler.extensions.pubsub import PubSub
from runtime.scheduler.server import Scheduler

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module

# -- the pure state ----------------------------------------------------------------------


def test_event_log_keeps_the_last_events_of_each_topic_and_addresses_subscribers():
    log = EventLog(maxlen=2)
    assert log.log("a", 1, now=1.0) == {}
    log.subscribe("a", "c1")
    log.subscribe("b", "c2")
    out = log.log(["a", "b"], {"x": 2}, now=2.0)
    assert out == {
        "c1": [m.LoggedEvent("a", 2.0, {"x": 2})],
        "c2": [m.LoggedEvent("b", 2.0, {"x": 2})],
    }
    log.log("a", 3, now=3.0)
    assert log.get("a") == [[2.0, {"x": 2}], [3.0, 3]]  # the oldest went
    assert log.get("nothing") == [] and set(log.get(None)) == {"a", "b"}
    log.client_gone("c1")
    assert log.log("a", 4, now=4.0) == {} and "a" not in log.subscribers
    log.unsubscribe("b", "c2")
    assert log.subscribers == {}


@pytest.mark.parametrize("topic", [5, None, "", [], ["a", 3], b"a"])
def test_event_log_refuses_a_topic_that_is_not_a_string_or_a_list_of_them(topic):
    with pytest.raises((TypeError, ValueError), match="topic"):
        EventLog(10).log(topic, 1, now=0.0)


def test_pubsub_counts_subs_per_client_and_routes_to_each_subscribed_client_once():
    ps = PubSub()
    ps.subscribe("t", "c1")
    ps.subscribe("t", "c1")
    ps.subscribe("t", "c2")
    msg = m.PubsubMsg("t", b"m")
    assert ps.route(msg, "c3") == {c: [msg] for c in ("c1", "c2")}
    ps.unsubscribe("t", "c1")
    assert ps.subscribers["t"] == {"c1": 1, "c2": 1}
    ps.client_gone("c2")
    ps.unsubscribe("t", "c1")
    assert ps.subscribers == {} and ps.route(msg, "c3") == {}
    with pytest.raises(TypeError, match="topic"):
        ps.subscribe(7, "c1")
    assert ps.relayed == {"t": 2}


def test_pubsub_tells_direct_publishers_where_subscribers_are_and_relays_only_what_they_cannot_reach():
    ps = PubSub()
    assert ps.publish("t", "w-pub") == {"addresses": [], "relay": False, "version": 0}
    (update,) = ps.subscribe("t", "w-sub", "tcp://10.0.0.2:7000")["w-pub"]
    assert (update.addresses, update.relay) == (("tcp://10.0.0.2:7000",), False)
    msg = m.PubsubMsg("t", b"m")
    assert ps.route(msg, "w-pub") == {}  # it reached the worker directly: the scheduler relays nothing
    (update,) = ps.subscribe("t", "driver")["w-pub"]
    assert (update.addresses, update.relay) == (("tcp://10.0.0.2:7000",), True)
    assert ps.route(msg, "w-pub") == {"driver": [msg]}  # the driver only
    assert ps.route(msg, "driver-pub") == {"w-sub": [msg], "driver": [msg]}  # a driver's goes through
    (gone,) = ps.client_gone("w-sub")["w-pub"]  # a subscriber that dies: its publishers are told
    assert (gone.addresses, gone.relay) == ((), True) and gone.version > update.version
    assert ps.unsubscribe("t", "driver")["w-pub"][0].relay is False
    assert ps.state("t") == {"subscribers": {}, "publishers": {"w-pub": 1}, "addresses": {}, "relayed": 3}
    ps.unpublish("t", "w-pub")
    assert ps.subscribe("t", "w-sub", "tcp://10.0.0.2:7000") == {}  # no publisher left to tell
    with pytest.raises(TypeError, match="address"):
        ps.subscribe("t", "c", 5)


@pytest.mark.parametrize(
    "wire, error",
    [
        (["pubsub-msg", "t", "not pickled"], "field 'msg'"),
        (["pubsub-msg", "", b"m"], "field 'topic'"),
        (["pubsub-msg", "t"], "pubsub-msg"),
        (["update-graph", [], [], 0, [["a", "b"], ["only-one"]]], "one id per tag"),
        (["update-graph", [], [], 0, [[], []]], "one id per tag"),
        (["update-graph", [], [], 0, [[""], ["id"]]], "field 'span'"),
    ],
)
def test_the_extensions_messages_are_checked_as_they_decode(wire, error):
    with pytest.raises(MalformedMessage, match=error):
        m.TO_SCHEDULER.decode(msgspec.msgpack.encode([wire]))


def test_only_clients_publish_and_the_scheduler_dispatches_it_through_its_tables():
    tables = Scheduler()._handler_tables()
    assert m.PubsubMsg in tables["client"] and all(m.PubsubMsg not in tables[k] for k in ("worker", "node"))
    assert {m.PubsubMsg, m.LoggedEvent} <= set(m.TO_CLIENT.kinds)


def test_timeouts_are_numbers_strings_or_timedeltas_and_never_negative():
    assert parse_timeout(None) is None
    assert parse_timeout(2) == 2.0 and parse_timeout("200ms") == 0.2 and parse_timeout("1.5s") == 1.5
    assert parse_timeout("2m") == 120.0 and parse_timeout(datetime.timedelta(seconds=3)) == 3.0
    for bad, error in [(-1, ValueError), ("-1s", ValueError), ("soon", ValueError), (True, TypeError), ([], TypeError)]:
        with pytest.raises(error, match="timeout"):
            parse_timeout(bad)


# -- on a cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2) as c, validated(c.core):
        yield c


_topics = itertools.count()


def fresh(name: str) -> str:
    """A topic no other test used."""
    return f"{name}-{next(_topics)}"


def test_log_event_and_get_events(client):
    topic = fresh("log")
    client.log_event(topic, {"a": 1})
    client.log_event([topic, topic + "-other"], [1, 2])
    events = client.get_events(topic)
    assert [msg for _, msg in events] == [{"a": 1}, [1, 2]]
    assert all(isinstance(t, float) for t, _ in events) and events[0][0] <= events[1][0]
    everything = client.get_events()
    assert everything[topic] == events and [m for _, m in everything[topic + "-other"]] == [[1, 2]]
    assert client.get_events(fresh("never")) == ()


def _log_from_task(topic: str, x: int) -> int:
    rt.log_event(topic, {"from": "task", "x": x})
    return x


def test_tasks_log_events_too(client):
    topic = fresh("task")
    assert client.gather(client.map(_log_from_task, [topic] * 3, range(3))) == [0, 1, 2]
    assert sorted(msg["x"] for _, msg in client.get_events(topic)) == [0, 1, 2]


def test_subscribe_topic_calls_the_handler_off_the_loop_in_order_until_unsubscribed(client):
    topic = fresh("sub")
    got, threads = [], set()

    def handler(event):
        threads.add(threading.current_thread().name)
        got.append(event[1])

    client.subscribe_topic(topic, handler)
    for i in range(5):
        client.log_event(topic, i)
    client.submit(_log_from_task, topic, 5).result()
    wait_until(lambda: len(got) == 6, "the handler saw every event")
    assert got[:5] == [0, 1, 2, 3, 4] and got[5] == {"from": "task", "x": 5}
    assert threads == {"runtime-events_0"}
    client.unsubscribe_topic(topic)
    client.log_event(topic, "after")
    assert client.core.request("event-subscribers", topic=topic) == []
    with pytest.raises(ValueError, match="no event handler"):
        client.unsubscribe_topic(topic)


def test_an_async_handler_is_run_to_its_end(client):
    topic, got = fresh("async"), []

    async def handler(event):
        await asyncio.sleep(0)
        got.append(event[1])

    client.subscribe_topic(topic, handler)
    client.log_event(topic, "x")
    wait_until(lambda: got == ["x"], "the async handler ran")
    client.unsubscribe_topic(topic)


def test_bad_event_input_is_a_clear_error(client):
    with pytest.raises(TypeError, match="msgpack serializable"):
        client.log_event(fresh("bad"), object())
    with pytest.raises(TypeError, match="topic"):
        client.log_event(5, "x")
    with pytest.raises(TypeError, match="topic"):
        client.get_events(["a"])
    with pytest.raises(TypeError, match="callable"):
        client.subscribe_topic(fresh("bad"), "not a function")
    # Past the client's checks, the scheduler answers with an error too (and stays up).
    assert "topic" in client.core.request("log-event", topic=5, msg=1)["error"]
    assert "unknown request 'events-nonsense'" in client.core.request("events-nonsense")["error"]
    assert "error" in client.core.request("pubsub-subscribe", topic=["not", "a", "string"])


def test_pub_and_sub_between_clients(client):
    topic = fresh("pubsub")
    with Client(client.address) as other:
        sub = rt.Sub(topic, client=client)
        sub2 = rt.Sub(topic, client=client)
        pub = rt.Pub(topic, client=other)
        for i in range(3):
            pub.put({"i": i})
        assert [sub.get(timeout=10)["i"] for _ in range(3)] == [0, 1, 2]
        assert list(itertools.islice(sub2, 3)) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert client.core.request("pubsub-subscribers", topic=topic) == {client.id: 2}


def _publish(topic: str, n: int) -> int:
    pub = rt.Pub(topic)  # inside a task: the worker process's client
    for i in range(n):
        pub.put(i)
    return n


def _subscribe_and_collect(topic: str, ready: str, n: int) -> list:
    sub = rt.Sub(topic)
    rt.Pub(ready).put("subscribed")
    return [sub.get(timeout=30) for _ in range(n)]


def test_tasks_publish_to_drivers_and_subscribe_to_them(client):
    topic, ready = fresh("from-task"), fresh("ready")
    sub = rt.Sub(topic, client=client)
    assert client.submit(_publish, topic, 4).result() == 4
    assert sorted(sub.get("10s") for _ in range(4)) == [0, 1, 2, 3]

    topic = fresh("to-task")
    ready_sub = rt.Sub(ready, client=client)
    collected = client.submit(_subscribe_and_collect, topic, ready, 3)
    assert ready_sub.get(timeout=30) == "subscribed"
    pub = rt.Pub(topic, client=client)
    for x in ["a", "b", "c"]:
        pub.put(x)
    assert collected.result(timeout=30) == ["a", "b", "c"]


def test_sub_times_out_and_refuses_bad_input(client):
    sub = rt.Sub(fresh("quiet"), client=client)
    with pytest.raises(TimeoutError, match="no message"):
        sub.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        sub.get(timeout=datetime.timedelta(milliseconds=10))
    with pytest.raises(ValueError, match="negative"):
        sub.get(timeout=-1)
    with pytest.raises(TypeError, match="topic"):
        rt.Sub("", client=client)
    with pytest.raises(TypeError, match="topic"):
        rt.Pub(("a",), client=client)
    with pytest.raises(SerializationError, match="cannot pickle a message"):
        rt.Pub(fresh("x"), client=client).put(threading.Lock())
    with pytest.raises(TypeError, match="runtime.Client"):
        rt.Sub("t", client="tcp://nowhere")


def test_a_closed_or_collected_sub_unsubscribes(client):
    topic = fresh("gc")
    sub, other = rt.Sub(topic, client=client), rt.Sub(topic, client=client)
    sub.close()
    wait_until(lambda: client.core.request("pubsub-subscribers", topic=topic) == {client.id: 1}, "one Sub left")
    with pytest.raises(rt.ClientClosedError, match="closed"):
        sub.get(timeout=1)
    del other
    gc.collect()
    wait_until(lambda: client.core.request("pubsub-subscribers", topic=topic) == {}, "no Sub left")


_SUBSCRIBER = """
import sys, time
from runtime import Client, Sub
c = Client(sys.argv[1])
s = Sub(sys.argv[2], client=c)
c.subscribe_topic(sys.argv[2], print)
print(c.id, flush=True)
time.sleep(600)
"""


def test_a_subscriber_whose_client_dies_is_forgotten(client):
    topic = fresh("dies")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUBSCRIBER, client.address, topic],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RUNTIME_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        other = proc.stdout.readline().strip()
        assert other.startswith("client-"), other
        assert client.core.request("pubsub-subscribers", topic=topic) == {other: 1}
        assert client.core.request("event-subscribers", topic=topic) == [other]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: client.core.request("pubsub-subscribers", topic=topic) == {}, "the dead client's Sub is gone")
    assert client.core.request("event-subscribers", topic=topic) == []
    rt.Pub(topic, client=client).put("to nobody")  # nothing to deliver, nothing breaks
    client.log_event(topic, "to nobody")
