"""User threads' direct request channels (``runtime/client/channel.py``) on a real cluster:
each asking thread has one, they end with their client, requests stay behind the messages
queued before them, and a reply nobody waits for is skipped."""

from __future__ import annotations

import itertools
import threading

import pytest
from conftest import wait_until

import runtime as rt
from runtime import Client, Event, Lock
from runtime.client.channel import Channels


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.client.address) as c:
        yield c


def _channels(client: Client) -> dict[str, int]:
    return client.core.request("channels")


def test_each_asking_thread_has_a_channel_which_ends_with_its_client(client):
    other = Client(client.address)
    for _ in range(2):  # the first may go on the client's connection, behind what it queued
        other.core.request("identity")
    asked, done = threading.Event(), threading.Event()

    def ask() -> None:
        other.core.request("identity")
        asked.set()
        done.wait()

    thread = threading.Thread(target=ask)
    thread.start()
    asked.wait()
    assert _channels(client)[other.core.id] == 2  # this thread's and the other's
    done.set()
    thread.join()
    # a thread that ended drops its channel with its thread-local state
    wait_until(lambda: _channels(client)[other.core.id] == 1, "the ended thread's channel is gone")
    other.close()
    wait_until(lambda: other.core.id not in _channels(client), "the closed client's channels are gone")


def test_a_request_goes_behind_the_messages_queued_before_it(client):
    for i in range(20):
        future = client.scatter(i)  # an update-data, queued on the client's connection
        # (the key's state, not who holds it: an inline value is held by every worker, and the
        # shared cluster may have none for a moment, restarting them after another test)
        states = client.core.request("task-states")
        assert states.get(future.key) == "memory", "the request overtook the put"
        lock = Lock(f"behind-{i}")  # and a channel request right after one that confirmed it
        assert lock.acquire(timeout=5)
        lock.release()


def test_a_thread_waiting_on_a_lock_is_woken_when_its_client_closes(client):
    lock = Lock("held-while-closing", client=client)
    assert lock.acquire()
    other = Client(client.address)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            Lock("held-while-closing", client=other).acquire()
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: _channels(client).get(other.core.id), "the waiter asked on its channel")
    other.close()
    thread.join(30)
    assert not thread.is_alive()
    assert outcome and isinstance(outcome[0], ConnectionError), outcome
    lock.release()
    again = Lock("held-while-closing", client=client)
    assert again.acquire(timeout=30)  # not granted to the closed client's waiter
    again.release()


def test_a_reply_that_came_too_late_is_skipped(client):
    event = Event("late-reply", client=client)
    with pytest.raises(TimeoutError, match="did not answer 'event-wait'"):
        client.core.request_args("event-wait", {"name": event.name, "timeout": None}, timeout=0.2)
    event.set()  # the wait above is answered now, to nobody
    assert client.core.request("identity")["workers"]  # this thread's next reply is its own
    assert event.is_set()


def test_a_channel_for_a_client_that_is_not_connected_is_refused(client):
    channels = Channels(client.address, "client-nobody", itertools.count())
    with pytest.raises(ConnectionError, match="lost the request channel"):
        channels.request("identity", {}, 30)
    channels.close("done")


def test_a_closed_client_makes_no_requests(client):
    other = Client(client.address)
    other.close()
    with pytest.raises(ConnectionError, match="can make no more requests"):
        other.core.request("identity")


def test_tasks_ask_on_their_threads_channels(client):
    def locked_twice(lock: Lock) -> bool:
        with lock:
            pass
        with lock:
            return rt.get_worker() is not None

    assert client.submit(locked_twice, Lock("in-a-task"), pure=False).result()
