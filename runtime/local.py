"""The local schedulers: ``sync``, ``threads`` and ``processes``, in this process.

They drive the same ``SchedulerState`` as the distributed scheduler, held here instead of
behind a socket, so a program behaves the same on each (order, retries, cancel, errors).
Only who runs a task differs::

    .remote() ──► pending specs ──┐  (one update-graph per get/wait: graph order over the batch)
    put()     ──► update-data ────┤
    Future GC ──► release-keys ───┤
                                  ▼
                           SchedulerState ──compute-task──► ready queue (by priority)
                                  ▲                              │
                                  │ task-finished / task-erred   ▼
                                  └───────────────────── sync:      the calling thread runs it
                                                         threads:   pool threads run it
                                                         processes: a process pool runs batches

Tasks run when a ``get``/``wait`` asks (Dask's ``compute`` does the same): ``.remote()``
only records them, and the call that waits picks the scheduler (its ``scheduler=``
argument, else the ``scheduler`` setting, else the one the tasks were made under).  The
state machine and the ready queue are guarded by one lock; whoever holds it feeds results in
(pool threads do so themselves, with no hand-off).  Values stay Python objects (boxed in
``TaskState.data``) except under ``processes``, where arguments and results are pickled.
A local "worker" never saturates, so no task waits in the scheduler's ``queued``: the ready
queue orders them by the scheduler's priority, depth-first as the graph order made them.
The local scheduler owns the futures it makes, as the cluster client owns its own
(``runtime/client/owner.py``): their done callbacks run in the thread that ran the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import inspect
import itertools
import math
import os
import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future as PoolFuture
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import cloudpickle

from runtime import config
from runtime.client.future import CANCELLED, FINISHED, PENDING, Future, FutureState
from runtime.client.owner import FutureTable, closed_error
from runtime.comm import serialize
from runtime.comm.messages import CancelCompute, CancelledKeys, ComputeTask, KeyErred, KeyInMemory
from runtime.comm.serialize import SerializationError
from runtime.errors import GetTimeoutError, task_exit_error
from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState

LOCAL_KINDS = ("sync", "threads", "processes")
_CLIENT, _WORKER, _NODE = "local-client", "local-worker", "local-node"
#: what a closed local scheduler was, in the error of its futures
_CLOSED_AS = "a local scheduler that was shut down (runtime.shutdown())"


class Box:
    """A value held in ``TaskState.data``: opaque to the state machine (not bytes, not a list)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class Dep:
    """Where a future stood in a task's arguments; replaced by its value when the task runs."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __reduce__(self) -> tuple:
        return Dep, (self.key,)


_CONTAINERS = (list, tuple, set, frozenset, dict)


def _strip(obj: Any, deps: dict[str, None]) -> Any:
    """``obj`` with each Future inside lists, tuples, sets and dicts replaced by a ``Dep``.

    Returns ``obj`` itself when it holds no future (the common case, and the fast one).
    """
    t = type(obj)
    if t is Future:
        deps[obj.key] = None
        return Dep(obj.key)
    if t not in _CONTAINERS or not obj:
        return obj
    if t is dict:
        out = None
        for k, v in obj.items():
            s = _strip(v, deps)
            if s is not v:
                out = out or dict(obj)
                out[k] = s
        return obj if out is None else out
    items = None
    for i, x in enumerate(obj):
        s = _strip(x, deps)
        if s is not x:
            items = items or list(obj)
            items[i] = s
    return obj if items is None else t(items)


def _fill(obj: Any, boxes: dict[str, Box]) -> Any:
    """``obj`` with each ``Dep`` replaced by its value (``boxes``: the task's ``deps``)."""
    t = type(obj)
    if t is Dep:
        return boxes[obj.key].value
    if t is list or t is tuple or t is set or t is frozenset:
        return t([_fill(x, boxes) for x in obj])
    if t is dict:
        return {k: _fill(v, boxes) for k, v in obj.items()}
    return obj


def _order(priority: int, arrival: int) -> int:
    """The scheduler's priority, then the arrival, as one int that sorts the same."""
    return (priority << 40) + arrival


# Under ``processes``: a batch of pickled tasks in, a list of (ok, pickled result or
# exception, traceback, text) out.
_child_functions: dict[bytes, Callable] = {}


def _run_batch(batch: list[tuple[bytes, bytes]]) -> list[tuple[bool, bytes, str, str]]:
    out = []
    for func_bytes, args_bytes in batch:
        try:
            func = _child_functions.get(func_bytes)
            if func is None:
                func = _child_functions[func_bytes] = pickle.loads(func_bytes)
            args, kwargs = pickle.loads(args_bytes)
            out.append((True, cloudpickle.dumps(func(*args, **kwargs), protocol=5), "", ""))
        except BaseException as e:  # noqa: BLE001 - it goes back to the caller
            out.append(_erred(e))
    return out


def _erred(e: BaseException) -> tuple[bool, bytes, str, str]:
    """A failed task's entry of ``_run_batch``: pickled as a worker pickles it for the cluster."""
    return (False, *serialize.pickled_error(e))


class LocalScheduler:
    """One per process: the state machine, the ready queue and the pools of the local schedulers."""

    def __init__(self) -> None:
        #: the futures made here; callbacks run in the thread that settled them
        self.futures = FutureTable(self, callback_thread=False)
        # One lock guards the state machine, the ready queue and the futures.
        self._lock = self.futures.lock
        #: pool threads wait here for ready tasks
        self._work = threading.Condition(self._lock)
        #: callers of get/wait wait here for futures to finish (or callbacks to have run)
        self._changed = self.futures.cond
        self.state = SchedulerState(
            validate=config.get("scheduler.validate"),
            allowed_failures=config.get("scheduler.allowed-failures"),
            transition_log_length=config.get("scheduler.transition-log-length"),
            worker_saturation=math.inf,  # every ready task goes to the ready queue, which orders them
            chain_hints=False,  # one "worker": a ready dependent is next in its queue anyway
        )
        self.state.handle(st.AddClient("add-client-local", _CLIENT))
        self.state.handle(st.AddNode("add-node-local", _NODE))
        self.state.handle(st.AddWorker("add-worker-local", _WORKER, _NODE, 1))
        #: tasks submitted and not yet given to the state machine, with the kind they were made under
        self._pending: list[st.TaskSpec] = []
        self._kind = "sync"
        #: keys whose last Future went away (appended from __del__, any thread)
        self._releases: list[str] = []
        #: compute-task messages ready to run, by their ``_order`` number (one per entry below)
        self._queue: dict[int, dict] = {}
        #: ready ``_order`` numbers: those pushed in ascending order (an update-graph's roots)
        #: wait in this sorted lane, taken from in O(1); the others in a heap
        self._lane: deque[int] = deque()
        self._ready: list[int] = []
        #: the message each key will run with; a cancel-compute removes it
        self._live: dict[str, dict] = {}
        self._arrivals = itertools.count()
        self._keys = itertools.count()
        self._tag = os.urandom(3).hex()
        self._ids = itertools.count()
        #: callers now driving with each kind; pool threads run tasks only while threads > 0
        self._driving = {"threads": 0, "processes": 0}
        self._threads: list[threading.Thread] = []
        self._pool: ProcessPoolExecutor | None = None
        #: keys running on the process pool
        self._in_pool: set[str] = set()
        self._func_bytes: dict[Any, bytes] = {}
        #: futures some get/wait caller is waiting for (how many callers), so only they wake it
        self._watched: dict[FutureState, int] = {}
        self._closed = False

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self, func: Callable, name: str, args: tuple, kwargs: dict, retries: int, priority: int, kind: str
    ) -> Future:
        """Record a task made under the local scheduler ``kind``; it runs at the next get/wait."""
        key = f"{name}-{self._tag}{next(self._keys)}"
        fs = self.futures.states[key] = FutureState()
        future = Future(key, self, fs)
        # A plain tuple now: futures in the arguments become Deps, and the TaskSpec is made,
        # in _flush_pending, in one pass over the batch with the GC paused.
        pending = self._pending
        pending.append((key, func, args, kwargs, retries, name, priority))
        self._kind = kind
        if not len(pending) & 127:
            # What a graph being built makes lives until its get: the cyclic GC would only
            # walk it again and again (full passes over the whole heap as it grows).  Often
            # enough that the youngest generation never fills (700 objects, ~4 a call).
            _freeze_until_get()
        # Let go of what earlier graphs no longer need now, not at the next get: their values
        # are freed sooner, and the GC does not walk them while this graph is built.
        # (Checked every 1,024 submissions too: releasing one root can free a whole graph.)
        releases = self._releases
        if releases and (len(releases) >= 1000 or not len(pending) & 1023) and self._lock.acquire(blocking=False):
            try:
                self._flush_releases()
            finally:
                self._lock.release()
        return future

    def put(self, value: Any) -> Future:
        key = f"put-{self._tag}{next(self._keys)}"
        with self._lock:
            fs = self.futures.states[key] = FutureState()
            fs.status, fs.value = FINISHED, Box(value)
            future = Future(key, self, fs)
            self._handle(st.UpdateData(f"put-{key}", _CLIENT, key, Box(value), 0))
        return future

    def release(self, key: str, fs: FutureState) -> None:
        """Called by Future.__del__, from any thread: only note it (list.append is atomic)."""
        fs.refcount -= 1
        if fs.refcount <= 0 and not self._closed:
            self._releases.append(key)

    def cancel(self, futures: Sequence[Future], force: bool = False, interrupt: bool = False) -> None:
        """As ``ClusterClient.cancel``, but a task already running here runs to its end (``interrupt``
        is not applied: it runs in this process's own threads)."""
        self.check_open(futures)
        with self._lock:
            self._flush()
            self._handle(st.Cancel(f"cancel-{next(self._ids)}", _CLIENT, tuple(f.key for f in futures), force))
        self.futures.fire_callbacks()

    def check_open(self, futures: Iterable[Future]) -> None:
        """ClientClosedError once this scheduler was shut down: its futures' work is gone."""
        if self._closed:
            futures = list(futures)
            if futures:
                raise closed_error(_CLOSED_AS, futures)

    # -- the state machine ---------------------------------------------------------------

    def _flush(self) -> None:
        """Give pending releases and submissions to the state machine.  Call with the lock held."""
        self._flush_releases()
        if self._pending:
            self._flush_pending()
            self.futures.fire_callbacks()  # of futures the update-graph failed at once

    def _flush_releases(self) -> None:
        if not self._releases:
            return
        keys, self._releases = self._releases, []
        futures, tasks = self.futures.states, self.state.tasks
        known = []
        for k in keys:
            fs = futures.get(k)
            if fs is not None and fs.refcount <= 0:
                del futures[k]
                if k in tasks:  # the others are still pending: their update-graph will not ask for them
                    known.append(k)
        if known:
            self._handle(st.ClientReleasesKeys(f"release-keys-{next(self._ids)}", _CLIENT, tuple(known)))

    def _flush_pending(self) -> None:
        """One update-graph per priority: graph order over the whole batch.

        Building a graph makes ~10 long-lived objects per task and no garbage: the cyclic GC
        would only walk them again and again, so it waits (no user code runs here).  What it
        built then stays frozen for the GC until the get/wait ends (``_freeze_until_get``).
        """
        pending, self._pending = self._pending, []
        enabled = gc.isenabled()
        gc.disable()
        try:
            by_priority: dict[int, list[st.TaskSpec]] = {}
            for key, func, args, kwargs, retries, name, prio in pending:
                deps: dict[str, None] = {}
                if kwargs:
                    kwargs = _strip(kwargs, deps)
                # _strip(args) inlined: the common case is a few plain values and futures.
                stripped = None
                for i, a in enumerate(args):
                    t = type(a)
                    if t is Future:
                        deps[a.key] = None
                        s = Dep(a.key)
                    elif t in _CONTAINERS:
                        s = _strip(a, deps)
                        if s is a:
                            continue
                    else:
                        continue
                    if stripped is None:
                        stripped = list(args)
                    stripped[i] = s
                if stripped is not None:
                    args = tuple(stripped)
                spec = st.TaskSpec(key, (func, (args, kwargs)), tuple(deps), retries, name)  # type: ignore[arg-type]
                by_priority.setdefault(prio, []).append(spec)
            del pending
            # Wanted: the keys that still have a Future (_flush_releases dropped the others).
            futures = self.futures.states
            for prio, specs in by_priority.items():
                keys = tuple([s.key for s in specs if s.key in futures])
                self._handle(st.UpdateGraph(f"update-graph-{next(self._ids)}", _CLIENT, tuple(specs), keys, prio))
        finally:
            _freeze_until_get()
            if enabled:
                gc.enable()

    def _handle(self, stimulus: st.Stimulus) -> None:
        client_msgs, worker_msgs = self.state.handle(stimulus)
        for msg in worker_msgs.get(_WORKER, ()):
            if type(msg) is ComputeTask:
                self._live[msg.key] = msg
                n = _order(msg.priority, next(self._arrivals))
                self._queue[n] = msg
                lane = self._lane
                if not lane or n > lane[-1]:
                    lane.append(n)
                else:
                    heapq.heappush(self._ready, n)
            elif type(msg) is CancelCompute:
                self._live.pop(msg.key, None)
        msgs = client_msgs.get(_CLIENT)
        if msgs:
            table, watched, wake = self.futures, self._watched, False
            for msg in msgs:
                kind = type(msg)
                if kind is KeyInMemory or kind is KeyErred:
                    fs = table.settle(msg)
                    if fs is None:
                        continue
                    if kind is KeyErred:
                        fs.worker = ""  # the "worker" is this process: an error's note names none
                    wake = wake or fs in watched
                elif kind is CancelledKeys:
                    for fs in table.cancel_keys(msg.keys):
                        wake = wake or fs in watched
            if wake:  # only a caller waiting for one of these: no wake-up per finished task
                self._changed.notify_all()
        if self._queue and self._driving["threads"]:
            self._work.notify(len(self._queue))

    def _next_task(self) -> ComputeTask | None:
        """Pop the ready task of highest priority still live.  Call with the lock held."""
        ready, lane, queue, live = self._ready, self._lane, self._queue, self._live
        while queue:
            if ready and (not lane or ready[0] < lane[0]):
                msg = queue.pop(heapq.heappop(ready))
            else:
                msg = queue.pop(lane.popleft())
            if live.get(msg.key) is msg:
                del live[msg.key]
                return msg
        return None

    def _execute(self, msg: ComputeTask) -> st.Stimulus:
        """Run one task here (sync, threads); returns the stimulus reporting how it went."""
        func, (args, kwargs) = msg.run_spec
        boxes = msg.deps
        sid = f"task-{next(self._ids)}"
        try:
            if boxes:
                # _fill(args) inlined: most arguments are plain values or futures.
                args = tuple(
                    [
                        boxes[a.key].value if type(a) is Dep else _fill(a, boxes) if type(a) in _CONTAINERS else a
                        for a in args
                    ]
                )
                if kwargs:
                    kwargs = _fill(kwargs, boxes)
            result = func(*args, **kwargs)
            if inspect.iscoroutine(result):  # an async def function: run it on an event loop
                result = asyncio.run(result)
        except BaseException as e:  # noqa: BLE001 - it goes to whoever gets the future
            if isinstance(e, KeyboardInterrupt):
                raise
            if isinstance(e, SystemExit):  # raised again by get, it would end the program
                e = task_exit_error(e)
            # The exception itself, not pickled: re-raised, it keeps its own traceback.
            tb = "".join(traceback.format_exception(e))
            return st.TaskErred(sid, msg.key, _WORKER, e, tb, f"{type(e).__name__}: {e}")  # type: ignore[arg-type]
        return st.TaskFinished(sid, msg.key, _WORKER, Box(result), 0)

    # -- driving: get / wait -------------------------------------------------------------

    def _kind_for(self, scheduler: str | None) -> str:
        kind = scheduler or config.get("scheduler")
        if kind == "distributed":
            kind = self._kind if self._kind != "distributed" else "sync"
        return kind

    def drive(self, ready: Callable[[], bool], deadline: float | None, scheduler: str | None) -> None:
        """Run tasks with the chosen kind until ``ready()``; GetTimeoutError past ``deadline``."""
        kind = self._kind_for(scheduler)
        with self._lock, _frozen_gc():
            self._flush()
            if ready():
                return
            if kind == "sync" or getattr(_in_pool_thread, "yes", False):
                self._drive_sync(ready, deadline)
                return
            self._driving[kind] += 1
            try:
                if kind == "threads":
                    self._start_threads()
                    self._work.notify_all()
                while not ready():
                    self._flush()
                    if kind == "processes":
                        self._dispatch_processes()
                        self.futures.fire_callbacks()  # of tasks that could not be pickled
                    elif self._queue and not any(t.is_alive() for t in self._threads):
                        raise RuntimeError("the local scheduler's threads are gone")
                    self._wait_changed(deadline)
            finally:
                self._driving[kind] -= 1

    def _wait_changed(self, deadline: float | None) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise GetTimeoutError("timed out waiting for results of the local scheduler")
        # Wake now and then regardless: a release noted by __del__ notifies nobody.
        self._changed.wait(min(remaining, 0.1) if remaining is not None else 0.1)

    def _drive_sync(self, ready: Callable[[], bool], deadline: float | None) -> None:
        table = self.futures
        while not ready():
            if self._releases or self._pending:
                self._flush()
            msg = self._next_task()
            if msg is None:
                if self._driving["threads"] or self._driving["processes"] or self._in_pool:
                    self._wait_changed(deadline)  # another caller's pool runs what we wait for
                    continue
                raise RuntimeError("the local scheduler has nothing left to run, yet the futures are not done")
            if deadline is not None and time.monotonic() > deadline:
                self._requeue(msg)
                raise GetTimeoutError("timed out waiting for results of the sync scheduler")
            try:
                stimulus = self._execute(msg)
            except BaseException:  # Ctrl-C in the task: it runs again at the next get
                self._requeue(msg)
                raise
            self._handle(stimulus)
            if table.due:  # before ready() is asked again: it may read what they do
                table.fire_callbacks()

    def _requeue(self, msg: ComputeTask) -> None:
        """Put a task taken from the ready queue but not run back in its place."""
        self._live[msg.key] = msg
        n = _order(msg.priority, next(self._arrivals))
        self._queue[n] = msg
        heapq.heappush(self._ready, n)  # the heap takes any number; the lane only a larger one

    # threads

    def _start_threads(self) -> None:
        n = config.get("num-workers") or os.cpu_count() or 1
        self._threads = [t for t in self._threads if t.is_alive()]
        for i in range(len(self._threads), n):
            t = threading.Thread(target=self._thread_main, name=f"runtime-local-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _thread_main(self) -> None:
        _in_pool_thread.yes = True
        with self._lock:
            while not self._closed:
                msg = self._next_task() if self._driving["threads"] else None
                if msg is None:
                    self._work.wait(1.0)
                    continue
                self._lock.release()
                try:
                    stimulus = self._execute(msg)
                finally:
                    self._lock.acquire()
                self._handle(stimulus)
                if self.futures.due:  # run them outside the lock, as the task ran
                    self._lock.release()
                    try:
                        self.futures.fire_callbacks()
                    finally:
                        self._lock.acquire()

    # processes

    def _dispatch_processes(self) -> None:
        """Send ready tasks to the process pool in batches, two batches per process in flight."""
        n = config.get("num-workers") or os.cpu_count() or 1
        while self._queue and len(self._in_pool) < 64 * n:
            if self._pool is None:  # first use, or a process died and broke the last one
                import multiprocessing

                method = config.get("processes.start-method")
                self._pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method))
            size = max(1, min(64, len(self._queue) // (2 * n)))
            wire, msgs = [], []
            while len(msgs) < size and (msg := self._next_task()) is not None:
                try:
                    wire.append(self._pickle_task(msg))
                except SerializationError as e:  # this task fails; the others go on
                    self._handle(st.TaskErred(f"task-{next(self._ids)}", msg.key, _WORKER, e, "", str(e)))  # type: ignore[arg-type]
                    continue
                msgs.append(msg)
            if not msgs:
                continue
            try:
                fut = self._pool.submit(_run_batch, wire)
            except BrokenProcessPool:  # it broke before its callback said so: a new one takes these
                for msg in msgs:
                    self._requeue(msg)
                self._pool = None
                continue
            keys = [msg.key for msg in msgs]
            self._in_pool.update(keys)
            # Called at once, here, if the batch is already done (a process that died at once).
            fut.add_done_callback(lambda f, keys=keys, pool=self._pool: self._batch_done(pool, keys, f))

    def _pickle_task(self, msg: ComputeTask) -> tuple[bytes, bytes]:
        """The task's function and arguments (dependencies filled in) as the process pool takes them."""
        func, (args, kwargs) = msg.run_spec
        fb = self._func_bytes.get(func)
        if fb is None:
            fb = self._func_bytes[func] = serialize.dumps_function(func)
        deps = msg.deps
        if deps:
            args, kwargs = _fill(args, deps), _fill(kwargs, deps)
        data, hidden = serialize.dumps_args(msg.key.rsplit("-", 1)[0], args, kwargs)
        if hidden:
            raise SerializationError(
                f"task {msg.key!r} has futures inside objects other than lists, tuples, sets and dicts "
                f"({', '.join(hidden)}), which the processes scheduler cannot resolve; pass them directly"
            )
        return fb, data

    def _batch_done(self, pool: ProcessPoolExecutor, keys: list[str], fut: PoolFuture) -> None:
        try:
            self._feed_batch(pool, keys, fut)
        finally:
            self.futures.fire_callbacks()

    def _feed_batch(self, pool: ProcessPoolExecutor, keys: list[str], fut: PoolFuture) -> None:
        """The results of a batch the process pool ran, to the state machine."""
        with self._lock:
            if pool is not self._pool:
                return  # a batch of a pool that broke: its tasks were counted and sent again then
            self._in_pool.difference_update(keys)
            try:
                results = fut.result()
            except BrokenProcessPool as e:
                # A process died (os._exit, a crash): as when a worker dies, every task in
                # the pool is suspicious; one that kills allowed-failures + 1 pools errs.
                pool.shutdown(wait=False)
                self._pool = None
                lost = tuple(keys) + tuple(self._in_pool)
                self._in_pool.clear()
                self._handle(st.RemoveWorker(f"pool-broken-{next(self._ids)}", _WORKER, f"a process died: {e}", lost))
                self._handle(st.AddWorker(f"add-worker-{next(self._ids)}", _WORKER, _NODE, 1))
                return
            except BaseException as e:  # noqa: BLE001 - the batch could not even be sent
                results = [_erred(e)] * len(keys)
            for key, (ok, payload, tb, text) in zip(keys, results, strict=True):
                sid = f"task-{next(self._ids)}"
                if ok:
                    self._handle(st.TaskFinished(sid, key, _WORKER, Box(pickle.loads(payload)), len(payload)))
                else:  # pickled, as from a worker: the future rebuilds it with its remote traceback
                    self._handle(st.TaskErred(sid, key, _WORKER, payload, tb, text))
            if self._driving["processes"]:
                self._dispatch_processes()  # straight from here: no round trip through the caller

    # -- results ---------------------------------------------------------------------------

    def get(self, futures: Sequence[Future], timeout: float | None = None, scheduler: str | None = None) -> list:
        """The values of ``futures``, running their tasks now; raises the first error met."""
        _check_scheduler(scheduler)
        self.check_open(futures)
        deadline = None if timeout is None else time.monotonic() + timeout
        states = [f._state for f in futures]
        first_pending = 0
        watching: list[FutureState] = []

        def all_done() -> bool:  # amortized O(1) a call: finished futures stay finished
            nonlocal first_pending
            while first_pending < len(states) and states[first_pending].status != PENDING:
                first_pending += 1
            if first_pending == len(states):
                return True
            if not watching or watching[-1] is not states[first_pending]:
                self._watch(watching, [states[first_pending]])
            return False

        try:
            self.drive(all_done, deadline, scheduler)
        finally:
            self._watch(watching, [])
        out = []
        for f, fs in zip(futures, states, strict=True):
            if fs.status != FINISHED:
                raise fs.error(f.key)
            out.append(fs.value.value)
        return out

    def wait_for(
        self, ready: Callable[[], bool], futures: Sequence[Future], deadline: float | None,
        scheduler: str | None = None,
    ) -> None:  # fmt: skip
        """Run tasks until ``ready()``, checked after each task under ``sync``, else whenever
        one of ``futures`` finishes or done callbacks have run; GetTimeoutError past ``deadline``."""
        _check_scheduler(scheduler)
        self.check_open(futures)
        watching: list[FutureState] = []
        self._watch(watching, [f._state for f in futures])
        try:
            self.drive(ready, deadline, scheduler)
        finally:
            self._watch(watching, [])

    def _watch(self, current: list[FutureState], new: list[FutureState]) -> None:
        """Replace the futures a caller watches (``current``, updated in place) by ``new``."""
        with self._lock:
            for fs in current:
                if self._watched[fs] == 1:
                    del self._watched[fs]
                else:
                    self._watched[fs] -= 1
            for fs in new:
                self._watched[fs] = self._watched.get(fs, 0) + 1
            current[:] = new

    def close(self) -> None:
        """Stop the pools; futures not done yet are cancelled (their waiters wake)."""
        with self.futures.changing():
            self._closed = True
            self.futures.fail_pending(closed_error(_CLOSED_AS), CANCELLED)
            self._work.notify_all()
        # Idle threads leave at once; one inside a task cannot be stopped (it is a daemon).
        deadline = time.monotonic() + 1.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        pool, self._pool = self._pool, None
        if pool is not None:
            # Tasks still running in its processes would make us wait for them: stop them.
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:
                p.terminate()
            for p in processes:
                p.join(5)
        _unfreeze_if_idle()


_gc_lock = threading.Lock()
#: graphs running now (get/wait calls inside ``_frozen_gc``)
_gc_frozen = 0
#: what the GC holds frozen for a graph being submitted, until a get/wait ends (or close)
_gc_held = False


def _freeze_until_get() -> None:
    """Freeze what exists now for the cyclic GC, as ``_frozen_gc`` does for a running graph.

    A program building a large graph makes a few long-lived objects per ``.remote()`` call
    (futures, their states, pending specs) and little garbage; left to the GC they reach its
    oldest generation and trigger full collections over the whole heap, again and again as
    it grows.  Frozen, they cost nothing; the next ``get``/``wait`` to end (or ``close``)
    unfreezes them, so a cycle made meanwhile is collected late, never lost.
    """
    global _gc_held
    with _gc_lock:
        gc.freeze()
        _gc_held = True


def _unfreeze_if_idle() -> None:
    """Give the GC back what ``_freeze_until_get`` froze, if no graph is running."""
    global _gc_held
    with _gc_lock:
        if _gc_held and _gc_frozen == 0:
            gc.unfreeze()
            _gc_held = False


@contextlib.contextmanager
def _frozen_gc() -> Iterator[None]:
    """While a graph runs, the cyclic GC leaves alone what existed before (``gc.freeze``).

    A large graph is hundreds of thousands of long-lived objects (tasks, futures, specs);
    without this, each full collection walks all of them again, which costs more than the
    scheduling itself.  Reference counting still frees them as usual; what froze goes back
    to the oldest generation when the last running graph ends, so no cycle is lost.
    """
    global _gc_frozen, _gc_held
    with _gc_lock:
        if _gc_frozen == 0:
            gc.freeze()
        _gc_frozen += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_frozen -= 1
            if _gc_frozen == 0:
                gc.unfreeze()
                _gc_held = False


#: set in the local scheduler's pool threads: a get() there runs tasks itself (no deadlock)
_in_pool_thread = threading.local()


def _check_scheduler(scheduler: str | None) -> None:
    """A ``scheduler=`` argument of get/wait: any local one (or none) runs local futures."""
    if scheduler == "distributed":
        raise ValueError(
            "scheduler='distributed' got futures made under a local scheduler; they run in this process "
            "(submit them again outside the local scheduler)"
        )


_local: LocalScheduler | None = None
_local_lock = threading.Lock()


def local_scheduler() -> LocalScheduler:
    """This process's local scheduler, started on first use."""
    global _local
    if _local is None:
        with _local_lock:
            if _local is None:
                _local = LocalScheduler()
    return _local


def shutdown() -> None:
    global _local
    with _local_lock:
        ls, _local = _local, None
    if ls is not None:
        ls.close()
