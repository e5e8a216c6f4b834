"""Ray's API as Ray's users know it: cases from Ray's documentation and test suite, written
in Ray's idiom against ``runtime`` (``import runtime as ray`` is all a port should need).

Where runtime still differs from Ray, ``docs/coming-from-ray.md`` says how and why.
"""

from __future__ import annotations

import os
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


# -- the cluster: resources, nodes, runtime context ------------------------------------------


def test_cluster_resources_available_resources_and_nodes(cluster):
    total = ray.cluster_resources()
    assert total["CPU"] == 2 and total["memory"] > 0 and total["object_store_memory"] > 0
    assert set(ray.available_resources()) <= set(total)
    [node] = ray.nodes()
    assert node["Alive"] and node["NodeID"] == cluster.client.node
    assert node["Resources"]["CPU"] == 2 and node["NodeManagerAddress"]

    @ray.remote
    def busy_cpus(marker):
        return ray.available_resources().get("CPU", 0)

    assert ray.get(busy_cpus.remote(0)) <= 1  # this task holds one of the two


def test_runtime_context_and_gpu_ids(cluster):
    ctx = ray.get_runtime_context()
    assert ctx.get_job_id() and ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ray.get_gpu_ids() == []

    @ray.remote
    def inside():
        c = ray.get_runtime_context()
        return c.get_task_id(), c.get_node_id(), c.get_assigned_resources(), ray.get_gpu_ids()

    ref = inside.options(num_gpus=0).remote()
    task_id, node_id, assigned, gpus = ray.get(ref)
    assert task_id == ref.key and node_id == cluster.client.node
    assert assigned == {"CPU": 1.0} and gpus == []

    @ray.remote
    class Who:
        def __init__(self):
            self.made_as = ray.get_runtime_context().get_actor_id()

        def ids(self):
            return self.made_as, ray.get_runtime_context().get_actor_id()

    made_as, called_as = ray.get(Who.remote().ids.remote())
    assert made_as == called_as and made_as.startswith("actor-Who")


def test_rays_task_options_are_accepted(cluster):
    opts = {"num_gpus": 0, "memory": 10**6, "scheduling_strategy": "SPREAD", "retry_exceptions": False}
    assert ray.get([f.options(**opts).remote(i) for i in range(4)]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="scheduling_strategy"):
        f.options(scheduling_strategy="PACK")
    with pytest.raises(ValueError, match="num_gpus"):
        f.options(num_gpus=-1)


def test_object_ref_hex_and_future(cluster):
    ref = f.remote(5)
    assert isinstance(ref.hex(), str) and ref.hex() != f.remote(6).hex()
    assert ref.future().result(timeout=30) == 5
    with pytest.raises(ValueError, match="bad input"):
        raises_value_error.remote().future().result(timeout=30)


def test_wait_accepts_fetch_local(cluster):
    ready, _ = ray.wait([f.remote(1)], num_returns=1, timeout=30, fetch_local=True)
    assert ray.get(ready) == [1]


# -- actors: get_if_exists, method options, ActorPool, list_named_actors ----------------------


@ray.remote
class Holder:
    def __init__(self, v=0):
        self.v = v

    def get(self):
        return self.v

    def double(self, x):
        return 2 * x


def test_get_if_exists_returns_the_live_actor(cluster):
    a = Holder.options(name="holder", get_if_exists=True).remote(1)
    b = Holder.options(name="holder", get_if_exists=True).remote(2)
    assert a == b and ray.get(b.get.remote()) == 1
    assert "holder" in ray.util.list_named_actors()
    assert {"name": "holder", "namespace": "default"} in ray.util.list_named_actors(all_namespaces=True)
    with pytest.raises(ValueError, match="needs a name"):
        Holder.options(get_if_exists=True).remote()
    ray.kill(a)
    wait_until(lambda: "holder" not in ray.util.list_named_actors(), "the name is free")


def test_actor_method_options_name(cluster):
    h = Holder.remote(3)
    assert ray.get(h.get.options(name="reader").remote()) == 3


def test_actor_pool(cluster):
    from runtime.util import ActorPool

    pool = ActorPool([Holder.remote(), Holder.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    pool.submit(lambda a, v: a.double.remote(v), 10)
    pool.submit(lambda a, v: a.double.remote(v), 20)
    pool.submit(lambda a, v: a.double.remote(v), 30)  # waits for an idle actor
    assert pool.has_next() and not pool.has_free()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [20, 40, 60]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    idle = pool.pop_idle()
    assert idle is not None
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(pool._idle[0])
    pool.push(idle)


def test_util_queue(cluster):
    from runtime.util.queue import Empty, Full, Queue

    q = Queue(maxsize=2)
    assert q.empty() and q.size() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and len(q) == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(Full):
        q.put(3, timeout=0.01)

    @ray.remote
    def consume(queue):
        return queue.get(timeout=30)

    assert ray.get(consume.remote(q)) == 1  # the queue passes to tasks
    assert q.get() == 2
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=True, timeout=0.01)
    q.put_nowait_batch([5, 6])
    assert q.get_nowait_batch(2) == [5, 6]
    with pytest.raises(Empty):
        q.get_nowait_batch(1)


def test_rays_init_arguments_and_exceptions_module():
    # a cluster of its own: init() is called once per process (the module's cluster is not up here
    # when this runs alone; with it, ignore_reinit_error keeps it)
    assert ray.exceptions.RayTaskError is ray.TaskError
    assert issubclass(ray.exceptions.GetTimeoutError, TimeoutError)
    with pytest.raises(ValueError, match="num_gpus"):
        ray.init(num_gpus=1)
    with pytest.raises(ValueError, match="num_cpus"):
        ray.init(num_cpus=0)


def test_get_actor_takes_a_namespace(cluster):
    h = Holder.options(name="spaced").remote(4)
    assert ray.get(ray.get_actor("spaced", namespace="default").get.remote()) == 4
    ray.kill(h)


def square(x):
    return x * x


def test_util_multiprocessing_pool(cluster):
    import multiprocessing

    from runtime.util.multiprocessing import Pool

    def init(v):  # runs in each pool actor's worker process (functions travel by value: no globals)
        import os

        os.environ["POOL_INIT"] = str(v)

    def read_init(_):
        import os

        return os.environ.get("POOL_INIT")

    with Pool(processes=2, initializer=init, initargs=(7,)) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert list(pool.imap(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.apply(pow, (2, 5)) == 32
        assert pool.apply_async(int, ("11",), {"base": 2}).get(timeout=30) == 3
        result = pool.map_async(square, [3])
        assert result.get(timeout=30) == [9] and result.ready() and result.successful()
        assert set(pool.map(read_init, range(4))) == {"7"}  # each pool actor ran the initializer
        failing = pool.apply_async(square, ("x",))
        with pytest.raises(TypeError):
            failing.get(timeout=30)
        assert not failing.successful()
        slow = pool.apply_async(__import__("time").sleep, (0.5,))
        with pytest.raises(multiprocessing.TimeoutError):
            slow.get(timeout=0.01)
        pool.close()
        with pytest.raises(ValueError, match="not running"):
            pool.map(square, [1])
        pool.join()


def test_put_of_a_ref_stores_the_ref(cluster):
    ref = f.remote(3)
    outer = ray.put(ref)
    assert ray.get(ray.get(outer)) == 3

    @ray.remote
    def read(inner):  # a top-level ref is its value: here, the stored ref
        return ray.get(inner) + 1

    assert ray.get(read.remote(outer)) == 4


def test_cancel_interrupts_a_running_python_loop_as_rays_does(cluster, tmp_path):
    @ray.remote
    def loop(mark: str) -> None:
        open(mark, "w").close()
        try:
            while True:
                pass
        except KeyboardInterrupt:  # what Ray raises in a cancelled task
            open(mark + ".interrupted", "w").close()
            raise

    @ray.remote
    def pid() -> int:
        import os

        return os.getpid()

    pids = set(ray.get([pid.remote() for _ in range(20)]))
    mark = str(tmp_path / "running")
    ref = loop.remote(mark)
    wait_until(lambda: os.path.exists(mark), "the loop has started")
    ray.cancel(ref)
    with pytest.raises(ray.TaskCancelledError):
        ray.get(ref, timeout=30)
    wait_until(lambda: os.path.exists(mark + ".interrupted"), "the loop saw KeyboardInterrupt")
    # Its worker lives on and takes tasks again (not left spinning, nor restarted).
    assert set(ray.get([pid.remote() for _ in range(20)], timeout=30)) <= pids


def test_cancel_recursive_and_max_calls_are_accepted(cluster):
    ray.cancel(f.remote(1), recursive=False)
    assert ray.get(f.options(max_calls=1).remote(2)) == 2


def test_init_address_auto_without_a_cluster_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIME_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("RUNTIME_ADDRESS", raising=False)
    from runtime.api.context import _local_address

    with pytest.raises(ConnectionError, match="runtime start --head"):
        _local_address()
    (tmp_path / "address").write_text("tcp://127.0.0.1:8786\n")
    assert _local_address() == "tcp://127.0.0.1:8786"
