"""The scheduler's state machine: pure, with no I/O, clocks or threads.

How it works::

    stimulus ──► stimulus_<name>() ──► recommendations {key: finish state}
                                             │
                     ┌───────────────────────┘
                     ▼
    transitions(): pop a recommendation, run _transition_<start>_<finish>(),
                   which changes the state and returns more recommendations
                   and messages; repeat until no recommendation is left
                     │
                     ▼
    (client_msgs, worker_msgs) ──► the I/O shell (server.py) sends them

Task states are those of the specification (``ALL_TASK_STATES``).  A transition not in
``_TRANSITIONS`` goes through ``released`` when both legs exist, else it raises
``InvalidTransition`` naming the key and both states.

Where a value lives (a deviation the object store makes possible): ``TaskState.data`` is
the value's wire form, either the pickle itself (small values travel inline, held here so
a dependent's compute message or a client's result carries them with no extra round trip)
or a ``[node, nbytes, name]`` reference into a node's shared-memory store.  ``who_has`` keeps
the specification's meaning (the workers holding the value, used for locality), but a
worker's death loses nothing: inline values live here and stored ones in the node's
store.  Only a node leaving loses what its store alone held.

Outgoing messages are wire-ready dicts (this is the codec's edge): ``client_msgs`` maps a
client id, ``worker_msgs`` a worker address or node id, to a list of messages.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

from runtime.errors import KilledWorker
from runtime.scheduler import stimuli as st

TaskStateState = Literal["released", "waiting", "no-worker", "queued", "processing", "memory", "erred", "forgotten"]
ALL_TASK_STATES: frozenset[str] = frozenset(get_args(TaskStateState))
#: recommendations: key -> the state it should move to next
Recs = dict[str, TaskStateState]
Msgs = dict[str, list[dict]]
#: what a transition returns: more recommendations, client messages, worker messages
RecsMsgs = tuple[Recs, Msgs, Msgs]
#: how to run a task: the pickled callable and the pickled (args, kwargs)
T_runspec = tuple[bytes, bytes]

#: expected duration of a task whose kind has never run (Dask's default too)
UNKNOWN_TASK_DURATION = 0.5
TRANSITION_LOG_LENGTH = 100_000


class InvalidTransition(RuntimeError):
    def __init__(self, key: str, start: str, finish: str, stimulus_id: str = ""):
        self.key, self.start, self.finish = key, start, finish
        super().__init__(f"no transition for task {key!r} from {start!r} to {finish!r} (stimulus {stimulus_id!r})")


class InvariantError(AssertionError):
    """validate=True found the state inconsistent; the message names the key and the rule."""


class TaskState:
    __slots__ = (
        "key", "prefix", "run_spec", "state", "priority", "dependencies", "dependents",
        "waiting", "waiting_data", "who_wants", "who_has", "processing_on", "data", "nbytes",
        "exception", "traceback", "exception_text", "exception_blame", "erred_on",
        "suspicious", "retries",
    )  # fmt: skip

    def __init__(self, key: str, run_spec: T_runspec | None, prefix: str = ""):
        #: the task's name, unique in the cluster
        self.key = key
        #: name shared by tasks of one function, for duration estimates
        self.prefix = prefix or key.rsplit("-", 1)[0]
        #: how to run it; None for data put by a client
        self.run_spec = run_spec
        #: one of ALL_TASK_STATES
        self.state: TaskStateState = "released"
        #: lower runs first: (-user priority, submission generation, order in graph)
        self.priority: tuple[int, int, int] = (0, 0, 0)
        #: tasks whose values this one needs
        self.dependencies: set[TaskState] = set()
        #: tasks that need this one's value
        self.dependents: set[TaskState] = set()
        #: dependencies not yet in memory (the specification's ``waiting``)
        self.waiting: set[TaskState] = set()
        #: dependents yet to run that need this value kept (``waiting_data``)
        self.waiting_data: set[TaskState] = set()
        #: clients holding a future for this key
        self.who_wants: set[ClientState] = set()
        #: workers holding the value
        self.who_has: set[WorkerState] = set()
        #: the worker running it, while processing (``rprocessing``)
        self.processing_on: WorkerState | None = None
        #: the value's wire form while in memory: inline pickle or [node, nbytes, name]
        self.data: bytes | list | None = None
        #: size of the value in bytes
        self.nbytes = 0
        #: pickled exception, remote traceback text and str(exception), when erred
        self.exception: bytes | None = None
        self.traceback: str | None = None
        self.exception_text = ""
        #: the erred task this one failed because of (itself if it raised)
        self.exception_blame: TaskState | None = None
        #: workers it raised on or died on
        self.erred_on: set[str] = set()
        #: how many workers died while running it
        self.suspicious = 0
        #: how many more times to rerun it if it raises
        self.retries = 0

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = ("address", "node", "nthreads", "pid", "processing", "has_what", "occupancy", "nbytes")

    def __init__(self, address: str, node: str, nthreads: int, pid: int = 0):
        #: where it listens; also its id
        self.address = address
        #: the node (agent and store) it belongs to
        self.node = node
        self.nthreads = nthreads
        self.pid = pid
        #: tasks sent to it and their expected durations
        self.processing: dict[TaskState, float] = {}
        #: values it holds (an ordered set)
        self.has_what: dict[TaskState, None] = {}
        #: expected seconds of work queued on it
        self.occupancy = 0.0
        #: bytes of the values it holds
        self.nbytes = 0

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} node={self.node} processing={len(self.processing)}>"


class ClientState:
    __slots__ = ("client_key", "wants_what")

    def __init__(self, client_key: str):
        self.client_key = client_key
        #: tasks this client holds futures for
        self.wants_what: set[TaskState] = set()

    def __repr__(self) -> str:
        return f"<ClientState {self.client_key!r} wants={len(self.wants_what)}>"


class NodeState:
    __slots__ = ("node", "workers", "stored")

    def __init__(self, node: str):
        self.node = node
        #: live workers on this node
        self.workers: set[WorkerState] = set()
        #: tasks whose value is in this node's store
        self.stored: set[TaskState] = set()


def _is_stored(data: bytes | list | None) -> bool:
    return isinstance(data, list)


class SchedulerState:
    def __init__(self, *, validate: bool = False, allowed_failures: int = 3):
        #: every task the scheduler knows, by key
        self.tasks: dict[str, TaskState] = {}
        #: live workers by address
        self.workers: dict[str, WorkerState] = {}
        #: live node agents (and their stores) by node id
        self.nodes: dict[str, NodeState] = {}
        #: connected clients by id
        self.clients: dict[str, ClientState] = {}
        #: tasks ready to run that no worker can take (the specification's ``unrunnable``)
        self.unrunnable: set[TaskState] = set()
        #: average duration of each task prefix, in seconds
        self.task_durations: dict[str, float] = {}
        #: a task involved in more worker deaths than this errs with KilledWorker
        self.allowed_failures = allowed_failures
        #: check every invariant after every transition (tests run with this on)
        self.validate = validate
        #: (key, start, finish, recommendations, stimulus_id), newest last
        self.transition_log: deque[tuple] = deque(maxlen=TRANSITION_LOG_LENGTH)
        self.transition_counter = 0
        self._generation = 0
        self._handlers: dict[type, Callable[[Any], Recs]] = {
            st.UpdateGraph: self.stimulus_update_graph,
            st.UpdateData: self.stimulus_update_data,
            st.TaskFinished: self.stimulus_task_finished,
            st.TaskErred: self.stimulus_task_erred,
            st.AddWorker: self.stimulus_add_worker,
            st.RemoveWorker: self.stimulus_remove_worker,
            st.AddNode: self.stimulus_add_node,
            st.RemoveNode: self.stimulus_remove_node,
            st.AddClient: self.stimulus_add_client,
            st.RemoveClient: self.stimulus_remove_client,
            st.ClientReleasesKeys: self.stimulus_client_releases_keys,
        }
        # Messages produced while handling the current stimulus.
        self._client_msgs: Msgs = {}
        self._worker_msgs: Msgs = {}

    # ------------------------------------------------------------------ entry point

    def handle(self, stimulus: st.Stimulus) -> tuple[Msgs, Msgs]:
        """Apply one stimulus and every transition it leads to; returns the messages to send."""
        self._client_msgs, self._worker_msgs = {}, {}
        recs = self._handlers[type(stimulus)](stimulus)
        self.transitions(recs, stimulus.stimulus_id)
        if self.validate:
            self.validate_state()
        msgs = self._client_msgs, self._worker_msgs
        self._client_msgs, self._worker_msgs = {}, {}
        return msgs

    def _to_client(self, client: str, msg: dict) -> None:
        self._client_msgs.setdefault(client, []).append(msg)

    def _to_worker(self, address: str, msg: dict) -> None:
        self._worker_msgs.setdefault(address, []).append(msg)

    def _report(self, ts: TaskState, msg: dict) -> None:
        for cs in ts.who_wants:
            self._to_client(cs.client_key, msg)

    # ------------------------------------------------------------------ transitions

    def transitions(self, recommendations: Recs, stimulus_id: str) -> None:
        """Apply recommendations, and those they produce, until none is left."""
        recs = dict(recommendations)
        while recs:
            key, finish = recs.popitem()
            ts = self.tasks.get(key)
            if ts is None or ts.state == finish:
                continue
            recs.update(self._transition(ts, finish, stimulus_id))

    def _transition(self, ts: TaskState, finish: TaskStateState, stimulus_id: str, **kwargs: Any) -> Recs:
        start = ts.state
        func = _TRANSITIONS.get((start, finish))
        if func is not None:
            recs = func(self, ts, **kwargs)
        elif (start, "released") in _TRANSITIONS and ("released", finish) in _TRANSITIONS:
            recs = _TRANSITIONS[start, "released"](self, ts)
            recs.pop(ts.key, None)  # we are going on to `finish` ourselves
            recs.update(_TRANSITIONS["released", finish](self, ts, **kwargs))
        else:
            raise InvalidTransition(ts.key, start, finish, stimulus_id)
        self.transition_counter += 1
        self.transition_log.append((ts.key, start, ts.state, recs, stimulus_id))
        if self.validate:
            self.validate_task_state(ts)
        return recs

    def _transition_released_waiting(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        for dts in ts.dependencies:
            if dts.exception_blame is not None:
                ts.exception_blame = dts.exception_blame
                return {ts.key: "erred"}
        for dts in ts.dependencies:
            dts.waiting_data.add(ts)
            if dts.state != "memory":
                ts.waiting.add(dts)
                if dts.state == "released":
                    recs[dts.key] = "waiting"
        ts.state = "waiting"
        if not ts.waiting:
            recs[ts.key] = "processing"
        return recs

    def _transition_waiting_processing(self, ts: TaskState) -> Recs:
        ws = self.decide_worker(ts)
        if ws is None:
            return {ts.key: "no-worker"}
        self._send_to_worker(ts, ws)
        return {}

    def _transition_no_worker_processing(self, ts: TaskState) -> Recs:
        ws = self.decide_worker(ts)
        if ws is None:
            return {}  # still nobody to run it; stay in no-worker
        self.unrunnable.discard(ts)
        self._send_to_worker(ts, ws)
        return {}

    def _transition_waiting_no_worker(self, ts: TaskState) -> Recs:
        ts.state = "no-worker"
        self.unrunnable.add(ts)
        return {}

    def _send_to_worker(self, ts: TaskState, ws: WorkerState) -> None:
        duration = self.task_durations.get(ts.prefix, UNKNOWN_TASK_DURATION)
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing[ts] = duration
        ws.occupancy += duration
        assert ts.run_spec is not None
        self._to_worker(
            ws.address,
            {
                "op": "compute-task",
                "key": ts.key,
                "run_spec": ts.run_spec,
                "priority": ts.priority,
                "deps": {dts.key: dts.data for dts in ts.dependencies},
            },
        )

    def _transition_processing_memory(
        self, ts: TaskState, *, worker: str, value: Any, nbytes: int, start: float = 0.0, stop: float = 0.0
    ) -> Recs:
        ws = self._finish_processing(ts)
        if stop > start:
            old = self.task_durations.get(ts.prefix)
            self.task_durations[ts.prefix] = stop - start if old is None else 0.5 * old + 0.5 * (stop - start)
        return self._add_to_memory(ts, ws, value, nbytes)

    def _transition_released_memory(self, ts: TaskState, *, value: Any, nbytes: int) -> Recs:
        return self._add_to_memory(ts, None, value, nbytes)

    def _add_to_memory(self, ts: TaskState, ws: WorkerState | None, value: Any, nbytes: int) -> Recs:
        recs: Recs = {}
        ts.state = "memory"
        ts.data = value
        ts.nbytes = nbytes
        if ws is not None:
            ts.who_has.add(ws)
            ws.has_what[ts] = None
            ws.nbytes += nbytes
        if _is_stored(value):
            ns = self.nodes.get(value[0])
            if ns is None:  # its node left while the message was in flight
                return {ts.key: "released"}
            ns.stored.add(ts)
        for dts in ts.dependents:
            if dts.state == "waiting":
                dts.waiting.discard(ts)
                if not dts.waiting:
                    recs[dts.key] = "processing"
        for dts in ts.dependencies:
            dts.waiting_data.discard(ts)
            if not dts.waiting_data and not dts.who_wants:
                recs[dts.key] = "released"
        if ts.who_wants:
            self._report(ts, {"op": "key-in-memory", "key": ts.key, "value": value, "nbytes": nbytes})
        elif not ts.waiting_data:
            recs[ts.key] = "released"
        return recs

    def _finish_processing(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        ts.processing_on = None
        if ws is not None:
            ws.occupancy = max(ws.occupancy - ws.processing.pop(ts), 0.0)
        return ws

    def _transition_memory_released(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        for ws in ts.who_has:
            del ws.has_what[ts]
            ws.nbytes -= ts.nbytes
        ts.who_has.clear()
        if _is_stored(ts.data):
            node = ts.data[0]
            ns = self.nodes.get(node)
            if ns is not None:
                ns.stored.discard(ts)
                self._to_worker(node, {"op": "free-objects", "names": [ts.data[2]]})
        ts.data = None
        ts.state = "released"
        for dts in ts.dependents:
            if dts.state in ("processing", "no-worker"):
                recs[dts.key] = "released"  # it lost an input; it will wait for it again
            elif dts.state == "waiting":
                dts.waiting.add(ts)
        if ts.who_wants or ts.waiting_data:
            if ts.run_spec is None:
                return self._lost_data(ts, recs)
            recs[ts.key] = "waiting"
        elif not ts.dependents:
            recs[ts.key] = "forgotten"
        return recs

    def _lost_data(self, ts: TaskState, recs: Recs) -> Recs:
        """A value put by a client is gone with its node and cannot be recomputed."""
        error = f"the value of {ts.key!r} was put by a client and its node's store is gone"
        return self._fail(ts, pickle.dumps(LookupError(error)), "", error, recs)

    def _fail(self, ts: TaskState, exception: bytes, traceback: str, text: str, recs: Recs) -> Recs:
        ts.state = "erred"
        ts.exception, ts.traceback, ts.exception_text = exception, traceback, text
        ts.exception_blame = ts
        self._erred_common(ts, recs)
        return recs

    def _transition_processing_erred(
        self, ts: TaskState, *, worker: str, exception: bytes, traceback: str, exception_text: str, **_: Any
    ) -> Recs:
        self._finish_processing(ts)
        ts.erred_on.add(worker)
        return self._fail(ts, exception, traceback, exception_text, {})

    def _erred_common(self, ts: TaskState, recs: Recs) -> None:
        """What every move into ``erred`` does: blame dependents, let go of inputs, tell clients."""
        blame = ts.exception_blame
        assert blame is not None
        for dts in ts.dependents:
            if dts.state in ("waiting", "no-worker", "released", "queued"):
                dts.exception_blame = blame
                recs[dts.key] = "erred"
        self._release_inputs(ts, recs)
        ts.waiting.clear()
        self._report(
            ts,
            {
                "op": "task-erred",
                "key": ts.key,
                "exception": blame.exception,
                "traceback": blame.traceback,
                "blame": blame.key,
            },
        )

    def _release_inputs(self, ts: TaskState, recs: Recs) -> None:
        """``ts`` will not run now: its dependencies need not keep their values for it."""
        for dts in ts.dependencies:
            dts.waiting_data.discard(ts)
            if not dts.waiting_data and not dts.who_wants and dts.state in ("memory", "waiting"):
                recs[dts.key] = "released"

    def _transition_waiting_erred(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        if ts.state == "no-worker":
            self.unrunnable.discard(ts)
        ts.state = "erred"
        self._erred_common(ts, recs)
        return recs

    _transition_released_erred = _transition_waiting_erred
    _transition_no_worker_erred = _transition_waiting_erred

    def _transition_waiting_released(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        if ts.state == "no-worker":
            self.unrunnable.discard(ts)
        self._release_inputs(ts, recs)
        ts.waiting.clear()
        ts.state = "released"
        return self._after_release(ts, recs)

    _transition_no_worker_released = _transition_waiting_released

    def _after_release(self, ts: TaskState, recs: Recs) -> Recs:
        if ts.who_wants or ts.waiting_data:
            recs[ts.key] = "waiting"
        elif not ts.dependents:
            recs[ts.key] = "forgotten"
        return recs

    def _transition_processing_released(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        ws = self._finish_processing(ts)
        if ws is not None and ws.address in self.workers:
            self._to_worker(ws.address, {"op": "cancel-compute", "key": ts.key})
        self._release_inputs(ts, recs)
        ts.state = "released"
        return self._after_release(ts, recs)

    def _transition_erred_released(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        ts.exception = ts.traceback = None
        ts.exception_text = ""
        ts.exception_blame = None
        ts.erred_on.clear()
        ts.state = "released"
        for dts in ts.dependents:
            if dts.state == "erred":
                recs[dts.key] = "waiting"
        return self._after_release(ts, recs)

    def _transition_released_forgotten(self, ts: TaskState) -> Recs:
        recs: Recs = {}
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            dts.waiting_data.discard(ts)
            if not dts.dependents and not dts.who_wants:
                recs[dts.key] = "forgotten"
            elif not dts.waiting_data and not dts.who_wants and dts.state == "memory":
                recs[dts.key] = "released"
        for dts in ts.dependents:  # only when cancelled together with ts
            dts.dependencies.discard(ts)
            dts.waiting.discard(ts)
            if dts.state not in ("memory", "erred"):
                recs[dts.key] = "forgotten"
        ts.dependencies.clear()
        ts.dependents.clear()
        ts.state = "forgotten"
        del self.tasks[ts.key]
        return recs

    def _transition_erred_forgotten(self, ts: TaskState) -> Recs:
        ts.state = "released"
        return self._transition_released_forgotten(ts)

    # ------------------------------------------------------------------ placement

    def decide_worker(self, ts: TaskState) -> WorkerState | None:
        """The worker with the least expected start time for ``ts``, or None if none can run it.

        Expected start time = bytes of stored dependencies not on the worker's node / bandwidth
        + the worker's occupancy per thread; ties go to the least loaded (fewest bytes held).
        """
        if not self.workers:
            return None
        candidates: Iterable[WorkerState] = self.workers.values()
        stored_deps = [dts for dts in ts.dependencies if _is_stored(dts.data)]
        if not stored_deps:
            return min(candidates, key=_occupancy_per_thread)

        def objective(ws: WorkerState) -> tuple[float, int]:
            fetch = sum(dts.nbytes for dts in stored_deps if dts.data[0] != ws.node)  # type: ignore[index]
            return fetch / BANDWIDTH + ws.occupancy / ws.nthreads, ws.nbytes

        return min(candidates, key=objective)

    # ------------------------------------------------------------------ stimuli

    def stimulus_update_graph(self, s: st.UpdateGraph) -> Recs:
        cs = self.clients.get(s.client) or self._new_client(s.client)
        self._generation += 1
        recs: Recs = {}
        lookup_errors: list[tuple[TaskState, str]] = []
        new: list[tuple[TaskState, st.TaskSpec]] = []
        for order, spec in enumerate(s.tasks):
            if spec.key in self.tasks:
                continue
            ts = TaskState(spec.key, spec.run_spec, spec.prefix)
            ts.priority = (-s.priority, self._generation, order)
            ts.retries = spec.retries
            self.tasks[spec.key] = ts
            new.append((ts, spec))
        for ts, spec in new:
            for dep in spec.dependencies:
                dts = self.tasks.get(dep)
                if dts is None:
                    lookup_errors.append((ts, dep))
                    continue
                ts.dependencies.add(dts)
                dts.dependents.add(ts)
            recs[ts.key] = "waiting"
        for key in s.wanted:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.who_wants.add(cs)
            cs.wants_what.add(ts)
            if ts.state == "memory":
                self._to_client(cs.client_key, {"op": "key-in-memory", "key": key, "value": ts.data, "nbytes": ts.nbytes})
            elif ts.state == "erred":
                blame = ts.exception_blame or ts
                msg = {"op": "task-erred", "key": key, "exception": blame.exception, "traceback": blame.traceback, "blame": blame.key}
                self._to_client(cs.client_key, msg)
        for ts, dep in lookup_errors:
            text = f"task {ts.key!r} depends on {dep!r}, which the scheduler does not know (released or never submitted)"
            recs.pop(ts.key, None)
            self._fail(ts, pickle.dumps(LookupError(text)), "", text, recs)
        return recs

    def stimulus_update_data(self, s: st.UpdateData) -> Recs:
        cs = self.clients.get(s.client) or self._new_client(s.client)
        ts = self.tasks.get(s.key)
        if ts is None:
            ts = self.tasks[s.key] = TaskState(s.key, None, "put")
        ts.who_wants.add(cs)
        cs.wants_what.add(ts)
        if ts.state != "released":
            return {}
        return self._transition(ts, "memory", s.stimulus_id, value=s.value, nbytes=s.nbytes)

    def stimulus_task_finished(self, s: st.TaskFinished) -> Recs:
        ts = self.tasks.get(s.key)
        if ts is None or ts.state != "processing" or ts.processing_on is None or ts.processing_on.address != s.worker:
            # A stale result (the task was released, or rescheduled): drop its stored copy.
            # Each attempt writes under a name of its own, so this never hits a live copy.
            if _is_stored(s.value) and (ts is None or ts.data != s.value):
                self._to_worker(s.value[0], {"op": "free-objects", "names": [s.value[2]]})
            return {}
        return self._transition(
            ts, "memory", s.stimulus_id, worker=s.worker, value=s.value, nbytes=s.nbytes, start=s.start, stop=s.stop
        )

    def stimulus_task_erred(self, s: st.TaskErred) -> Recs:
        ts = self.tasks.get(s.key)
        if ts is None or ts.state != "processing" or ts.processing_on is None or ts.processing_on.address != s.worker:
            return {}
        if ts.retries > 0:
            ts.retries -= 1
            recs = self._transition(ts, "released", s.stimulus_id)
            recs[ts.key] = "waiting"
            return recs
        return self._transition(
            ts, "erred", s.stimulus_id, worker=s.worker, exception=s.exception,
            traceback=s.traceback, exception_text=s.exception_text,
        )  # fmt: skip

    def stimulus_add_worker(self, s: st.AddWorker) -> Recs:
        if s.address in self.workers:
            return {}
        ns = self.nodes.get(s.node) or self._new_node(s.node)
        ws = WorkerState(s.address, s.node, max(1, s.nthreads), s.pid)
        self.workers[s.address] = ws
        ns.workers.add(ws)
        return {ts.key: "processing" for ts in self.unrunnable}

    def stimulus_remove_worker(self, s: st.RemoveWorker) -> Recs:
        ws = self.workers.pop(s.address, None)
        if ws is None:
            return {}
        ns = self.nodes.get(ws.node)
        if ns is not None:
            ns.workers.discard(ws)
        recs: Recs = {}
        for ts in list(ws.processing):
            ts.suspicious += 1
            ts.erred_on.add(ws.address)
            if ts.suspicious > self.allowed_failures:
                exc = KilledWorker(ts.key, sorted(ts.erred_on), s.cause)
                recs.update(
                    self._transition(
                        ts, "erred", s.stimulus_id, worker=ws.address, exception=pickle.dumps(exc),
                        traceback="", exception_text=str(exc),
                    )
                )  # fmt: skip
            else:
                recs.update(self._transition(ts, "released", s.stimulus_id))
        # Its values survive: inline ones are held here, stored ones in its node's store.
        for ts in ws.has_what:
            ts.who_has.discard(ws)
        ws.has_what.clear()
        return recs

    def stimulus_add_node(self, s: st.AddNode) -> Recs:
        if s.node not in self.nodes:
            self._new_node(s.node)
        return {}

    def stimulus_remove_node(self, s: st.RemoveNode) -> Recs:
        ns = self.nodes.pop(s.node, None)
        if ns is None:
            return {}
        recs: Recs = {}
        for ws in list(ns.workers):
            recs.update(self.stimulus_remove_worker(st.RemoveWorker(s.stimulus_id, ws.address, s.cause)))
        for ts in ns.stored:  # only this store held them: lost
            recs[ts.key] = "released"
        ns.stored.clear()
        return recs

    def stimulus_add_client(self, s: st.AddClient) -> Recs:
        if s.client not in self.clients:
            self._new_client(s.client)
        return {}

    def stimulus_remove_client(self, s: st.RemoveClient) -> Recs:
        cs = self.clients.get(s.client)
        if cs is None:
            return {}
        recs = self._client_releases(cs, [ts.key for ts in cs.wants_what])
        del self.clients[s.client]
        return recs

    def stimulus_client_releases_keys(self, s: st.ClientReleasesKeys) -> Recs:
        cs = self.clients.get(s.client)
        return self._client_releases(cs, s.keys) if cs is not None else {}

    def _client_releases(self, cs: ClientState, keys: Iterable[str]) -> Recs:
        recs: Recs = {}
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts not in cs.wants_what:
                continue
            cs.wants_what.discard(ts)
            ts.who_wants.discard(cs)
            if ts.who_wants:
                continue
            if not ts.dependents:
                recs[key] = "forgotten"
            elif ts.state != "erred" and not ts.waiting_data:
                recs[key] = "released"
        return recs

    def _new_client(self, client: str) -> ClientState:
        cs = self.clients[client] = ClientState(client)
        return cs

    def _new_node(self, node: str) -> NodeState:
        ns = self.nodes[node] = NodeState(node)
        return ns

    # ------------------------------------------------------------------ introspection

    def story(self, *keys: str) -> list[tuple]:
        """Every logged transition that moved one of ``keys`` or recommended something for it."""
        wanted = set(keys)
        return [t for t in self.transition_log if t[0] in wanted or wanted.intersection(t[3])]

    # ------------------------------------------------------------------ validation

    def validate_task_state(self, ts: TaskState) -> None:
        if ts.state == "forgotten":
            if ts.key in self.tasks:
                raise InvariantError(f"{ts.key!r} is forgotten but still in tasks")
            return
        if self.tasks.get(ts.key) is not ts:
            raise InvariantError(f"{ts.key!r} ({ts.state}) is not in tasks")
        _VALIDATORS[ts.state](self, ts)

    def _validate_released(self, ts: TaskState) -> None:
        _check(ts, not ts.waiting and ts.processing_on is None and ts.data is None, "released task holds state")
        _check(ts, ts not in self.unrunnable, "released task is unrunnable")

    def _validate_waiting(self, ts: TaskState) -> None:
        _check(ts, ts.processing_on is None and ts.data is None, "waiting task is processing or in memory")
        for dts in ts.waiting:
            _check(ts, dts.state != "memory", f"waits for {dts.key!r}, which is in memory")
        for dts in ts.dependencies:
            _check(ts, ts in dts.waiting_data, f"missing from waiting_data of {dts.key!r}")

    def _validate_no_worker(self, ts: TaskState) -> None:
        _check(ts, ts in self.unrunnable and not ts.waiting, "no-worker task not unrunnable, or still waiting")

    def _validate_processing(self, ts: TaskState) -> None:
        ws = ts.processing_on
        _check(ts, ws is not None and ws.address in self.workers and ts in ws.processing, "processing on no live worker")
        _check(ts, not ts.waiting, "processing while waiting for dependencies")
        for dts in ts.dependencies:
            _check(ts, dts.state == "memory", f"processing but dependency {dts.key!r} is {dts.state}")
            _check(ts, ts in dts.waiting_data, f"missing from waiting_data of {dts.key!r}")

    def _validate_memory(self, ts: TaskState) -> None:
        _check(ts, ts.data is not None, "in memory without a value")
        _check(ts, ts.processing_on is None and not ts.waiting, "in memory but processing or waiting")
        for ws in ts.who_has:
            _check(ts, ts in ws.has_what, f"who_has {ws.address} but not in its has_what")

    def _validate_erred(self, ts: TaskState) -> None:
        _check(ts, ts.exception_blame is not None, "erred without exception_blame")
        _check(ts, ts.processing_on is None and ts.data is None, "erred but processing or in memory")

    def validate_state(self) -> None:
        """Check the whole state: every task, every worker and every client."""
        for ts in self.tasks.values():
            self.validate_task_state(ts)
            for dts in ts.dependencies:
                _check(ts, ts in dts.dependents, f"not among dependents of its dependency {dts.key!r}")
            for cs in ts.who_wants:
                _check(ts, ts in cs.wants_what and cs.client_key in self.clients, "who_wants/wants_what differ")
            if ts.state == "memory":
                _check(ts, bool(ts.who_wants or ts.waiting_data), "in memory but nobody wants it")
        for ws in self.workers.values():
            for ts in ws.processing:
                _check(ts, ts.processing_on is ws, f"in processing of {ws.address} but runs elsewhere")
            for ts in ws.has_what:
                _check(ts, ws in ts.who_has, f"in has_what of {ws.address} but not in who_has")
            total = sum(ws.processing.values())
            if abs(ws.occupancy - total) > 1e-6 * max(1.0, total):
                raise InvariantError(f"worker {ws.address}: occupancy {ws.occupancy} != {total}")
        for cs in self.clients.values():
            for ts in cs.wants_what:
                _check(ts, cs in ts.who_wants, f"wanted by {cs.client_key} but not in who_wants")


#: bytes per second assumed between nodes, for the cost of fetching a dependency
BANDWIDTH = 100e6


def _occupancy_per_thread(ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads


def _check(ts: TaskState, ok: bool, what: str) -> None:
    if not ok:
        raise InvariantError(f"task {ts.key!r} ({ts.state}): {what}")


S = SchedulerState
_TRANSITIONS: dict[tuple[str, str], Callable[..., Recs]] = {
    ("released", "waiting"): S._transition_released_waiting,
    ("released", "memory"): S._transition_released_memory,
    ("released", "erred"): S._transition_released_erred,
    ("released", "forgotten"): S._transition_released_forgotten,
    ("waiting", "processing"): S._transition_waiting_processing,
    ("waiting", "no-worker"): S._transition_waiting_no_worker,
    ("waiting", "released"): S._transition_waiting_released,
    ("waiting", "erred"): S._transition_waiting_erred,
    ("no-worker", "processing"): S._transition_no_worker_processing,
    ("no-worker", "released"): S._transition_no_worker_released,
    ("no-worker", "erred"): S._transition_no_worker_erred,
    ("processing", "memory"): S._transition_processing_memory,
    ("processing", "erred"): S._transition_processing_erred,
    ("processing", "released"): S._transition_processing_released,
    ("memory", "released"): S._transition_memory_released,
    ("erred", "released"): S._transition_erred_released,
    ("erred", "forgotten"): S._transition_erred_forgotten,
}
_VALIDATORS: dict[str, Callable[[SchedulerState, TaskState], None]] = {
    "released": S._validate_released,
    "waiting": S._validate_waiting,
    "no-worker": S._validate_no_worker,
    "processing": S._validate_processing,
    "memory": S._validate_memory,
    "erred": S._validate_erred,
}
del S
