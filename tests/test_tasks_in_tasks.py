"""Tasks that use the cluster: nested and recursive tasks, get_client, worker_client,
secede/rejoin, and the cases that used to hang (issue 15 point 2, issue 16's hangs).

The module's cluster has two workers of one thread each, so any task that held its thread
while waiting on another would deadlock it at the third level.  Each test has a timeout
mark: a regression fails instead of hanging the run.
"""

from __future__ import annotations

import threading

import pytest

import runtime as rt

pytestmark = pytest.mark.timeout(60)


@rt.remote
def factorial(n: int) -> int:
    return 1 if n <= 1 else n * rt.get(factorial.remote(n - 1))


@rt.remote
def is_even(n: int) -> bool:
    return True if n == 0 else rt.get(is_odd.remote(n - 1))


@rt.remote
def is_odd(n: int) -> bool:
    return False if n == 0 else rt.get(is_even.remote(n - 1))


#: plain functions for Client.submit, pickled by value (a test module's own functions are
#: pickled by reference, and workers cannot import this module)
inc = eval("lambda x: x + 1")


def _tree_sum():
    def tree_sum(depth: int, width: int) -> int:
        """A task that fans out ``width`` copies of itself per level, through get_client()."""
        if depth == 0:
            return 1
        client = rt.get_client()
        futures = [client.submit(tree_sum, depth - 1, width, pure=False) for _ in range(width)]
        return sum(client.gather(futures))

    return tree_sum


def test_a_task_calling_itself_five_levels_deep_completes(cluster):
    assert rt.get(factorial.remote(5)) == 120


def test_mutually_recursive_tasks_complete(cluster):
    assert rt.get([is_even.remote(6), is_odd.remote(5), is_even.remote(3)]) == [True, True, False]


def test_a_fan_out_deeper_than_the_threads_completes(cluster):
    # 1 + 3 + 9 tasks waiting at once, on two threads.
    assert rt.get(rt.remote(_tree_sum()).remote(3, 3)) == 27


def test_get_client_in_a_task_is_a_client_of_the_same_cluster(cluster):
    def submit_and_gather(n: int) -> tuple[list[int], str, bool]:
        client = rt.get_client()
        results = client.gather(client.map(inc, range(n)))
        return results, client.address, rt.get_client() is client

    results, address, same = rt.get(rt.remote(submit_and_gather).remote(5))
    assert results == [1, 2, 3, 4, 5] and same
    assert address == cluster.client.address


def test_worker_client_secedes_for_the_block_and_rejoins(cluster):
    def nested(n: int) -> tuple[int, bool, bool]:
        from runtime.worker.secession import thread_state

        with rt.worker_client() as client:
            inside = thread_state.seceded
            total = sum(client.gather([client.submit(inc, i) for i in range(n)]))
        return total, inside, thread_state.seceded

    assert rt.get(rt.remote(nested).remote(4)) == (10, True, False)


def test_secede_and_rejoin_by_hand_and_get_worker_keeps_working(cluster):
    def by_hand(depth: int) -> tuple[int, str, str]:
        before = rt.get_worker().address
        if depth == 0:
            return 0, before, before
        client = rt.get_client()
        future = client.submit(by_hand, depth - 1, pure=False)
        rt.secede()
        rt.secede()  # a second call while seceded does nothing
        below = future.result()[0]
        rt.rejoin()
        rt.rejoin()  # nor does a rejoin when not seceded
        return below + 1, before, rt.get_worker().address

    depth, before, after = rt.get(rt.remote(by_hand).remote(4))
    assert depth == 4 and before == after


def test_the_scheduler_hears_that_a_waiting_task_seceded(cluster):
    def wait_for_child() -> int:
        return rt.get(rt.remote(inc).remote(1))

    future = rt.remote(wait_for_child).remote()
    assert rt.get(future) == 2
    story = cluster.client.request("story", keys=[future.key])
    assert ["processing", "processing"] in [t[1:3] for t in story]


def test_secede_and_worker_client_outside_a_task_say_so(cluster):
    with pytest.raises(ValueError, match="only inside a task"):
        rt.secede()
    with pytest.raises(ValueError, match="only inside a task"):
        rt.rejoin()
    with pytest.raises(ValueError, match="get_worker"):
        with rt.worker_client():
            pass
    with pytest.raises(ValueError, match="timeout"):
        rt.get_client(timeout=-1)
    # In a driver after init: a Client on the runtime's own connection; closing it keeps that open.
    client = rt.get_client()
    assert client.core is cluster.client
    client.close()
    assert rt.get(rt.remote(inc).remote(1)) == 2
    assert rt.get_client() is not client


def test_a_task_in_an_actor_method_thread_waits_without_seceding(cluster):
    @rt.remote
    class Caller:
        def run(self, n: int) -> tuple[int, str]:
            return rt.get(factorial.remote(n)), threading.current_thread().name

    caller = Caller.remote()
    value, thread = rt.get(caller.run.remote(4))
    assert value == 24 and not thread.startswith("executor")


# -- actors: the cases that used to hang ------------------------------------------------------


@rt.remote
class Node:
    """An actor that calls the next one of a chain and returns what it says."""

    def __init__(self, name: str, next_node=None):
        self.name, self.next = name, next_node

    def chain(self) -> list[str]:
        below = rt.get(self.next.chain.remote()) if self.next is not None else []
        return [self.name, *below]

    def where(self) -> str:
        return rt.get_worker().address

    def echo(self, x):
        return x


def _one_worker(cluster) -> str:
    return sorted(cluster.client.request("identity")["workers"])[0]


def test_nested_calls_between_actors_on_one_worker_complete(cluster):
    worker = _one_worker(cluster)
    pinned = Node.options(workers=[worker])
    c = pinned.remote("c")
    b = pinned.remote("b", c)
    a = pinned.remote("a", b)
    assert rt.get([x.where.remote() for x in (a, b, c)]) == [worker] * 3
    assert rt.get(a.chain.remote()) == ["a", "b", "c"]


def test_a_task_calling_actors_on_its_own_worker_completes(cluster):
    worker = _one_worker(cluster)
    c = Node.options(workers=[worker]).remote("c")
    b = Node.options(workers=[worker]).remote("b", c)

    @rt.remote
    def call(handle) -> list[str]:
        return rt.get(handle.chain.remote())

    assert rt.get(call.options(workers=[worker]).remote(b)) == ["b", "c"]


def test_creating_an_actor_from_a_task_completes_on_its_own_worker(cluster):
    @rt.remote
    def make_and_call(name: str) -> tuple[list[str], str, str]:
        here = rt.get_worker().address
        actor = Node.options(workers=[here]).remote(name)  # its creation queues behind this task
        return rt.get(actor.chain.remote()), rt.get(actor.where.remote()), here

    chain, there, here = rt.get(make_and_call.remote("made-in-a-task"))
    assert chain == ["made-in-a-task"] and there == here
