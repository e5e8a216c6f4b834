"""Ray's API as Ray's users know it: cases from Ray's documentation and test suite, written
in Ray's idiom against ``runtime`` (``import runtime as ray`` is all a port should need).

Where runtime still differs from Ray, ``docs/coming-from-ray.md`` says how and why.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest
from conftest import wait_until

import runtime as ray

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ``cluster`` (conftest): a two-worker cluster for the module, validated after each test.


@ray.remote
def f(x):
    return x


@ray.remote
def raises_value_error():
    raise ValueError("bad input")


# -- errors ----------------------------------------------------------------------------------


def test_task_error_is_both_the_tasks_exception_and_task_error(cluster):
    # Ray: a RayTaskError derived class, "except ValueError" and "except RayTaskError" both work
    ref = raises_value_error.remote()
    with pytest.raises(ValueError, match="bad input"):
        ray.get(ref)
    with pytest.raises(ray.TaskError) as info:
        ray.get(ref)
    assert isinstance(info.value, ValueError) and str(info.value) == "bad input"
    assert not isinstance(info.value, RuntimeError)  # nothing but what the task raised, and TaskError


def test_dependent_task_raises_the_dependencys_error(cluster):
    with pytest.raises(ValueError, match="bad input"):
        ray.get(f.remote(raises_value_error.remote()))


def test_sys_exit_in_a_task_fails_the_task_not_the_driver(cluster):
    @ray.remote
    def exits():
        sys.exit(1)

    with pytest.raises(ray.TaskError, match=r"sys.exit\(1\)"):
        ray.get(exits.remote())
    assert ray.get(f.remote(1)) == 1  # the worker lives on


def test_sys_exit_under_the_local_scheduler(cluster):
    @ray.remote
    def exits():
        sys.exit()

    with ray.config.set(scheduler="sync"), pytest.raises(ray.TaskError, match="sys.exit"):
        ray.get(exits.remote())


# -- calls are checked at .remote() ------------------------------------------------------------


def test_arguments_are_checked_against_the_signature_at_remote(cluster):
    @ray.remote
    def two(a, b=1):
        return a + b

    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        two.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        two.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        two.remote(1, c=3)
    assert ray.get(two.remote(1, b=2)) == 3


@ray.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    @ray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n

    def many(self, k):
        return list(range(k))

    @staticmethod
    def static(x):
        return x


def test_actor_constructor_and_methods_are_checked_at_remote(cluster):
    with pytest.raises(TypeError, match="missing a required argument: 'start'"):
        Counter.remote()
    c = Counter.remote(0)
    with pytest.raises(TypeError, match="too many positional arguments"):
        c.add.remote(1, 2)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        c.static.remote()
    assert ray.get(c.add.remote(k=2)) == 2
    assert ray.get(c.static.remote(5)) == 5


# -- num_returns on actor methods --------------------------------------------------------------


def test_actor_method_num_returns(cluster):
    c = Counter.remote(3)
    a, b = c.pair.remote()
    assert ray.get([a, b]) == [3, -3]
    refs = c.many.options(num_returns=3).remote(3)
    assert ray.get(refs) == [0, 1, 2]
    bad = c.many.options(num_returns=2).remote(3)
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(bad[1])
    with pytest.raises(ValueError, match="num_returns"):
        c.many.options(num_returns=0)


# -- await ---------------------------------------------------------------------------------------


def test_await_a_ref_in_asyncio(cluster):
    import asyncio

    async def main():
        return await f.remote(5), await asyncio.gather(f.remote(1), f.remote(2))

    assert asyncio.run(main()) == (5, [1, 2])

    async def fails():
        await raises_value_error.remote()

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(fails())


@ray.remote
class AsyncActor:
    async def run(self, x):
        return await f.remote(x) + 1


def test_await_a_ref_in_an_async_actor_method(cluster):
    a = AsyncActor.remote()
    assert ray.get(a.run.remote(41)) == 42


# -- kill and get_actor --------------------------------------------------------------------------


def test_kill_and_get_actor_with_a_wrong_argument_raise_value_error(cluster):
    with pytest.raises(ValueError, match="actor handle"):
        ray.kill(f.remote(1))
    with pytest.raises(ValueError, match="non-empty"):
        ray.get_actor("")


# -- ObjectRefs inside results -------------------------------------------------------------------


@ray.remote
def make_refs(n):
    return [f.remote(i) for i in range(n)]


def test_refs_returned_from_a_task_work(cluster):
    import gc

    refs = ray.get(make_refs.remote(3))
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    gc.collect()  # the task's own refs are long gone: the result holds the values
    assert ray.get(refs) == [0, 1, 2]
    nested = ray.get(f.remote(None))
    assert nested is None


def test_a_returned_ref_is_released_with_what_held_it(cluster):
    import gc

    outer = make_refs.remote(1)
    [inner] = ray.get(outer)
    key = inner.key
    assert key in cluster.client.request("task-states")
    del inner, outer
    gc.collect()
    wait_until(lambda: key not in cluster.client.request("task-states"), "the returned ref's value is released")


def test_refs_inside_dicts_and_passed_on_to_tasks(cluster):
    @ray.remote
    def in_a_dict():
        return {"a": f.remote(1), "b": [f.remote(2)]}

    d = ray.get(in_a_dict.remote())
    assert ray.get(d["a"]) == 1 and ray.get(d["b"][0]) == 2
    refs = ray.get(make_refs.remote(4))
    assert ray.get(f.remote(refs[3])) == 3  # a borrowed ref passed on as a task's argument


def test_put_of_refs_and_refs_from_an_actor(cluster):
    inner = f.remote(7)
    outer = ray.put([inner])
    del inner
    assert ray.get(ray.get(outer)[0]) == 7

    @ray.remote
    class Maker:
        def make(self):
            return [f.remote(8)]

    m = Maker.remote()
    [ref] = ray.get(m.make.remote())
    assert ray.get(ref) == 8


def test_kill_with_no_restart_false_restarts_an_actor_with_restarts_left(cluster):
    c = Counter.options(max_restarts=1).remote(0)
    assert ray.get(c.add.remote()) == 1
    ray.kill(c, no_restart=False)
    assert ray.get(c.add.remote(), timeout=60) == 1  # a fresh instance
    ray.kill(c, no_restart=False)  # no restarts left: it dies
    with pytest.raises(ray.ActorDiedError):
        ray.get(c.add.remote(), timeout=60)


# -- handles from get_actor and max_task_retries ------------------------------------------------


def test_get_actor_handles_check_signatures_and_know_num_returns(cluster):
    original = Counter.options(name="checked-counter").remote(4)  # kept: a named actor ends with its last handle
    c = ray.get_actor("checked-counter")
    assert c == original
    with pytest.raises(TypeError, match="too many positional arguments"):
        c.add.remote(1, 2)
    a, b = c.pair.remote()  # @ray.method(num_returns=2), known from the class
    assert ray.get([a, b]) == [4, -4]
    ray.kill(c)


@ray.remote
class Crasher:
    """Dies (its worker with it) the first time ``crash_once`` runs on a fresh instance."""

    def __init__(self, marker):
        self.marker = marker

    def crash_once(self):
        import os

        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return "done"


def test_max_task_retries_sends_an_interrupted_call_to_the_restarted_actor(cluster, tmp_path):
    c = Crasher.options(max_restarts=1, max_task_retries=1).remote(str(tmp_path / "a"))
    assert ray.get(c.crash_once.remote(), timeout=60) == "done"


def test_without_max_task_retries_an_interrupted_call_fails(cluster, tmp_path):
    c = Crasher.options(max_restarts=1).remote(str(tmp_path / "b"))
    with pytest.raises(ray.ActorDiedError):
        ray.get(c.crash_once.remote(), timeout=60)
    assert ray.get(c.crash_once.remote(), timeout=60) == "done"  # the restarted actor


def test_max_task_retries_is_checked():
    with pytest.raises(ValueError, match="max_task_retries"):
        Crasher.options(max_task_retries=-2)


# -- actor lifetimes ---------------------------------------------------------------------------
# Ray: a non-detached actor, named or not, ends once no handle to it is left in any process;
# its name is free again.  A handle in flight (a task's argument) keeps it; calls already
# made are answered first; a detached actor lives until killed.


@ray.remote
class Tracked:
    """Writes ``marker`` when its instance is collected (after its actor ended)."""

    def __init__(self, marker):
        self.marker = marker

    def ping(self):
        return "pong"

    def wait_for(self, gate):
        import os
        import time

        while not os.path.exists(gate):  # held until the driver opens the gate
            time.sleep(0.01)
        return "opened"

    def __del__(self):
        open(self.marker, "w").close()


@ray.remote
class Keeper:
    def keep(self, handle):
        self.handle = handle
        return "kept"

    def call(self):
        return ray.get(self.handle.ping.remote())

    def drop(self):
        self.handle = None


@ray.remote
def hand_over(keeper, handle):
    return ray.get(keeper.keep.remote(handle))


def _named(name):
    """Whether an actor is named ``name`` now (the handle ``get_actor`` gives is dropped at once)."""
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


def test_an_actor_ends_and_frees_its_name_when_its_last_handle_is_dropped(cluster, tmp_path):
    a = Tracked.options(name="short-lived").remote(str(tmp_path / "a"))
    assert ray.get(a.ping.remote()) == "pong"
    again = ray.get_actor("short-lived")  # a handle from get_actor counts as well
    del a
    assert ray.get(again.ping.remote()) == "pong"
    del again
    wait_until((tmp_path / "a").exists, "the actor's instance is collected")
    with pytest.raises(ValueError, match="no live actor is named 'short-lived'"):
        ray.get_actor("short-lived")
    b = Tracked.options(name="short-lived").remote(str(tmp_path / "b"))  # the name can be reused
    assert ray.get(b.ping.remote()) == "pong"


def test_an_unnamed_actor_ends_when_its_handle_is_dropped(cluster, tmp_path):
    a = Tracked.remote(str(tmp_path / "a"))
    assert ray.get(a.ping.remote()) == "pong"
    del a
    wait_until((tmp_path / "a").exists, "the actor's instance is collected")


def test_a_handle_passed_to_a_task_keeps_the_actor_alive(cluster, tmp_path):
    keeper = Keeper.remote()
    a = Tracked.options(name="passed-on").remote(str(tmp_path / "a"))
    kept = hand_over.remote(keeper, a)  # the task may not have unpickled the handle yet...
    del a  # ...when the driver drops its own: the handle in flight keeps the actor
    assert ray.get(kept) == "kept"
    assert _named("passed-on")
    assert ray.get(keeper.call.remote()) == "pong"
    ray.get(keeper.drop.remote())  # the last handle, in another actor's process
    wait_until(lambda: not _named("passed-on"), "the actor ends with its last handle")
    wait_until((tmp_path / "a").exists, "the actor's instance is collected")


def test_a_handle_returned_in_a_value_keeps_the_actor_alive(cluster, tmp_path):
    @ray.remote
    def make(marker):
        return {"handles": [Tracked.options(name="made-in-a-task").remote(marker)]}

    made = ray.get(make.remote(str(tmp_path / "a")))  # the task's own handle is gone by now
    assert ray.get(made["handles"][0].ping.remote()) == "pong"
    del made
    wait_until(lambda: not _named("made-in-a-task"), "the actor ends with its last handle")


def test_calls_made_before_the_last_handle_was_dropped_are_answered(cluster, tmp_path):
    a = Tracked.options(name="busy").remote(str(tmp_path / "a"))
    gate = tmp_path / "gate"
    held = a.wait_for.remote(str(gate))
    after = [a.ping.remote() for _ in range(3)]
    del a
    assert ray.get(f.remote(1)) == 1  # the release reached the scheduler (it went before this task)
    gate.touch()
    assert ray.get(held, timeout=60) == "opened"
    assert ray.get(after, timeout=60) == ["pong"] * 3
    wait_until(lambda: not _named("busy"), "the actor ends once its calls are answered")


def test_a_detached_actor_outlives_its_handles(cluster, tmp_path):
    a = Tracked.options(name="detached-one", lifetime="detached").remote(str(tmp_path / "a"))
    assert ray.get(a.ping.remote()) == "pong"
    del a
    assert ray.get(f.remote(1)) == 1  # the handle's release, had there been one, went before this
    again = ray.get_actor("detached-one")
    assert ray.get(again.ping.remote()) == "pong"
    assert not (tmp_path / "a").exists()
    ray.kill(again)


def test_a_handle_in_a_task_held_back_for_an_actor_result_keeps_the_actor_alive(cluster, tmp_path):
    @ray.remote
    def hand_over_after(_, keeper, handle):
        return ray.get(keeper.keep.remote(handle))

    keeper, gatekeeper = Keeper.remote(), Tracked.remote(str(tmp_path / "g"))
    gate = tmp_path / "gate"
    pending = gatekeeper.wait_for.remote(str(gate))
    a = Tracked.options(name="held-back").remote(str(tmp_path / "a"))
    kept = hand_over_after.remote(pending, keeper, a)  # held in the driver until `pending` is done
    del a
    assert ray.get(f.remote(1)) == 1  # the handle's release went before this task
    gate.touch()
    assert ray.get(kept, timeout=60) == "kept"
    assert ray.get(keeper.call.remote()) == "pong"


def test_a_handle_in_a_queue_keeps_the_actor_alive(cluster, tmp_path):
    @ray.remote
    def call_from_queue(queue):
        return ray.get(queue.get(timeout=30).ping.remote())

    queue = ray.Queue()
    a = Tracked.options(name="queued").remote(str(tmp_path / "a"))
    queue.put(a)
    del a  # the queue holds the handle now
    assert ray.get(f.remote(1)) == 1  # the driver's release went before this task
    assert ray.get(call_from_queue.remote(queue)) == "pong"
    wait_until(lambda: not _named("queued"), "the actor ends once the handle taken from the queue is dropped")
