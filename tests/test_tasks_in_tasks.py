"""Tasks that use the cluster: nested and recursive tasks, get_client, worker_client,
secede/rejoin, and the cases that used to hang (issue 15 point 2, issue 16's hangs).

The module's cluster has two workers of one thread each, so any task that held its thread
while waiting on another would deadlock it at the third level.  Each test has a timeout
mark: a regression fails instead of hanging the run.
"""

from __future__ import annotations

import threading

import pytest
from conftest import wait_until

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


@rt.remote(max_concurrency=2)
class Gate:
    """``wait()`` returns its argument once ``open()`` is called (or fails when told to)."""

    def __init__(self):
        self.event = threading.Event()
        self.fail = False

    def wait(self, x):
        assert self.event.wait(30), "the gate was never opened"
        if self.fail:
            raise ValueError("the gate failed on purpose")
        return x

    def open(self, fail: bool = False):
        self.fail = fail
        self.event.set()


@rt.remote
def plus_one(x: int) -> int:
    return x + 1


def test_a_pending_actor_result_as_an_argument_does_not_block_the_caller(cluster):
    gate = Gate.remote()
    pending = gate.wait.remote(1)
    first = plus_one.remote(pending)  # returns at once: its graph waits in the client
    second = plus_one.remote(first)  # so does one that needs a held task
    unrelated = plus_one.remote(10)  # and nothing else waits for them
    assert rt.get(unrelated) == 11
    assert not first.done() and not second.done()
    rt.get(gate.open.remote())
    assert rt.get([first, second]) == [2, 3]


def test_a_graph_waiting_for_an_actor_result_can_be_cancelled(cluster):
    gate = Gate.remote()
    pending = gate.wait.remote(1)
    first = plus_one.remote(pending)
    second = plus_one.remote(first)
    kept = plus_one.remote(pending)
    rt.cancel(first)  # sent at once, and takes the held dependent with it
    for f in (first, second):
        with pytest.raises(rt.TaskCancelledError):
            rt.get(f, timeout=10)
    rt.get(gate.open.remote())
    assert rt.get(kept) == 2
    states = cluster.client.request("task-states")
    assert first.key not in states and second.key not in states


def test_a_failed_actor_call_fails_the_held_tasks_that_need_it(cluster):
    gate = Gate.remote()
    pending = gate.wait.remote(1)
    first = plus_one.remote(pending)
    second = plus_one.remote(first)
    rt.get(gate.open.remote(fail=True))
    for f in (first, second):
        with pytest.raises(ValueError, match="failed on purpose"):
            rt.get(f, timeout=10)


def test_a_held_result_dropped_before_it_leaves_is_released_after(cluster):
    gate = Gate.remote()
    pending = gate.wait.remote(5)
    dropped = plus_one.remote(pending)
    key = dropped.key
    kept = plus_one.remote(dropped)
    del dropped
    rt.get(gate.open.remote())
    assert rt.get(kept) == 7
    assert cluster.client.request("task-states").get(key) in ("released", None)  # its value is freed
    del kept  # and it is forgotten with its last dependent
    wait_until(lambda: key not in cluster.client.request("task-states"), "the dropped key is forgotten")


#: the names of a worker's executor threads (for Client.run; pickled by value)
executor_threads = eval(
    "lambda: [t.name for t in __import__('threading').enumerate() if t.name.startswith('executor-')]"
)


def test_workers_are_back_to_their_threads_after_nested_waits_and_a_forced_cancel(cluster):
    assert rt.get(factorial.remote(5)) == 120
    gate = Gate.remote()

    @rt.remote
    def wait_on_gate(x):
        return rt.get(plus_one.remote(gate.wait.remote(x)))

    parent = wait_on_gate.remote(1)
    wait_until(lambda: cluster.client.request("task-states").get(parent.key) == "processing", "the parent runs")
    rt.cancel(parent, force=True)  # interrupted while seceded, waiting in get
    with pytest.raises(rt.TaskCancelledError):
        rt.get(parent, timeout=10)
    rt.get(gate.open.remote())
    client = rt.get_client()

    def threads_per_worker() -> list[int]:
        return sorted(len(names) for names in client.run(executor_threads).values())

    wait_until(lambda: threads_per_worker() == [1, 1], "every worker has one executor thread again")
    assert rt.get(factorial.remote(4)) == 24
