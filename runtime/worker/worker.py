"""A worker process: runs the tasks the scheduler sends it, one per thread.

::

    scheduler ──compute-task──► event loop ──► ready heap (by priority)
                                                   │  executor thread(s):
                                                   ▼  deps from message / node store,
                                                      run, result inline or into store
    scheduler ◄──task-finished / task-erred── event loop ◄── done queue

The event loop thread only moves messages; tasks run on executor threads, so the worker
keeps reading (cancellations, later heartbeats) while user code runs.  A task that waits on
other tasks secedes: another executor thread starts in its place, and it takes one back when
it rejoins (``runtime/worker/secession.py``).  Results are not
kept here: small ones go back inline, large ones into the node's shared-memory store.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import inspect
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psutil

from runtime import config
from runtime.comm import messages as m
from runtime.comm import serialize
from runtime.comm.core import Comm, ThreadOutbox, connect, parse_address
from runtime.objstore import store, values
from runtime.objstore.store import ObjectLostError
from runtime.objstore.transfer import fetch_sync
from runtime.worker import interrupt, memory
from runtime.worker.actors import ActorHost, set_worker
from runtime.worker.plugins import Plugins
from runtime.worker.running import RunningBoard
from runtime.worker.secession import thread_state

logger = logging.getLogger("runtime.worker")

#: the worker's exit code when it ends itself because its node agent is gone: a task that
#: was fetching an input then is run again elsewhere, not failed with the connection's error
EXIT_AGENT_LOST = 77


#: the key of the task running in this executor thread (Worker.get_current_task)
_current_task = threading.local()


class Worker:
    def __init__(
        self, scheduler: str, node: str, prefix: str, name: str, nthreads: int = 1,
        resources: dict[str, float] | None = None, memory_limit: int = 0, agent: str = "",
        running_file: str = "", thresholds: memory.Thresholds | None = None,
    ):  # fmt: skip
        self.scheduler_address = scheduler
        #: the node (agent and store) this worker belongs to
        self.node = node
        #: the node store's object-name prefix
        self.prefix = prefix
        #: this worker's id with the scheduler
        self.address = name
        self.nthreads = nthreads
        #: abstract resources this worker offers, e.g. {"GPU": 1}, and what is free of them now;
        #: "CPU" is its thread count unless declared (tasks with num_cpus > 1 ask for it)
        self.resources = {"CPU": float(nthreads), **(resources or {})}
        self._available = dict(self.resources)
        #: bytes of its own memory it may use (0: no limit), and what it does at which fraction
        self.memory_limit = memory_limit
        self.thresholds = thresholds or memory.Thresholds.from_args()
        #: "running", or "paused" while over the pause threshold: it starts no new task
        self.status = "running"
        #: its own memory (resident, not shared) and resident set at the last sample, in bytes
        self.memory = 0
        self.memory_rss = 0
        #: this node's agent, which fetches objects stored on other nodes
        self.agent = agent
        #: where it notes the tasks it is executing, for its agent to read if it dies
        self.running_board = RunningBoard(running_file, nthreads) if running_file else None
        self.comm: Comm | None = None
        #: tasks received and not started: (priority, arrival, message)
        self._ready: list[tuple[Any, int, m.ComputeTask]] = []
        self._ready_cv = threading.Condition()
        self._arrivals = itertools.count()
        #: the compute-task message each queued key will run with; a cancel removes it
        self._live: dict[str, m.ComputeTask] = {}
        #: hints (compute-task with ``after``) by the key they wait for, which runs here
        self._hints: dict[str, list[m.ComputeTask]] = {}
        #: key -> (executor thread id, its compute-task message) while it runs, for interrupts
        self._executing: dict[str, tuple[int, m.ComputeTask]] = {}
        #: ready tasks waiting for resources that running tasks hold
        self._blocked: list[tuple[Any, int, m.ComputeTask]] = []
        #: seceded tasks' threads waiting to take an executor thread's place (``rejoin``)
        self._rejoining: collections.deque[threading.Event] = collections.deque()
        #: running-board slots of executor threads that ended, for new ones (secede starts one)
        self._free_slots: list[int] = []
        self._next_slot = nthreads
        #: messages from executor threads on their way to the scheduler
        self._outbox: ThreadOutbox | None = None
        self._functions: dict[bytes, Any] = {}
        #: the actors living in this process; callers reach them on the interface the node's
        #: agent serves on (loopback unless the node was started to be reached from elsewhere)
        self.actor_host = ActorHost(self, parse_address(agent)[1] if agent.startswith("tcp://") else "127.0.0.1")
        self.loop: asyncio.AbstractEventLoop | None = None
        #: worker plugins (Client.register_plugin)
        self.plugins = Plugins(self)
        self._stopping = False
        self.closed = asyncio.Event()

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._outbox = ThreadOutbox(self.loop, self._to_scheduler)
        # Also how the runtime API, when a task or actor here uses it, finds this cluster.
        set_worker(self)
        self.comm = await connect(self.scheduler_address, m.TO_WORKER)
        self.comm.send(
            m.RegisterWorker(
                self.address, self.node, self.nthreads, os.getpid(), socket.gethostname(), self.resources,
                self.memory_limit,
            )
        )  # fmt: skip
        for i in range(self.nthreads):
            threading.Thread(target=self._executor, args=(i,), name=f"executor-{i}", daemon=True).start()
        asyncio.ensure_future(store.prune_mappings_forever())
        asyncio.ensure_future(self._monitor_memory())
        try:
            handlers = self._handlers()
            while True:
                for msg in await self.comm.read():
                    handlers[type(msg)](msg)
        except ConnectionError:
            logger.info("scheduler connection closed; worker %s exits", self.address)
        finally:
            self.stop()

    def stop(self) -> None:
        if not self._stopping:
            self.plugins.teardown_all()
        self._stopping = True
        self.actor_host.close()
        with self._ready_cv:
            self._ready_cv.notify_all()
            for event in self._rejoining:  # a stopping worker runs nothing more: let them end
                event.set()
        self.closed.set()

    def _handlers(self) -> dict[type, Callable[[Any], None]]:
        """What to do with each message from the scheduler (every type of ``m.TO_WORKER``)."""
        return {
            m.ComputeTask: self._compute_task,
            m.CancelCompute: self._cancel_compute,
            m.StealRequest: self._steal_request,
            m.KillActor: lambda msg: self.actor_host.kill(msg.actor, msg.reason),
            m.Interrupt: lambda msg: self._interrupt(msg.key, msg.hard),
            m.PluginAdd: self._plugin_add,
            # Client.run: out of band, on a thread of its own
            m.Run: lambda msg: threading.Thread(
                target=self._run_function, args=(msg,), name="client-run", daemon=True
            ).start(),
            m.Restart: self._restart,
            m.Registered: lambda msg: None,
        }

    def _compute_task(self, msg: m.ComputeTask) -> None:
        with self._ready_cv:
            if msg.after:  # a hint: it starts once ``after``, queued or running here, finishes
                if msg.after in self._live or msg.after in self._executing:
                    self._live[msg.key] = msg
                    self._hints.setdefault(msg.after, []).append(msg)
                return  # else ``after`` is done (or gone): the scheduler places it, unhinted
            self._live[msg.key] = msg
            heapq.heappush(self._ready, (msg.priority, next(self._arrivals), msg))
            self._ready_cv.notify()

    def _cancel_compute(self, msg: m.CancelCompute) -> None:
        with self._ready_cv:
            self._live.pop(msg.key, None)
            for hint in self._hints.pop(msg.key, ()):  # they wait for it in vain now
                if self._live.get(hint.key) is hint:
                    del self._live[hint.key]

    def _take_hints(self, key: str, result: m.Message) -> tuple[m.Message, list[m.ComputeTask]]:
        """After ``key`` ran here: the hints that waited for it, ready to run with its value, and
        its result naming them (``started``); none if it did not finish.  Queue them only once
        the result is posted: the scheduler must hear of ``key`` before of any of them."""
        with self._ready_cv:
            hints = [h for h in self._hints.pop(key, ()) if self._live.get(h.key) is h]
            if type(result) is not m.TaskFinished:
                for hint in hints:
                    del self._live[hint.key]
                return result, []
            ready = [msgspec.structs.replace(h, deps={**h.deps, key: result.value}, after="") for h in hints]
            for hint in ready:
                self._live[hint.key] = hint
        if not ready:
            return result, []
        return msgspec.structs.replace(result, started=tuple(h.key for h in ready)), ready

    def _queue(self, msgs: list[m.ComputeTask]) -> None:
        with self._ready_cv:
            for msg in msgs:
                if self._live.get(msg.key) is msg:  # not cancelled meanwhile
                    heapq.heappush(self._ready, (msg.priority, next(self._arrivals), msg))
            self._ready_cv.notify(len(msgs))

    def _steal_request(self, msg: m.StealRequest) -> None:
        """Work stealing: give ``key`` up if it has not started, and say what it was.  Under the
        lock an executor takes tasks with, so it is dropped or started, never both; the answer
        leaves through the outbox, after the result of a task that finished already."""
        with self._ready_cv:
            if self._live.pop(msg.key, None) is not None:  # its heap entry is skipped, as a cancel's
                state = "queued"
            elif msg.key in self._executing:
                state = "executing"
            else:
                state = "gone"
            self.post(m.StealResponse(msg.key, msg.request, state))

    def _plugin_add(self, msg: m.PluginAdd) -> None:
        try:
            self.plugins.add(serialize.loads(msg.plugin), msg.name)
        except Exception:
            logger.exception("cannot install worker plugin %r", msg.name)

    def _restart(self, msg: m.Restart) -> None:
        logger.info("restarting on the request of client %s", msg.client or "?")
        self._exit(interrupt.EXIT_RESTART)

    async def _monitor_memory(self) -> None:
        """Sample this process's memory; drop mappings, pause and resume by the thresholds; and
        report to the scheduler in a heartbeat every ``heartbeat.interval`` seconds."""
        proc = psutil.Process()
        limit, th = self.memory_limit, self.thresholds
        spilling = False
        last_beat = 0.0
        interval, beat = config.get("worker.memory.monitor-interval"), config.get("heartbeat.interval")
        while not self._stopping:
            self.memory, self.memory_rss = memory.process_memory(proc)
            over_spill = memory.over(self.memory, limit, th.spill)
            if over_spill and not spilling:
                logger.info("memory %s is over %.0f%% of the limit: dropping cached store mappings",
                            memory.format_bytes(self.memory), 100 * (th.spill or 0))  # fmt: skip
                store.forget_mappings()
            spilling = over_spill
            paused = memory.over(self.memory, limit, th.pause)
            if paused != (self.status == "paused"):
                self._set_status("paused" if paused else "running")
            now = time.monotonic()
            if now - last_beat >= beat:
                last_beat = now
                self._to_scheduler([m.WorkerHeartbeat(self.memory, self.memory_rss)])
            await asyncio.sleep(interval)

    def _set_status(self, status: str) -> None:
        logger.warning(
            "worker %s: memory %s of limit %s: %s", self.address, memory.format_bytes(self.memory),
            memory.format_bytes(self.memory_limit), "pausing (no new tasks)" if status == "paused" else "resuming",
        )  # fmt: skip
        with self._ready_cv:
            self.status = status
            self._ready_cv.notify_all()
        self._to_scheduler([m.WorkerStatus(status, self.memory)])

    def _run_function(self, msg: m.Run) -> None:
        answer: tuple
        try:
            answer = ("ok", serialize.dumps(serialize.loads(msg.function)()))
        except BaseException as e:  # noqa: BLE001 - the caller gets every error back
            exception, tb, _ = serialize.pickled_error(e)
            answer = ("error", exception, tb)
        self.post(m.RunResult(msg.run_id, answer))

    def _interrupt(self, key: str, hard: bool) -> None:
        """Stop the task ``key`` if it is running here (see runtime.worker.interrupt); ``hard``:
        restart this worker if it has not stopped after the grace period."""
        with self._ready_cv:
            running = self._executing.get(key)
        if running is None:
            return
        logger.info("interrupting task %s (%scancelled)", key, "force-" if hard else "")
        interrupt.raise_in_thread(running[0])
        if hard:
            assert self.loop is not None
            self.loop.call_later(interrupt.FORCE_CANCEL_GRACE, self._restart_if_running, key, running[1])

    def _restart_if_running(self, key: str, msg: m.ComputeTask) -> None:
        with self._ready_cv:
            still = self._executing.get(key)
        if still is None or still[1] is not msg:
            return
        logger.error(
            "force-cancelled task %s still runs after %gs (blocked outside Python?); restarting this worker",
            key, interrupt.FORCE_CANCEL_GRACE,
        )  # fmt: skip
        self._exit(interrupt.EXIT_FORCE_CANCEL)

    def _exit(self, code: int) -> None:
        """End this process at once for its nanny to restart; no task it ran is blamed for it."""
        if self.running_board is not None:
            for slot in range(self.nthreads):
                self.running_board.clear(slot)
        self.plugins.teardown_all()
        logging.shutdown()
        os._exit(code)

    # -- executor threads ------------------------------------------------------------

    def _executor(self, slot: int) -> None:
        try:
            while True:
                try:
                    if not self._run_next(slot):
                        return
                except interrupt.TaskInterrupted:  # arrived just after its task ended: nothing to stop
                    pass
        finally:
            with self._ready_cv:
                self._free_slots.append(slot)

    def _start_executor(self) -> None:
        """One more executor thread (in place of a seceded one).  Call with ``_ready_cv`` held."""
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
        threading.Thread(target=self._executor, args=(slot,), name=f"executor-{slot}", daemon=True).start()

    def secede_thread(self, key: str, duration: float) -> None:
        """The task ``key`` on this thread leaves the executor threads (runtime.worker.secession)."""
        with self._ready_cv:
            if self._stopping:
                return
            self._start_executor()
        logger.debug("task %s seceded after %.3fs", key, duration)
        self.post(m.LongRunning(key))

    def rejoin_thread(self) -> None:
        """Block until an executor thread ends its task and leaves its place to this one."""
        event = threading.Event()
        with self._ready_cv:
            if self._stopping:
                return
            self._rejoining.append(event)
            self._ready_cv.notify_all()  # an idle thread hands over at once
        try:
            event.wait()
        finally:  # interrupted (a forced cancel) before a thread handed over: still seceded
            with self._ready_cv:
                if event.is_set():
                    thread_state.seceded = False
                else:
                    self._rejoining.remove(event)

    def _run_next(self, slot: int) -> bool:
        """Take and run one task; False when the worker stops or this thread ends (it handed
        its place to a rejoining task, or its task seceded and has a replacement)."""
        while True:
            with self._ready_cv:
                while (not self._ready or self.status == "paused") and not self._stopping and not self._rejoining:
                    self._ready_cv.wait()
                if self._stopping:
                    return False
                if self._rejoining:  # a seceded task wants a thread back: this one retires for it
                    self._rejoining.popleft().set()
                    return False
                entry = heapq.heappop(self._ready)
                msg = entry[2]
                if self._live.get(msg.key) is not msg:
                    continue  # cancelled, or superseded by a later compute-task
                needs = msg.resources
                if needs and not self._acquire(needs):
                    self._blocked.append(entry)
                    continue
                del self._live[msg.key]
                self._executing[msg.key] = (threading.get_ident(), msg)
            board = self.running_board
            if board is not None:
                board.mark(slot, msg.key)
            plugins = self.plugins.installed
            thread_state.worker, thread_state.key, thread_state.start = self, msg.key, time.time()
            try:
                if plugins:
                    self.plugins.transition(msg.key, "ready", "executing")
                result = self.execute(msg)
                if plugins:
                    finish = {m.TaskFinished: "memory", m.TaskErred: "error"}.get(type(result), "released")
                    self.plugins.transition(msg.key, "executing", finish)
                result, started = self._take_hints(msg.key, result)
                self.post(result)
                if started:
                    self._queue(started)
            finally:
                seceded = thread_state.seceded
                thread_state.worker, thread_state.seceded = None, False
                with self._ready_cv:
                    if self._executing.get(msg.key, (0, None))[1] is msg:
                        del self._executing[msg.key]
                if board is not None:
                    board.clear(slot)
                if needs:
                    self._release(needs)
            return not seceded  # a thread that seceded has a replacement already: it ends

    def _acquire(self, needs: dict[str, float]) -> bool:
        """Take ``needs`` from the free resources if all are there.  Call with ``_ready_cv`` held."""
        if any(self._available.get(r, 0) < n for r, n in needs.items()):
            return False
        for r, n in needs.items():
            self._available[r] -= n
        return True

    def _release(self, needs: dict[str, float]) -> None:
        with self._ready_cv:
            for r, n in needs.items():
                self._available[r] += n
            for entry in self._blocked:
                heapq.heappush(self._ready, entry)
            self._blocked.clear()
            self._ready_cv.notify_all()

    def execute(self, msg: m.ComputeTask) -> m.TaskFinished | m.TaskErred | m.MissingData:
        """Run one task; returns the task-finished or task-erred message (or missing-data)."""
        key = msg.key
        start = time.time()
        try:
            func_bytes, args_bytes = msg.run_spec
            func = self._functions.get(func_bytes)
            if func is None:
                func = self._functions[func_bytes] = serialize.loads(func_bytes)
            try:
                deps = self.load_deps(key, msg.deps, msg.sources)
            except _MissingDependency as e:
                return m.MissingData(key, e.key, e.located)
            transfer = time.time() - start if msg.deps else 0.0
            args, kwargs = serialize.loads_args(args_bytes, deps)
            del deps
            _current_task.key = key
            try:
                result = func(*args, **kwargs)
                if inspect.iscoroutine(result):  # an async def function: run it on an event loop
                    result = asyncio.run(result)
            finally:
                _current_task.key = None
            del args, kwargs
            value, nbytes = values.encode(result, key=key, prefix=self.prefix, node=self.node)
            return m.TaskFinished(key, value, nbytes, start, time.time(), transfer=transfer)
        except BaseException as e:  # noqa: BLE001 - everything a task raises goes back to its caller
            if isinstance(e, (KeyboardInterrupt, SystemExit)) and self._stopping:
                raise
            return m.TaskErred(key, *serialize.pickled_error(e), start, time.time())

    def load_deps(self, key: str, deps: dict[str, m.Value], sources: dict[str, str]) -> dict[str, Any]:
        """The values of a task's dependencies, from their wire forms; a value stored on another
        node is first copied into this node's store (its agent tells the scheduler of the copy)."""
        out = {}
        for dep, located in deps.items():
            try:
                if type(located) is m.StoreRef and located.node != self.node:
                    try:
                        located = fetch_sync(self.agent, self.node, dep, located, sources.get(located.node))
                    except OSError as e:  # refused, reset, silent: not the task's error but our node's end
                        logger.error(
                            "task %s: cannot reach this node's agent at %s to fetch %s (%s: %s); the node is "
                            "gone and this worker with it", key, self.agent, dep, type(e).__name__, e,
                        )  # fmt: skip
                        self._exit(EXIT_AGENT_LOST)
                out[dep] = values.decode(located, key=dep, node=self.node)
            except ObjectLostError as e:
                logger.warning("task %s: dependency %s is missing: %s", key, dep, e)
                raise _MissingDependency(dep, located) from e
        return out

    def get_current_task(self) -> str | None:
        """The key of the task running in the calling thread (Dask's); None outside a task."""
        return getattr(_current_task, "key", None)

    def post(self, msg: m.Message) -> None:
        """Hand a message for the scheduler to the event loop thread."""
        assert self._outbox is not None
        self._outbox.put(msg)

    def _to_scheduler(self, batch: list[m.Message]) -> None:
        if self.comm is not None:
            self.comm.send_many(batch)


class _MissingDependency(ObjectLostError):
    """A dependency's stored value is gone; the scheduler is told (missing-data) and recomputes it."""

    def __init__(self, key: str, located: m.Value):
        super().__init__(f"dependency {key!r} is missing from the object store")
        self.key = key
        self.located = located
