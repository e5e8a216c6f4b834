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

Task states are those of the specification (``ALL_TASK_STATES``).  ``_TRANSITIONS`` maps
each legal ``(start, finish)`` pair to its function; a pair with no function of its own
goes through ``released`` when both legs exist; any other pair raises
``InvalidTransition`` naming the key and both states.  Where a task runs is decided in
``placement.py``; the invariants are in ``validation.py``.

A ready task goes to ``processing`` on the worker ``decide_worker`` picks, once the
stimulus that made it ready has settled (``_place_ready``): placed at once, it could be
released again by the same stimulus, and its worker told to compute it and to cancel it in
one batch.  A root-ish task (``placement.is_rootish``) goes there only while some worker
has a free slot (its ``slots``: worker-saturation x threads); otherwise it waits in
``queued``, and each slot that frees takes the queued task of highest priority.  With no
worker able to run it at all, a task waits in ``no-worker``.

Where a value lives (a deviation the object store makes possible): ``TaskState.data`` is
the value's wire form, either the pickle itself (small values travel inline, held here so
a dependent's compute message or a client's result carries them with no extra round trip)
or a ``StoreRef`` (node, nbytes, name) into a node's shared-memory store.  ``who_has``
keeps the specification's meaning (the workers holding the value, used for locality), but
a worker's death loses nothing: inline values live here and stored ones in the node's
store.  Only a node leaving loses what its store alone held.

Outgoing messages are wire-ready dicts (this is the codec's edge): ``client_msgs`` maps a
client id, ``worker_msgs`` a worker address or node id, to a list of messages.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from runtime import config
from runtime.comm.messages import (
    CancelCompute,
    ComputeTask,
    FreeObjects,
    KeyErred,
    KeyInMemory,
    Message,
    StoreRef,
    Value,
)
from runtime.scheduler import (  # noqa: F401 - clients, membership, rerun and secession register handlers
    clients,
    membership,
    placement,
    rerun,
    secession,
    stealing,
    validation,
)
from runtime.scheduler import stimuli as st
from runtime.scheduler.entities import (  # noqa: F401 - re-exported: the specification's names live here
    ALL_TASK_STATES,
    ClientState,
    HeapSet,
    Msgs,
    NodeState,
    Recs,
    T_exception,
    T_runspec,
    TaskGroup,
    TaskState,
    TaskStateState,
    WorkerState,
    pack_priority,
    pickle_error,
    slots_for,
)
from runtime.scheduler.handlers import HANDLERS, handles
from runtime.scheduler.order import CycleError, order_specs
from runtime.scheduler.validation import InvalidTransition, InvariantError  # noqa: F401

#: expected duration of a task whose kind has never run (Dask's default too)
UNKNOWN_TASK_DURATION = 0.5
#: links of a chain sent ahead to the worker of its first (``_hint_dependents``)
CHAIN_HINT_DEPTH = 8


def _default(key: str) -> Any:
    """A setting's default, from the config tree (the one place defaults live).  The state
    machine takes its settings as arguments; these are only what it takes when given none."""
    return config.SETTINGS[key].default


class Outbox:
    """The messages one stimulus makes, by recipient: what ``SchedulerState.handle`` returns.

    Every function that sends takes it as an argument (``out``), so what a transition or a
    stimulus handler sends is in its signature, and a test can call one with an outbox of its
    own.  (Not returned as a ``(recs, client_msgs, worker_msgs)`` tuple per transition, as
    Dask's are: that is two dicts and a tuple made and merged per transition, on the hot path.)
    """

    __slots__ = ("client_msgs", "worker_msgs")

    def __init__(self) -> None:
        #: messages to clients, by client id
        self.client_msgs: Msgs = {}
        #: messages to workers and node agents, by address or node id
        self.worker_msgs: Msgs = {}

    def to_client(self, client: str, msg: Message) -> None:
        self.client_msgs.setdefault(client, []).append(msg)

    def to_worker(self, address: str, msg: Message) -> None:
        self.worker_msgs.setdefault(address, []).append(msg)

    def report(self, ts: TaskState, msg: Message) -> None:
        """``msg`` to every client that wants ``ts``."""
        client_msgs = self.client_msgs
        for cs in ts.who_wants:
            client_msgs.setdefault(cs.client_key, []).append(msg)


class SchedulerState:
    def __init__(
        self, *, validate: bool = False, allowed_failures: int = _default("scheduler.allowed-failures"),
        worker_saturation: float = _default("scheduler.worker-saturation"),
        round_trip: float = _default("scheduler.round-trip"),
        worker_saturation_cap: float = _default("scheduler.worker-saturation-cap"),
        chain_hints: bool = _default("scheduler.chain-hints"),
        transition_log_length: int = _default("scheduler.transition-log-length"),
    ):  # fmt: skip
        #: every task the scheduler knows, by key
        self.tasks: dict[str, TaskState] = {}
        #: task groups by name (a task's prefix)
        self.task_groups: dict[str, TaskGroup] = {}
        #: live workers by address
        self.workers: dict[str, WorkerState] = {}
        #: live workers by host, for host restrictions
        self.workers_by_host: dict[str, dict[WorkerState, None]] = {}
        #: live node agents (and their stores) by node id
        self.nodes: dict[str, NodeState] = {}
        #: nodes that left: what their stores held is gone (node ids are never reused)
        self.departed_nodes: set[str] = set()
        #: connected clients by id
        self.clients: dict[str, ClientState] = {}
        #: ready tasks no worker may run (the specification's ``unrunnable``)
        self.unrunnable: dict[TaskState, None] = {}
        #: ready root-ish tasks waiting for a free worker slot, by priority
        self.queued = HeapSet()
        #: workers with a free slot (fewer tasks than ``WorkerState.slots``)
        self.idle: dict[WorkerState, None] = {}
        #: threads of all workers
        self.total_nthreads = 0
        #: average duration of each task prefix, in seconds
        self.task_durations: dict[str, float] = {}
        #: a task involved in more worker deaths than this errs with KilledWorker
        self.allowed_failures = allowed_failures
        #: slots per thread before a worker counts as saturated (inf: never queue): the least
        self.worker_saturation = worker_saturation
        #: seconds a result takes back and the next task out: short tasks get slots to cover it
        self.round_trip = round_trip
        #: the most slots per thread
        self.worker_saturation_cap = worker_saturation_cap
        #: send a task's worker, with it, the dependents that wait for it alone (``_hint_dependents``)
        self.chain_hints = chain_hints
        #: slots per thread now, for the prefix at the head of the queue (``_retune_slots``)
        self.per_thread = worker_saturation
        #: check every invariant after every transition (tests run with this on)
        self.validate = validate
        #: (key, start, finish, recommendations, stimulus_id), newest last
        self.transition_log: deque[tuple] = deque(maxlen=transition_log_length)
        self.transition_counter = 0
        #: keys whose value's end the shell is to hear of (actors' handle keys: no one needs
        #: them once their value is dropped), and those dropped since it last took them
        #: (``take_dropped``)
        self.watched: set[str] = set()
        self.dropped_watched: list[str] = []
        #: turns of round-robin placement when every worker is saturated
        self.round_robin = 0
        self._worker_list: list[WorkerState] | None = None
        #: tasks numbered so far, in the order submitted (the sequence in their priority)
        self._sequence = 0
        #: stimulus class -> its handler, bound to this state (``handlers.HANDLERS``)
        self._handlers: dict[type, Callable[[Any, Outbox], Recs]] = {
            kind: partial(handler, self) for kind, handler in HANDLERS.items()
        }
        #: steals asked of a victim and not yet confirmed, and those it declined (stealing.py);
        #: an entry goes when its task leaves processing
        self.steals: dict[TaskState, stealing.Steal] = {}
        #: steals asked of victims, moved on their answer, and declined (started or done), so far
        self.steal_counts = {"requested": 0, "moved": 0, "declined": 0}
        #: events for the event log, (topic, message), taken by the shell after each stimulus
        #: (work stealing's, on topic "stealing", as Dask's)
        self.events: list[tuple[str, Any]] = []
        #: tasks the current stimulus recommended for processing, placed once it has settled
        self._to_place: list[TaskState] = []

    # ------------------------------------------------------------------ entry point

    def handle(self, stimulus: st.Stimulus) -> tuple[Msgs, Msgs]:
        """Apply one stimulus and every transition it leads to; returns the messages to send,
        to clients and to workers (and node agents) by recipient."""
        out = Outbox()
        try:
            if recs := self._handlers[type(stimulus)](stimulus, out):
                self.transitions(recs, stimulus.stimulus_id, out)
            if self._to_place:
                self._place_ready(stimulus.stimulus_id, out)
            if self.idle and self.queued:  # a plain dict first: HeapSet's __bool__ is a Python call
                # A slot freed: size the slots for what is queued now, then fill the free ones
                # (slots grow only when a worker has finished one, so then is soon enough).
                self._retune_slots()
                if self.idle:
                    self._fill_free_slots(stimulus.stimulus_id, out)
            if self.validate:
                validation.validate_state(self)
            return out.client_msgs, out.worker_msgs
        except BaseException:
            self._to_place.clear()  # the next stimulus places nothing of one that raised
            raise

    def worker_list(self) -> list[WorkerState]:
        """The workers that take new tasks (not paused, not retiring)."""
        if self._worker_list is None:
            self._worker_list = [ws for ws in self.workers.values() if ws.status == "running"]
        return self._worker_list

    # ------------------------------------------------------------------ transitions

    def transitions(self, recommendations: Recs, stimulus_id: str, out: Outbox) -> None:
        """Apply recommendations, and those they produce, until none is left.

        Those for ``processing`` wait until the stimulus has settled (``_place_ready``).
        """
        recs = dict(recommendations)  # a copy: transition_log keeps the dicts transitions return
        tasks, to_place = self.tasks, self._to_place
        while recs:
            key, finish = recs.popitem()
            if (ts := tasks.get(key)) is None:
                continue
            if finish == "processing":
                to_place.append(ts)
            elif new := self.transition_on(ts, finish, stimulus_id, out):
                recs.update(new)

    def transition(self, ts: TaskState, finish: TaskStateState, stimulus_id: str, out: Outbox, *args: Any) -> Recs:
        """The one way a task changes state: look the pair up in the table, apply it, log it
        for ``story``, count it per group and validate it.  ``args``: what the transition needs
        from the stimulus, such as the value of a finished task (positional: keywords would
        build and unpack a dict per task).  Returns its recommendations."""
        start = ts.state
        func = _TRANSITIONS.get((start, finish))
        if func is None:
            raise InvalidTransition(ts.key, start, finish, stimulus_id)
        recs = func(self, ts, out, *args)
        self.transition_counter += 1
        self.transition_log.append((ts.key, start, ts.state, recs, stimulus_id))
        tg = ts.group  # counted per group for the dashboard (TaskGroup.states)
        tg.entered[ts.state] += 1
        tg.left[start] += 1
        if self.validate:
            validation.validate_task_state(self, ts)
        return recs

    def transition_on(self, ts: TaskState, finish: TaskStateState, stimulus_id: str, out: Outbox) -> Recs:
        """``transition`` to ``finish``, and on while the only recommendation is the task's own
        next state (waiting -> processing -> no-worker): what the ``transitions`` loop would pop
        next, taken now, with no round trip through the recs and the task table
        (``processing`` waits, as there).  Returns the other recommendations."""
        key = ts.key
        while (start := ts.state) != finish and start != "forgotten":
            new = self.transition(ts, finish, stimulus_id, out)
            if len(new) != 1 or key not in new:
                return new
            finish = new[key]
            if finish == "processing":  # placed once the stimulus has settled
                self._to_place.append(ts)
                return {}
        return {}

    def _transition_released_waiting(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        if not (ts.who_wants or ts.waiting_data):
            # A recommendation made stale by a later one in the same stimulus (its last
            # dependent erred meanwhile, say): nothing needs it any more, nor its inputs for
            # it (update-graph counted on its run in their waiting_data).
            self._release_inputs(ts, recs)
            return self._after_release(ts, recs)
        if ts.run_spec is None:
            error = f"the value of {ts.key!r} was put by a client and released; it cannot be recomputed"
            return self._fail(ts, pickle_error(LookupError(error)), "", error, recs, out)
        for dts in ts.dependencies:
            if dts.exception_blame is not None:
                ts.exception_blame = dts.exception_blame
                return {ts.key: "erred"}
        waiting = None
        for dts in ts.dependencies:
            dts.waiting_data[ts] = None
            if dts.state != "memory":
                if waiting is None:
                    waiting = ts.waiting = {}
                waiting[dts] = None
                if dts.state == "released":
                    recs[dts.key] = "waiting"
        ts.state = "waiting"
        if waiting is None:
            recs[ts.key] = "processing"  # or queued: _ready decides, once the stimulus has settled
        return recs

    def _ready(self, ts: TaskState) -> TaskStateState:
        """Where a task whose inputs are all in memory goes once the stimulus has settled.

        Straight to ``queued`` when it is root-ish and no worker has a free slot (as Dask
        does): a wide graph then costs one transition less per root, with no detour through
        a waiting -> processing that places nothing.  Else ``processing``, which places it.
        """
        if not self.idle and self.workers and placement.is_rootish(self, ts):
            return "queued"
        return "processing"

    def _place(self, ts: TaskState) -> WorkerState | TaskStateState:
        """Where a ready task goes: a worker, or ``queued`` (all saturated), or ``no-worker``."""
        if self.workers and placement.is_rootish(self, ts):
            return placement.decide_rootish(self) or "queued"
        return placement.decide_worker(self, ts) or "no-worker"

    def _transition_waiting_processing(
        self, ts: TaskState, out: Outbox, on: WorkerState | None = None, started: bool = False
    ) -> Recs:
        """To the worker ``on`` when given (a steal's thief, or with ``started`` the worker that
        started it as hinted: it runs there already), else where ``_place`` says."""
        if ts.hinted is not None:
            if started and on is ts.hinted:  # its worker started it, as hinted: it runs there already
                ts.hinted = None
                self._assign(ts, on)
                self._hint_dependents(ts, on, out)  # the chain below, on
                return {}
            self._revoke(ts, out)
        where = self._place(ts) if on is None else on
        if isinstance(where, str):
            return {ts.key: where}
        self._send_to_worker(ts, where, out)
        return {}

    def _transition_waiting_queued(self, ts: TaskState, out: Outbox) -> Recs:
        self.unrunnable.pop(ts, None)
        ts.state = "queued"
        self.queued.add(ts)
        return {}

    def _transition_waiting_no_worker(self, ts: TaskState, out: Outbox) -> Recs:
        ts.state = "no-worker"
        self.unrunnable[ts] = None
        return {}

    def _transition_queued_processing(self, ts: TaskState, out: Outbox) -> Recs:
        ws = placement.decide_rootish(self)
        if ws is None:
            return {}  # every worker is saturated again: stay queued
        self.queued.discard(ts)
        self._send_to_worker(ts, ws, out)
        return {}

    def _transition_no_worker_processing(self, ts: TaskState, out: Outbox) -> Recs:
        where = self._place(ts)
        if where == "no-worker":
            return {}  # still nobody to run it
        if isinstance(where, str):
            return {ts.key: where}
        self.unrunnable.pop(ts, None)
        self._send_to_worker(ts, where, out)
        return {}

    def _send_to_worker(self, ts: TaskState, ws: WorkerState, out: Outbox) -> None:
        self._assign(ts, ws)
        out.to_worker(ws.address, self._compute_msg(ts, ws.node))
        if self.chain_hints and len(ts.dependents) == 1:  # a chain goes on below it
            self._hint_dependents(ts, ws, out)

    def _assign(self, ts: TaskState, ws: WorkerState) -> None:
        """``ts`` is processing on ``ws`` from now on."""
        duration = self.task_durations.get(ts.prefix, UNKNOWN_TASK_DURATION)
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing[ts] = duration
        ws.occupancy += duration
        if not ws.has_free_slot():
            self.idle.pop(ws, None)

    def _compute_msg(self, ts: TaskState, node: str, after: str = "") -> ComputeTask:
        """The ``compute-task`` of ``ts`` for a worker on ``node``: every input's wire form (but
        ``after``'s, which that worker will have made itself) and where to fetch it from."""
        assert ts.run_spec is not None
        nodes = self.nodes
        deps: dict[str, Value] = {}
        sources: dict[str, str] = {}
        # A loop, not comprehensions (each is a call of its own), and no calls for the common
        # input: an inline value, or a stored one with no copies elsewhere.
        for dts in ts.dependencies:
            if dts.key == after:
                continue
            loc = deps[dts.key] = dts.located_on(node) if dts.replicas else dts.data  # type: ignore[assignment]
            if type(loc) is StoreRef and loc.node != node and loc.node in nodes:
                sources[loc.node] = nodes[loc.node].address  # stored on another node only: where to fetch it
        return ComputeTask(ts.key, ts.run_spec, ts.priority, deps, sources, ts.resource_restrictions, after)

    def _hint_dependents(self, ts: TaskState, ws: WorkerState, out: Outbox) -> None:
        """Send ``ts``'s worker, with ``ts``, the chain below it: its one dependent if that waits
        for ``ts`` alone, that one's, and so on (``CHAIN_HINT_DEPTH`` links), each as a hint to
        run once the link above finishes there.  A chain (or a tree's branch) then goes on
        without waiting for this scheduler's answer to each link.  Where the rules would put it
        anyway: nothing but the value above is missing, nothing restricts where it runs, and
        ``decide_worker`` gives a task the worker holding its input.  Only a task's one
        dependent: the many dependents of one task must spread over the workers.  A hint is
        taken when the worker reports it started it (``task-finished``'s ``started``), and
        revoked (``cancel-compute``), with the links below it, in every other case."""
        for _ in range(CHAIN_HINT_DEPTH):
            if len(ts.dependents) != 1:
                return
            (dts,) = ts.dependents
            waiting = dts.waiting
            if (
                dts.state != "waiting" or waiting is None or len(waiting) != 1 or ts not in waiting
                or dts.run_spec is None or dts.has_restrictions() or placement.is_rootish(self, dts)
            ):  # fmt: skip
                return
            if dts.hinted is None:
                dts.hinted = ws
                out.to_worker(ws.address, self._compute_msg(dts, ws.node, after=ts.key))
            elif dts.hinted is not ws:
                return
            ts = dts

    def _revoke(self, ts: TaskState, out: Outbox) -> None:
        """Take back the hint of ``ts`` (if its worker is still there), and those of the links
        below it, which wait for it there."""
        ws, ts.hinted = ts.hinted, None
        assert ws is not None
        if ws.address in self.workers:
            out.to_worker(ws.address, CancelCompute(ts.key))
        self._revoke_dependents_hints(ts, ws, out)

    def _revoke_dependents_hints(self, ts: TaskState, ws: WorkerState, out: Outbox) -> None:
        """``ts`` will not make its value on ``ws``: the dependents hinted there will not start."""
        for dts in ts.dependents:
            if dts.hinted is ws:
                self._revoke(dts, out)

    def _exit_processing(self, ts: TaskState) -> WorkerState | None:
        """Take ``ts`` off its worker, freeing a slot."""
        ws = ts.processing_on
        ts.processing_on = None
        if ws is None:
            return None
        if self.steals:  # a steal of this run is void: the task left the victim some other way
            self.steals.pop(ts, None)
        occupancy = ws.occupancy - ws.processing.pop(ts)
        if ws.long_running:
            ws.long_running.pop(ts, None)
        # No float drift below zero, nor when it is idle.
        ws.occupancy = occupancy if occupancy > 0.0 and ws.processing else 0.0
        if ws.has_free_slot() and ws.status == "running" and ws.address in self.workers:
            self.idle[ws] = None  # _fill_free_slots gives it a queued task once the stimulus settles
        return ws

    def _place_ready(self, stimulus_id: str, out: Outbox) -> None:
        """Once a stimulus has settled, send the tasks it made ready to workers (or queue them).

        Not done inside a transition: a task sent at once could be released again by the
        same stimulus (an input of a task that errs later in it, say), and its worker told
        to compute it and to cancel it in one batch.  In the order recommended, which is
        the order they were placed in when it was done at once: highest priority first.
        """
        to_place = self._to_place
        for ts in to_place:  # what placing leads to (nothing, today) is appended, and placed too
            # Still ready: not released, erred or forgotten since, nor placed by an earlier entry.
            if (ts.state == "waiting" or ts.state == "no-worker") and not ts.waiting:
                if more := self.transition_on(ts, self._ready(ts), stimulus_id, out):
                    self.transitions(more, stimulus_id, out)
        to_place.clear()

    def in_flight_per_thread(self, prefix: str) -> float:
        """Tasks of ``prefix`` a worker thread should hold: enough to stay busy while a result
        travels back and the next task comes (one round trip at the prefix's measured
        duration), rounded up to a power of two so it changes seldom; never fewer than
        worker-saturation (Dask's 1.1, which long tasks get) nor more than the cap."""
        floor = self.worker_saturation
        duration = self.task_durations.get(prefix)
        if floor == math.inf or duration is None or not self.round_trip:
            return floor
        need = 1.0 + self.round_trip / max(duration, 1e-9)
        if need <= floor:
            return floor
        per_thread = 2.0
        while per_thread < need and per_thread < self.worker_saturation_cap:
            per_thread *= 2
        return min(per_thread, self.worker_saturation_cap)

    def _retune_slots(self) -> None:
        """Size every worker's slots for the task at the head of the queue (its prefix's
        measured duration): a change of a power of two, seldom, and O(workers) when it comes."""
        per_thread = self.in_flight_per_thread(self.queued.peek().prefix)  # type: ignore[union-attr]
        if per_thread == self.per_thread:
            return
        self.per_thread = per_thread
        for ws in self.workers.values():
            ws.slots = slots_for(ws.nthreads, per_thread)
            if ws.status == "running" and ws.has_free_slot():
                self.idle[ws] = None
            else:
                self.idle.pop(ws, None)

    def _fill_free_slots(self, stimulus_id: str, out: Outbox) -> None:
        """Once a stimulus has settled, send queued tasks to every free worker slot.

        Not done inside a transition: a task freeing a slot cannot know whether the queued
        task it would pick is about to be released by the same stimulus.
        """
        if len(self.idle) == 1:  # the common case: the worker whose task just finished
            ws = next(iter(self.idle))
            free = ws.slots - len(ws.processing) + len(ws.long_running)
        else:
            free = sum(ws.slots - len(ws.processing) + len(ws.long_running) for ws in self.idle)
        if free > 1:  # slots may be infinite: never more than are queued
            free = min(free, len(self.queued))
        # Each task moved as a stimulus moves the task it names: a recommendation would
        # find it again by key, a probe of the task table for a task in hand.
        for ts in self.queued.topk(int(free)):
            if recs := self.transition(ts, "processing", stimulus_id, out):
                self.transitions(recs, stimulus_id, out)

    def _transition_processing_memory(
        self, ts: TaskState, out: Outbox, worker: str, value: Any, nbytes: int, start: float = 0.0, stop: float = 0.0,
        transfer: float = 0.0,
    ) -> Recs:  # fmt: skip
        recs: Recs = {}
        ws = self._exit_processing(ts)
        if transfer:
            ts.group.transfer_seconds += transfer
        if stop > start:
            ts.group.compute_seconds += stop - start
            old = self.task_durations.get(ts.prefix)
            self.task_durations[ts.prefix] = stop - start if old is None else 0.5 * old + 0.5 * (stop - start)
        return self._add_to_memory(ts, ws, value, nbytes, recs, out)

    def _transition_released_memory(self, ts: TaskState, out: Outbox, value: Any, nbytes: int) -> Recs:
        return self._add_to_memory(ts, None, value, nbytes, {}, out)

    def _add_to_memory(
        self, ts: TaskState, ws: WorkerState | None, value: Value, nbytes: int, recs: Recs, out: Outbox
    ) -> Recs:
        if type(value) is StoreRef:
            if value.node in self.departed_nodes:  # its node left while the message was in flight
                ts.state = "released"
                return self._after_release(ts, recs)
            # A client on a node may put before that node's agent has registered.
            ns = self.nodes.get(value.node) or self.new_node(value.node)
            ns.stored[ts] = None
        ts.state = "memory"
        ts.data = value
        ts.nbytes = nbytes
        ts.group.nbytes += nbytes
        if ws is not None:
            if ts.who_has is None:
                ts.who_has = {}
            ts.who_has[ws] = None
            ws.has_what[ts] = None
            ws.nbytes += nbytes
        for dts in ts.dependents:
            if dts.state == "waiting":
                if dts.waiting:
                    dts.waiting.pop(ts, None)
                if not dts.waiting:
                    dts.waiting = None
                    recs[dts.key] = "processing"
        for dts in ts.dependencies:
            dts.waiting_data.pop(ts, None)
            if not dts.waiting_data:
                dts.waiting_data.clear()  # a dict emptied by pop keeps its 160-byte table; clear() frees it
            if self.is_unneeded(dts):
                recs[dts.key] = "released"
        if ts.who_wants:
            out.report(ts, KeyInMemory(ts.key, value, nbytes))
        elif not ts.waiting_data:
            recs[ts.key] = "released"
        return recs

    @staticmethod
    def is_unneeded(ts: TaskState) -> bool:
        """Nobody wants ``ts`` and no dependent waits for it: release its value, or its run."""
        return not ts.waiting_data and not ts.who_wants and ts.state not in ("released", "erred")

    def _transition_memory_released(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        self._free_value(ts, out)
        ts.state = "released"
        for dts in ts.dependents:
            if dts.state in ("processing", "no-worker", "queued"):
                recs[dts.key] = "released"  # it lost an input; it will wait for it again
            elif dts.state == "waiting":
                if dts.waiting is None:
                    dts.waiting = {}
                dts.waiting[ts] = None
                if dts.hinted is not None:  # it waits for two now: not the hint it was sent
                    self._revoke(dts, out)
        return self._after_release(ts, recs)

    def _transition_memory_forgotten(self, ts: TaskState, out: Outbox) -> Recs:
        # What memory -> released -> forgotten does, without the released leg's work on
        # dependents, which forgetting undoes: how every finished graph's tasks end.
        self._free_value(ts, out)
        return self._transition_released_forgotten(ts, out)

    def _free_value(self, ts: TaskState, out: Outbox) -> None:
        """Drop ``ts``'s value: from the workers holding it, from the node stores, and here."""
        ts.group.nbytes -= ts.nbytes
        if ts.who_has:
            for ws in ts.who_has:
                del ws.has_what[ts]
                ws.nbytes -= ts.nbytes
        ts.who_has = None
        if type(ts.data) is StoreRef:
            ns = self.nodes.get(ts.data.node)
            if ns is not None:
                ns.stored.pop(ts, None)
                out.to_worker(ns.node, FreeObjects((ts.data.name,)))
        if ts.replicas:
            for node, name in ts.replicas.items():
                ns = self.nodes.get(node)
                if ns is not None:
                    ns.replicas.pop(ts, None)
                    out.to_worker(node, FreeObjects((name,)))
        ts.replicas = None
        ts.data = None
        if self.watched and ts.key in self.watched:
            self.watched.discard(ts.key)
            self.dropped_watched.append(ts.key)

    def take_dropped(self) -> list[str]:
        """The watched keys whose values were dropped since the last call."""
        keys, self.dropped_watched = self.dropped_watched, []
        return keys

    def _after_release(self, ts: TaskState, recs: Recs) -> Recs:
        """A task just became released: compute it again if needed, forget it if nothing links to it."""
        if ts.who_wants or ts.waiting_data:
            recs[ts.key] = "waiting"
        elif not ts.dependents:
            recs[ts.key] = "forgotten"
        return recs

    def _fail(self, ts: TaskState, exception: T_exception, traceback: str, text: str, recs: Recs, out: Outbox) -> Recs:
        """``ts`` raised (or cannot run): it errs, blaming itself."""
        ts.state = "erred"
        ts.exception, ts.traceback, ts.exception_text = exception, traceback, text
        ts.exception_blame = ts
        self._erred_common(ts, recs, out)
        return recs

    def _transition_processing_erred(
        self, ts: TaskState, out: Outbox, worker: str, exception: T_exception, traceback: str, exception_text: str
    ) -> Recs:
        recs: Recs = {}
        if (ws := self._exit_processing(ts)) is not None:
            self._revoke_dependents_hints(ts, ws, out)
        ts.erred_on = ts.erred_on or set()
        ts.erred_on.add(worker)
        return self._fail(ts, exception, traceback, exception_text, recs, out)

    def _erred_common(self, ts: TaskState, recs: Recs, out: Outbox) -> None:
        """What every move into ``erred`` does: blame dependents, let go of inputs, tell clients."""
        blame = ts.exception_blame
        assert blame is not None
        for dts in ts.dependents:
            if dts.state in ("waiting", "no-worker", "released", "queued"):
                dts.exception_blame = blame
                recs[dts.key] = "erred"
        self._release_inputs(ts, recs)
        ts.waiting = None
        out.report(ts, self._erred_msg(ts))
        if not ts.who_wants and not ts.dependents:  # an error nobody will ask for, as memory is released
            recs[ts.key] = "forgotten"

    @staticmethod
    def _erred_msg(ts: TaskState) -> KeyErred:
        blame = ts.exception_blame or ts
        worker = ",".join(sorted(blame.erred_on or ()))
        exception = blame.exception or b""  # the exception itself under the local schedulers (T_exception)
        return KeyErred(ts.key, exception, blame.traceback or "", blame.exception_text, blame.key, worker)  # type: ignore[arg-type]

    def _release_inputs(self, ts: TaskState, recs: Recs) -> None:
        """``ts`` will not run now: its dependencies need not keep their values for it."""
        for dts in ts.dependencies:
            dts.waiting_data.pop(ts, None)
            if self.is_unneeded(dts):
                recs[dts.key] = "released"

    def _transition_waiting_erred(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        if ts.hinted is not None:
            self._revoke(ts, out)
        self.unrunnable.pop(ts, None)
        self.queued.discard(ts)
        ts.state = "erred"
        self._erred_common(ts, recs, out)
        return recs

    def _transition_waiting_released(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        if ts.hinted is not None:
            self._revoke(ts, out)
        self.unrunnable.pop(ts, None)
        self.queued.discard(ts)
        ts.waiting = None
        ts.state = "released"
        return self._release_or_retry(ts, recs)

    def _release_or_retry(self, ts: TaskState, recs: Recs) -> Recs:
        # Going back to waiting keeps its inputs: they would only be recomputed.
        if not (ts.who_wants or ts.waiting_data):
            self._release_inputs(ts, recs)
        return self._after_release(ts, recs)

    def _transition_processing_released(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        ws = self._exit_processing(ts)
        if ws is not None:
            self._revoke_dependents_hints(ts, ws, out)
            if ws.address in self.workers:
                out.to_worker(ws.address, CancelCompute(ts.key))
        ts.state = "released"
        return self._release_or_retry(ts, recs)

    def _transition_erred_released(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        ts.exception = ts.traceback = None
        ts.exception_text = ""
        ts.exception_blame = None
        ts.erred_on = None
        ts.state = "released"
        for dts in ts.dependents:
            if dts.state == "erred":
                recs[dts.key] = "waiting"
        return self._after_release(ts, recs)

    def _transition_released_forgotten(self, ts: TaskState, out: Outbox) -> Recs:
        recs: Recs = {}
        for dts in ts.dependencies:
            dts.dependents.pop(ts, None)
            dts.waiting_data.pop(ts, None)
            if not dts.dependents and not dts.who_wants:
                recs[dts.key] = "forgotten"
            elif self.is_unneeded(dts):
                recs[dts.key] = "released"
        for dts in ts.dependents:  # only when cancelled together with ts
            dts.dependencies.pop(ts, None)
            if dts.waiting:
                dts.waiting.pop(ts, None)
            if dts.state not in ("memory", "erred"):
                recs[dts.key] = "forgotten"
        ts.dependencies.clear()
        ts.dependents.clear()
        ts.state = "forgotten"
        ts.group.size -= 1
        del self.tasks[ts.key]
        return recs

    def _transition_erred_forgotten(self, ts: TaskState, out: Outbox) -> Recs:
        ts.state = "released"
        return self._transition_released_forgotten(ts, out)

    # ------------------------------------------------------------------ stimuli

    @handles(st.UpdateGraph)
    def stimulus_update_graph(self, s: st.UpdateGraph, out: Outbox) -> Recs:
        cs = self.clients.get(s.client) or self.new_client(s.client)
        recs: Recs = {}
        try:
            specs, in_order, deps, index = order_specs([spec for spec in s.tasks if spec.key not in self.tasks])
        except CycleError as e:
            return self._reject_graph(cs, [spec for spec in s.tasks if spec.key not in self.tasks], str(e), out)
        new: list[TaskState | None] = [None] * len(specs)
        ts: TaskState | None
        # Which new tasks the client wants, by index: each is then marked as it is made, in
        # graph order, next to the rest of its state, not found again in the task table.
        wanted, wanted_before = bytearray(len(specs)), []
        for key in s.wanted:
            if (i := index.get(key)) is None:
                wanted_before.append(key)
            else:
                wanted[i] = 1
        wants_what = cs.wants_what
        tasks, groups, start = self.tasks, self.task_groups, self._sequence
        self._sequence += len(specs)
        first = pack_priority(s.priority, start)  # rank r's priority is first + r
        for rank, i in enumerate(in_order):  # _new_task inlined: it runs once per task of every graph
            spec = specs[i]
            prefix = spec.prefix or spec.key.rsplit("-", 1)[0]
            tg = groups.get(prefix)
            if tg is None:
                tg = groups[prefix] = TaskGroup(prefix)
            tg.size += 1
            ts = tasks[spec.key] = new[i] = TaskState(spec.key, spec.run_spec, tg)
            ts.priority = first + rank
            if wanted[i]:
                ts.who_wants[cs] = None
                wants_what[ts] = None
            # The rest only where they differ from TaskState's defaults (rare).
            if spec.retries:
                ts.retries = spec.retries
            if spec.workers:
                ts.worker_restrictions = {w: None for w in spec.workers if w in self.workers or "/" in w or ":" in w}
                ts.host_restrictions = {h: None for h in spec.workers if h not in ts.worker_restrictions} or None
            if spec.resources:
                ts.resource_restrictions = dict(spec.resources)
            if spec.allow_other_workers:
                ts.loose_restrictions = spec.allow_other_workers
        lookup_errors: list[tuple[TaskState, str]] = []
        # Lowest priority first: dependents made ready together are then recommended in this
        # order, and popped last-in first-out, highest priority first.
        for i in reversed(in_order):
            ts = new[i]
            assert ts is not None
            if deps is not None and deps[i]:
                group_deps = ts.group.dependencies
                # In the graph: its task by index (no lookup in the million-key table); else known before.
                for dep, j in zip(specs[i].dependencies, deps[i], strict=True):
                    dts = tasks.get(dep) if j is None else new[j]
                    if dts is None:
                        lookup_errors.append((ts, dep))
                        continue
                    ts.dependencies[dts] = None
                    dts.dependents[ts] = None
                    dts.waiting_data[ts] = None  # it will run: this value must be there for it
                    group_deps.add(dts.group)
        for key in wanted_before:  # tasks known before this graph
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.who_wants[cs] = None
            cs.wants_what[ts] = None
            if ts.state == "memory":
                out.to_client(cs.client_key, KeyInMemory(key, ts.data, ts.nbytes))  # type: ignore[arg-type]
            elif ts.state == "erred":
                out.to_client(cs.client_key, self._erred_msg(ts))
            elif ts.state == "released":
                recs[key] = "waiting"
        for ts, dep in lookup_errors:
            text = (
                f"task {ts.key!r} depends on {dep!r}, which the scheduler does not know (released or never submitted)"
            )
            self._fail(ts, pickle_error(LookupError(text)), "", text, recs, out)
            ts.group.entered["erred"] += 1  # released -> erred, outside a transition
            ts.group.left["released"] += 1
        self.transitions(recs, s.stimulus_id, out)
        # Then each new task to waiting, highest priority first, moved as a stimulus moves the
        # task it names: as recommendations, a million keys would go through the recs table
        # and each be looked up again in the task table.
        for i in in_order:
            ts = new[i]
            assert ts is not None
            if ts.state == "released" and (more := self.transition_on(ts, "waiting", s.stimulus_id, out)):
                self.transitions(more, s.stimulus_id, out)
        return {}

    def _reject_graph(self, cs: ClientState, specs: list[st.TaskSpec], reason: str, out: Outbox) -> Recs:
        """A graph that can never run: tell the client, keep nothing of it."""
        exception = pickle_error(ValueError(reason))
        for spec in specs:
            out.to_client(cs.client_key, KeyErred(spec.key, exception, "", reason, spec.key))
        return {}

    def _new_task(self, key: str, run_spec: T_runspec | None, prefix: str) -> TaskState:
        tg = self.task_groups.get(prefix)
        if tg is None:
            tg = self.task_groups[prefix] = TaskGroup(prefix)
        tg.size += 1
        ts = self.tasks[key] = TaskState(key, run_spec, tg)
        return ts

    @handles(st.UpdateData)
    def stimulus_update_data(self, s: st.UpdateData, out: Outbox) -> Recs:
        cs = self.clients.get(s.client) or self.new_client(s.client)
        ts = self.tasks.get(s.key)
        if ts is None:
            ts = self._new_task(s.key, None, "put")
        ts.who_wants[cs] = None
        cs.wants_what[ts] = None
        if ts.state != "released":
            return {}
        return self.transition(ts, "memory", s.stimulus_id, out, s.value, s.nbytes)

    def is_current(self, key: str, worker: str) -> TaskState | None:
        """The task if ``worker`` is running it now; None for a stale or duplicate report."""
        ts = self.tasks.get(key)
        if ts is None or ts.state != "processing" or ts.processing_on is None or ts.processing_on.address != worker:
            return None
        return ts

    @handles(st.TaskFinished)
    def stimulus_task_finished(self, s: st.TaskFinished, out: Outbox) -> Recs:
        ts = self.is_current(s.key, s.worker)
        if ts is None:
            # A stale result (the task was released, or rescheduled): drop its stored copy.
            # Each attempt writes under a name of its own, so this never hits a live copy.
            live = self.tasks.get(s.key)
            value = s.value
            if type(value) is StoreRef and value.node in self.nodes and (live is None or live.data != value):
                out.to_worker(value.node, FreeObjects((value.name,)))
            return {}
        ws = ts.processing_on
        recs = self.transition(
            ts, "memory", s.stimulus_id, out, s.worker, s.value, s.nbytes, s.start, s.stop, s.transfer
        )
        for key in s.started:  # dependents its worker started with the value, as hinted
            dts = self.tasks.get(key)
            if dts is not None and dts.hinted is ws and dts.state == "waiting" and not dts.waiting:
                recs.pop(key, None)
                recs.update(self.transition(dts, "processing", s.stimulus_id, out, ws, True))
        return recs

    @handles(st.TaskErred)
    def stimulus_task_erred(self, s: st.TaskErred, out: Outbox) -> Recs:
        ts = self.is_current(s.key, s.worker)
        if ts is None:
            return {}
        if ts.retries > 0:
            ts.retries -= 1
            recs = self.transition(ts, "released", s.stimulus_id, out)
            recs[ts.key] = "waiting"
            return recs
        return self.transition(ts, "erred", s.stimulus_id, out, s.worker, s.exception, s.traceback, s.exception_text)

    def new_client(self, client: str) -> ClientState:
        cs = self.clients[client] = ClientState(client)
        return cs

    def new_node(self, node: str) -> NodeState:
        ns = self.nodes[node] = NodeState(node)
        return ns

    # ------------------------------------------------------------------ queries

    def story(self, *keys: str) -> list[tuple]:
        """Every logged transition that moved one of ``keys`` or recommended something for it."""
        wanted = set(keys)
        return [t for t in self.transition_log if t[0] in wanted or wanted.intersection(t[3])]

    def workers_to_close(self, memory_factor: float = 2.0, n: int | None = None) -> list[str]:
        return placement.workers_to_close(self, memory_factor, n)

    def validate_state(self) -> None:
        validation.validate_state(self)


S = SchedulerState
# Pairs that make the same move share one function, named by the first of them (not an alias
# per pair: a class attribute bound to another method is no method once compiled).
_TRANSITIONS: dict[tuple[str, str], Callable[..., Recs]] = {
    ("released", "waiting"): S._transition_released_waiting,
    ("released", "memory"): S._transition_released_memory,
    ("released", "erred"): S._transition_waiting_erred,
    ("released", "forgotten"): S._transition_released_forgotten,
    ("waiting", "processing"): S._transition_waiting_processing,
    ("waiting", "queued"): S._transition_waiting_queued,
    ("waiting", "no-worker"): S._transition_waiting_no_worker,
    ("waiting", "released"): S._transition_waiting_released,
    ("waiting", "erred"): S._transition_waiting_erred,
    ("queued", "processing"): S._transition_queued_processing,
    ("queued", "released"): S._transition_waiting_released,
    ("queued", "erred"): S._transition_waiting_erred,
    ("no-worker", "processing"): S._transition_no_worker_processing,
    ("no-worker", "queued"): S._transition_waiting_queued,
    ("no-worker", "released"): S._transition_waiting_released,
    ("no-worker", "erred"): S._transition_waiting_erred,
    ("processing", "memory"): S._transition_processing_memory,
    ("processing", "erred"): S._transition_processing_erred,
    ("processing", "released"): S._transition_processing_released,
    ("memory", "released"): S._transition_memory_released,
    ("memory", "forgotten"): S._transition_memory_forgotten,
    ("erred", "released"): S._transition_erred_released,
    ("erred", "forgotten"): S._transition_erred_forgotten,
}
del S


def _via_released(first: Callable[..., Recs], then: Callable[..., Recs]) -> Callable[..., Recs]:
    def transition(self: SchedulerState, ts: TaskState, out: Outbox, *args: Any) -> Recs:
        recs = first(self, ts, out)
        recs.pop(ts.key, None)  # it goes on to the final state itself
        recs.update(then(self, ts, out, *args))
        return recs

    return transition


# Every other pair goes through "released" when both legs exist (e.g. processing -> forgotten).
for (_start, _mid), _first in list(_TRANSITIONS.items()):
    for (_mid2, _finish), _then in list(_TRANSITIONS.items()):
        if _mid == _mid2 == "released" and _start != _finish and (_start, _finish) not in _TRANSITIONS:
            _TRANSITIONS[_start, _finish] = _via_released(_first, _then)
