"""Property-based test of the scheduler's state machine (``SchedulerState``).

A hypothesis ``RuleBasedStateMachine`` throws random sequences of stimuli at a
``SchedulerState(validate=True)``: clients come and go; node agents and their workers
(some offering a GPU) join and leave (node ids and worker addresses are never reused,
except a worker re-registering), pause, resume and start retiring; clients submit small random DAGs (depending on new or
already known keys, sometimes restricted to a worker, a host or a GPU, sometimes cyclic),
put values, release and cancel keys; workers report tasks finished (inline or stored
values), erred, or unable to read a stored input, and copies of stored inputs fetched to
their node; the active memory manager drops the copies it finds unneeded; and workers
sometimes send stale reports that must be ignored.

After every stimulus it checks:

* ``validate_state()`` (also run inside ``handle`` since ``validate=True``) and more
  cross-checks of the bookkeeping (the ``@invariant`` methods): links between tasks,
  workers, nodes and clients point at live objects; no task processes on a dead worker;
  ``waiting``/``waiting_data`` match the states of dependencies/dependents; no task is
  kept that nobody wants or needs, and none wanted is left ``released``; ``no-worker``
  only while no live worker may run the task; ``queued`` only while workers exist; each
  client was told the outcome of the keys it wants; every stored object the scheduler was
  told of is the value (or a copy of the value) of a task in memory, or was freed;
* the messages returned (``handle``): each goes to a live worker, node or client; every
  ``compute-task`` goes to a worker allowed to run the task and carries exactly the task's
  submitted dependencies, each with a value, and is not cancelled later in the same batch;
  a stale report changes nothing; a value in memory is computed again only if it was lost.
* work stealing: the policy's moves (and random ones, often stale) are requested; victims
  answer in any order, finishing, erring or seceding the task first at random (then they
  answer "gone" or "executing", as a real one must).  A task moves only on a "queued"
  answer to the current request, when the victim holds no later run of it; a victim that
  dropped a task is never left as the one running it (the task would hang).

A ``drain`` rule (also run at teardown, after adding a worker if none is alive) finishes
every processing task until none is left, then checks that every wanted key ended in
``memory`` or ``erred``: nothing may be stuck while workers exist, except behind a task
that no live worker is allowed to run.

The tests at the end are minimal stimulus sequences for bugs this machine found: the
``test_regression_*`` ones are fixed; any ``test_bug_*`` one is not yet (strict xfail).
While a ``KNOWN_BUG_*`` switch below is True, the machine steers around that bug so that it
keeps finding new ones; set it to False to see the machine find the bug again.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Iterable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as hst
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runtime.comm.messages import (
    CancelCompute,
    CancelledKeys,
    ComputeTask,
    FreeObjects,
    KeyErred,
    KeyInMemory,
    LostKeys,
    StealRequest,
    StoreRef,
)
from runtime.scheduler import amm, stealing
from runtime.scheduler import stimuli as st
from runtime.scheduler.entities import pack_priority
from runtime.scheduler.state import ALL_TASK_STATES, HeapSet, Msgs, SchedulerState, TaskGroup, TaskState, WorkerState

CLIENTS = ("c0", "c1", "c2")
RUN_SPEC = (b"f", b"a")
ERROR = pickle.dumps(ValueError("x"))
GPU = {"GPU": 1.0}
#: states a task may rest in between stimuli
RESTING = ALL_TASK_STATES - {"forgotten"}
#: states of a task that still has to run
PENDING = {"waiting", "no-worker", "queued", "processing"}

#: Bug 8: a stimulus leaves a stale "waiting" recommendation for a task that the same
#: stimulus made unneeded (its only dependent erred meanwhile); the task runs anyway.  Still
#: seen when a put value is lost (released, or its node left) and needed again, and when a
#: node leaves and one of its workers' tasks errs with KilledWorker (fixed for one worker's
#: death).  Steered around by putting every value from PUT_CLIENT, which never releases
#: anything, and inline only; and by never reaching KilledWorker (a huge allowed_failures).
KNOWN_BUG_STALE_WAITING = False
PUT_CLIENT = "c-put"
#: Bug 9: a worker that cannot read its node's copy of a stored input (a replica) reports
#: that copy missing; the scheduler takes it for a stale report and sends the same lost copy
#: again, forever.  Steered around by reporting the original value instead.
KNOWN_BUG_LOST_REPLICA = False
#: Bug 11: when a worker reports a stored value missing, the value's copies on other nodes
#: stay listed (and in their stores): once recomputed, dependents on those nodes are sent
#: the stale copy of the old value.  Steered around by reporting missing only values with
#: no copies.
KNOWN_BUG_STALE_REPLICA = False


def host_of(node: str) -> str:
    return f"host-{node}"


def node_of(worker: str) -> str:
    """Worker addresses here are "<node>/w-<n>"."""
    return worker.split("/")[0]


def is_stored(value: object) -> bool:
    """A stored value's wire form is a StoreRef(node, nbytes, name); an inline one is bytes."""
    return type(value) is StoreRef


def keys_of(tasks: Iterable[TaskState]) -> set[str]:
    return {ts.key for ts in tasks}


def sent_and_cancelled(worker_msgs: Msgs) -> list[str]:
    """Keys a batch tells a worker to compute and then, later in the same batch, to cancel."""
    keys = []
    for msgs in worker_msgs.values():
        for i, msg in enumerate(msgs):
            if type(msg) is ComputeTask and CancelCompute(msg.key) in msgs[i:]:
                keys.append(msg.key)
    return keys


def may_run(spec: st.TaskSpec, ws: WorkerState) -> bool:
    """Whether ``spec``'s worker/host and resource restrictions allow ``ws`` (loose ones aside)."""
    if spec.workers and ws.address not in spec.workers and ws.host not in spec.workers:
        return False
    return all(ws.resources.get(name, 0) >= amount for name, amount in (spec.resources or {}).items())


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # allowed_failures=1: two deaths of a task's workers make it err (KilledWorker), reachable in 40 steps
        self.state = SchedulerState(validate=True, allowed_failures=10**9 if KNOWN_BUG_STALE_WAITING else 1)
        self._ids = itertools.count()
        #: the spec each task key was created with (puts have none)
        self.specs: dict[str, st.TaskSpec] = {}
        #: every worker address and node id ever used, live or not (ids are never reused)
        self.all_workers: list[str] = []
        self.all_nodes: list[str] = []
        #: the inputs of each task's latest compute-task, as its worker got them
        self.sent_deps: dict[str, dict[str, bytes | StoreRef]] = {}
        #: hints sent (compute-task with ``after``): key -> (the task it waits for, its other inputs)
        self.hints: dict[str, tuple[str, dict[str, bytes | StoreRef]]] = {}
        #: stored objects known to exist: (node, name); each must be referenced or freed
        self.objects: set[tuple[str, str]] = set()
        #: what each client was last told of each key it wants: "memory" or "erred"
        self.told: dict[str, dict[str, str]] = {}
        #: set when ``handle`` raised: the state may be half-changed, so teardown skips the drain
        self.broken = False
        #: steal requests not yet answered, as the victims see them: (key, victim, request) ->
        #: {"ran": it finished, erred or seceded there since; "resent": a later compute-task
        #: of it went to the victim (a new run, which the victim's answer does not concern)}
        self.steal_requests: dict[tuple[str, str, str], dict[str, bool]] = {}
        #: (worker, key): runs a victim dropped on a "queued" answer (and no later compute-task)
        self.dropped: set[tuple[str, str]] = set()
        #: a steal's answer is being handled: a loose task may go to a thief it does not name
        self.answering_steal = False

    # ------------------------------------------------------------------ helpers

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def sid(self) -> str:
        return self.fresh("stim")

    def handle(self, stimulus: st.Stimulus) -> tuple[Msgs, Msgs]:
        """Apply one stimulus and check the messages it produced."""
        in_memory = {ts: ts.data for ts in self.state.tasks.values() if ts.state == "memory"}
        try:
            client_msgs, worker_msgs = self.state.handle(stimulus)
        except BaseException:
            self.broken = True
            raise
        if isinstance(stimulus, (st.TaskFinished, st.TaskErred, st.LongRunning)):  # the run started there
            for (key, victim, _), seen in self.steal_requests.items():
                if key == stimulus.key and victim == stimulus.worker:
                    seen["ran"] = True
        self.track_objects(stimulus, worker_msgs)
        self.check_client_msgs(client_msgs)
        self.check_worker_msgs(worker_msgs)
        self.check_nothing_recomputed_needlessly(stimulus, in_memory)
        return client_msgs, worker_msgs

    def track_objects(self, stimulus: st.Stimulus, worker_msgs: Msgs) -> None:
        """Note the stored objects a stimulus reports made (or lost), and those freed."""
        if isinstance(stimulus, (st.TaskFinished, st.UpdateData)) and is_stored(stimulus.value):
            self.objects.add((stimulus.value.node, stimulus.value.name))
        elif isinstance(stimulus, st.AddReplica):
            self.objects.add((stimulus.node, stimulus.name))
        elif isinstance(stimulus, st.MissingData) and is_stored(stimulus.value):
            self.objects.discard((stimulus.value.node, stimulus.value.name))
        for node, msgs in worker_msgs.items():
            for msg in msgs:
                if type(msg) is FreeObjects:
                    self.objects -= {(node, name) for name in msg.names}
        self.objects = {(node, name) for node, name in self.objects if node in self.state.nodes}

    def check_client_msgs(self, client_msgs: Msgs) -> None:
        """Results go to connected clients, with a value or a pickled exception; noted in ``told``."""
        for client, msgs in client_msgs.items():
            cs = self.state.clients.get(client)
            assert cs is not None, f"message to unknown client {client!r}: {msgs}"
            told = self.told.setdefault(client, {})
            for msg in msgs:
                if type(msg) is KeyInMemory:
                    assert isinstance(msg.value, bytes) or is_stored(msg.value), msg
                    told[msg.key] = "memory"
                elif type(msg) is KeyErred:
                    assert isinstance(msg.exception, bytes), msg
                    told[msg.key] = "erred"
                elif type(msg) is LostKeys:  # their node left: being recomputed (or erring)
                    for key in msg.keys:
                        assert key in keys_of(cs.wants_what), f"{client} told {key!r} is lost, does not want it"
                        told.pop(key, None)
                else:
                    assert type(msg) is CancelledKeys, msg
                    for key in msg.keys:
                        assert key not in keys_of(cs.wants_what), f"{client} told {key!r} is cancelled, still wants it"
                        told.pop(key, None)

    def check_worker_msgs(self, worker_msgs: Msgs) -> None:
        """Orders go to live workers (compute, cancel) or nodes (free stored objects); no
        worker is told to compute a task and to cancel it in the same batch."""
        s = self.state
        assert not sent_and_cancelled(worker_msgs), f"told to compute, then cancel: {worker_msgs}"
        for dest, msgs in worker_msgs.items():
            assert dest in s.workers or dest in s.nodes, f"message to dead worker or node {dest!r}: {msgs}"
            for msg in msgs:
                if type(msg) is ComputeTask:
                    self.check_compute_task(dest, msg)
                elif type(msg) is FreeObjects:
                    assert dest in s.nodes, f"free-objects to {dest!r}, not a node"
                elif type(msg) is StealRequest:
                    ts = s.tasks.get(msg.key)
                    assert ts is not None and ts.processing_on is s.workers.get(dest), f"steal-request to {dest}: {ts}"
                    assert ts not in ts.processing_on.long_running, f"{msg.key} is long-running: never stolen"
                    self.steal_requests[msg.key, dest, msg.request] = {"ran": False, "resent": False}
                else:
                    assert type(msg) is CancelCompute and dest in s.workers, (dest, msg)

    def check_compute_task(self, dest: str, msg: ComputeTask) -> None:
        s = self.state
        self.dropped.discard((dest, msg.key))
        for (key, victim, _), seen in self.steal_requests.items():
            if key == msg.key and victim == dest:
                seen["resent"] = True
        ws = s.workers.get(dest)
        assert ws is not None, f"compute-task to {dest!r}, not a live worker"
        assert ws.status == "running", f"compute-task to {dest!r}, which is {ws.status}"
        spec = self.specs[msg.key]
        assert msg.run_spec == RUN_SPEC, msg
        if msg.after:  # a hint: every input but the one it waits for, which runs on that worker
            assert msg.after in spec.dependencies and not spec.workers and not spec.resources, msg
            assert set(msg.deps) == set(spec.dependencies) - {msg.after}, f"{spec.key}: hint's deps {set(msg.deps)}"
            after = self.state.tasks[msg.after]  # made there: processing there, or a hint there itself
            assert after.processing_on is ws or after.hinted is ws, (msg, after.state)
            self.hints[msg.key] = (msg.after, msg.deps)
            return
        assert set(msg.deps) == set(spec.dependencies), f"{spec.key}: deps {set(msg.deps)} != submitted"
        sources = msg.sources
        for dep, value in msg.deps.items():
            assert isinstance(value, bytes) or is_stored(value), (spec.key, dep, value)
            if is_stored(value) and value.node != ws.node:  # to fetch from the node holding it
                assert value.node in s.nodes and sources.get(value.node) == s.nodes[value.node].address, msg
        self.sent_deps[spec.key] = msg.deps
        assert msg.resources == spec.resources, msg
        loose = spec.allow_other_workers and (self.answering_steal or not self.valid_workers(spec))
        assert may_run(spec, ws) or loose, f"{spec.key} sent to {dest}, which its restrictions exclude"

    def check_nothing_recomputed_needlessly(self, stimulus: st.Stimulus, in_memory: dict[TaskState, object]) -> None:
        """A value in memory is computed again only when it was lost (its node left, or a worker could not read it)."""
        for ts, data in in_memory.items():
            if ts.state not in PENDING or self.state.tasks.get(ts.key) is not ts:
                continue
            node_left = isinstance(stimulus, st.RemoveNode) and is_stored(data) and data.node == stimulus.node
            unreadable = isinstance(stimulus, st.MissingData) and stimulus.dependency == ts.key
            assert node_left or unreadable, f"{ts.key} was in memory and is {ts.state} again after {stimulus}"

    def valid_workers(self, spec: st.TaskSpec) -> list[WorkerState]:
        return [ws for ws in self.running_workers() if may_run(spec, ws)]

    def running_workers(self) -> list[WorkerState]:
        """Live workers that take new tasks (not paused, not retiring)."""
        return [ws for ws in self.state.workers.values() if ws.status == "running"]

    def runnable(self, ts: TaskState) -> bool:
        """Whether some live, running worker may run ``ts`` now."""
        spec = self.specs.get(ts.key)
        if spec is None or spec.allow_other_workers:
            return bool(self.running_workers())
        return bool(self.valid_workers(spec))

    def blocked(self, ts: TaskState) -> bool:
        """``ts`` cannot run: no live worker may run it, or it waits for such a task."""
        if ts.state == "no-worker":
            return not self.runnable(ts)
        return ts.state == "waiting" and any(self.blocked(dts) for dts in ts.waiting or ())

    def processing_keys(self) -> list[str]:
        return sorted(k for k, ts in self.state.tasks.items() if ts.state == "processing")

    def has_processing(self) -> bool:
        return any(ts.state == "processing" for ts in self.state.tasks.values())

    def has_wanted(self) -> bool:
        """Some client that may release keys (not PUT_CLIENT) wants some."""
        return any(cs.wants_what for c, cs in self.state.clients.items() if c in CLIENTS)

    def stored_inputs(self) -> list[tuple[str, str]]:
        """(task, dependency) for each processing task that was sent a stored value."""
        return sorted(
            (ts.key, dts.key)
            for ts in self.state.tasks.values()
            if ts.state == "processing"
            for dts in ts.dependencies
            if is_stored(dts.data) and is_stored(self.sent_deps[ts.key][dts.key])
        )

    def lost_inputs(self) -> list[tuple[str, str]]:
        """The stored inputs ``missing_data`` may report lost."""
        s = self.state
        return [(k, d) for k, d in self.stored_inputs() if not (KNOWN_BUG_STALE_REPLICA and s.tasks[d].replicas)]

    def remote_inputs(self) -> list[tuple[str, str]]:
        """(task, dependency) for each processing task sent a stored value on another node."""
        return [
            (key, dep)
            for key, dep in self.stored_inputs()
            if self.sent_deps[key][dep].node != self.state.tasks[key].processing_on.node  # type: ignore[union-attr]
        ]

    def finish(
        self, key: str, value: bytes | StoreRef, nbytes: int, start: float = 0.0, stop: float = 0.0,
        take_hints: bool = False,
    ) -> None:  # fmt: skip
        """``key``'s worker reports it finished; with ``take_hints`` it started, with its value,
        the dependents hinted to it that it still holds (neither revoked nor superseded)."""
        ts = self.state.tasks[key]
        ws = ts.processing_on
        assert ws is not None
        started = tuple(d.key for d in ts.dependents if take_hints and d.hinted is ws) if take_hints else ()
        self.handle(st.TaskFinished(self.sid(), key, ws.address, value, nbytes, start, stop, started))
        for dep in started:  # running there now, on the hint's inputs and this value
            dts = self.state.tasks.get(dep)
            assert dts is not None and dts.state == "processing" and dts.processing_on is ws, (dep, dts)
            self.sent_deps[dep] = {**self.hints[dep][1], key: value}

    def result_value(self, key: str, stored: bool, nbytes: int) -> bytes | StoreRef:
        """What the worker running ``key`` would report: inline bytes or a ref into its node's store."""
        ws = self.state.tasks[key].processing_on
        assert ws is not None
        return StoreRef(ws.node, nbytes, self.fresh("obj")) if stored else b"x"

    def draw_client_keys(self, data: hst.DataObject) -> tuple[str, list[str]]:
        """A client that wants keys, and some of them."""
        clients = sorted(c for c, cs in self.state.clients.items() if cs.wants_what and c in CLIENTS)
        client = data.draw(hst.sampled_from(clients), label="client")
        wanted = sorted(keys_of(self.state.clients[client].wants_what))
        return client, data.draw(hst.lists(hst.sampled_from(wanted), min_size=1, unique=True), label="keys")

    # ------------------------------------------------------------------ clients

    @rule(client=hst.sampled_from(CLIENTS))
    def add_client(self, client: str) -> None:
        self.handle(st.AddClient(self.sid(), client))

    @rule(client=hst.sampled_from(CLIENTS))
    def remove_client(self, client: str) -> None:
        self.handle(st.RemoveClient(self.sid(), client))
        assert client not in self.state.clients
        self.told.pop(client, None)

    # ------------------------------------------------------------------ nodes and workers

    def new_node(self) -> str:
        node = self.fresh("n")
        self.all_nodes.append(node)
        self.handle(st.AddNode(self.sid(), node, f"tcp://{node}:1"))
        return node

    @rule()
    def add_node(self) -> None:
        self.new_node()

    @rule(data=hst.data(), nthreads=hst.integers(1, 2), gpu=hst.booleans())
    def add_worker(self, data: hst.DataObject, nthreads: int, gpu: bool) -> None:
        """A worker on a live node, or on a new one (whose agent registers first)."""
        nodes = sorted(self.state.nodes)
        node = data.draw(hst.sampled_from(nodes), label="node") if nodes else self.new_node()
        self.start_worker(node, nthreads, gpu)

    def start_worker(self, node: str, nthreads: int = 1, gpu: bool = False, address: str = "") -> None:
        address = address or f"{node}/{self.fresh('w')}"
        if address not in self.all_workers:
            self.all_workers.append(address)
        resources = dict(GPU) if gpu else {}
        self.handle(st.AddWorker(self.sid(), address, node, nthreads, host=host_of(node), resources=resources))

    @precondition(lambda self: any(node_of(w) in self.state.nodes for w in self.all_workers))
    @rule(data=hst.data())
    def add_worker_again(self, data: hst.DataObject) -> None:
        """A duplicate registration (ignored), or a worker coming back at its old address."""
        candidates = [w for w in self.all_workers if node_of(w) in self.state.nodes]
        address = data.draw(hst.sampled_from(candidates), label="worker")
        ws = self.state.workers.get(address)
        self.start_worker(node_of(address), address=address)
        if ws is not None:
            assert self.state.workers[address] is ws

    @precondition(lambda self: self.all_workers)
    @rule(data=hst.data())
    def remove_worker(self, data: hst.DataObject) -> None:
        address = data.draw(hst.sampled_from(self.all_workers), label="worker")  # maybe gone already
        self.handle(st.RemoveWorker(self.sid(), address, "killed"))
        assert address not in self.state.workers

    @precondition(lambda self: self.state.workers)
    @rule(data=hst.data(), status=hst.sampled_from(["running", "paused", "closing_gracefully"]), by_us=hst.booleans())
    def worker_status(self, data: hst.DataObject, status: str, by_us: bool) -> None:
        """A worker pauses or resumes (short of memory), or the scheduler retires it or changes its mind."""
        address = data.draw(hst.sampled_from(sorted(self.state.workers)), label="worker")
        before = self.state.workers[address].status
        self.handle(st.WorkerStatusChange(self.sid(), address, status, by_scheduler=by_us))
        after = self.state.workers[address].status
        assert after == (before if before == "closing_gracefully" and not by_us else status)

    @rule()
    def reduce_replicas(self) -> None:
        """The active memory manager drops the copies nobody needs; a stale suggestion changes nothing."""
        drops = amm.reduce_replicas(self.state)
        self.handle(st.DropReplicas(self.sid(), tuple(drops)))
        for key, node, _ in drops:
            assert node not in (self.state.tasks[key].replicas or {}), (key, node)
        _, worker_msgs = self.handle(st.DropReplicas(self.sid(), tuple(drops)))
        assert not worker_msgs

    @precondition(lambda self: self.all_nodes)
    @rule(data=hst.data())
    def remove_node(self, data: hst.DataObject) -> None:
        node = data.draw(hst.sampled_from(self.all_nodes), label="node")  # maybe gone already
        self.handle(st.RemoveNode(self.sid(), node))
        assert node not in self.state.nodes
        assert all(ws.node != node for ws in self.state.workers.values())

    # ------------------------------------------------------------------ graphs and data

    def new_key(self, data: hst.DataObject, taken: set[str]) -> str:
        """A fresh key, or (as clients with deterministic keys do) one the scheduler forgot."""
        forgotten = sorted(k for k in self.specs if k not in self.state.tasks and k not in taken)
        if forgotten and data.draw(hst.booleans(), label="reuse a forgotten key"):
            return data.draw(hst.sampled_from(forgotten), label="key")
        return self.fresh("f")

    def draw_spec(self, data: hst.DataObject, key: str, candidates: list[str]) -> st.TaskSpec:
        deps = (
            data.draw(hst.lists(hst.sampled_from(candidates), max_size=3, unique=True), label="deps")
            if candidates
            else []
        )
        retries = data.draw(hst.integers(0, 1), label="retries")
        # Tasks with no dependencies form one large group: root-ish, they may wait in "queued".
        prefix = "f" if deps else "root"
        restriction = data.draw(hst.sampled_from(["none", "none", "none", "gpu", "worker", "host"]), label="restrict")
        workers: tuple[str, ...] = ()
        if restriction == "worker" and self.all_workers:
            workers = (data.draw(hst.sampled_from(self.all_workers), label="worker"),)
        elif restriction == "host" and self.all_nodes:
            workers = (host_of(data.draw(hst.sampled_from(self.all_nodes), label="node")),)
        resources = dict(GPU) if restriction == "gpu" else None
        loose = restriction != "none" and data.draw(hst.booleans(), label="allow other workers")
        return st.TaskSpec(key, RUN_SPEC, tuple(deps), retries, prefix, workers, resources, loose)

    @rule(data=hst.data(), client=hst.sampled_from(CLIENTS), size=hst.integers(1, 5), priority=hst.integers(0, 2))
    def update_graph(self, data: hst.DataObject, client: str, size: int, priority: int) -> None:
        s = self.state
        known = sorted(s.tasks)
        specs: list[st.TaskSpec] = []
        for _ in range(size):
            key = self.new_key(data, {spec.key for spec in specs})
            specs.append(self.draw_spec(data, key, known + [spec.key for spec in specs]))
        new_keys = [spec.key for spec in specs]
        # A client wants the outputs of what it submits (a culled graph): every sink of
        # the batch, and maybe some inner keys and keys the scheduler already has.
        inner = {dep for spec in specs for dep in spec.dependencies}
        wanted = [k for k in new_keys if k not in inner]
        wanted += data.draw(hst.lists(hst.sampled_from(new_keys), max_size=2, unique=True), label="inner")
        if known:
            wanted += data.draw(hst.lists(hst.sampled_from(known), max_size=2, unique=True), label="old")
        # Resubmitting a task the scheduler already has (same key, same spec) changes nothing.
        tasks_known = [k for k in known if k in self.specs]
        again = data.draw(hst.lists(hst.sampled_from(tasks_known), max_size=1), label="again") if tasks_known else []
        for spec in specs:
            self.specs[spec.key] = spec
        self.handle(
            st.UpdateGraph(
                self.sid(), client, (*[self.specs[k] for k in again], *specs), tuple(dict.fromkeys(wanted)), priority
            )
        )
        cs = s.clients[client]
        assert all(s.tasks[k] in cs.wants_what for k in wanted), "wanted keys not recorded"

    @rule(client=hst.sampled_from(CLIENTS), size=hst.integers(2, 3))
    def update_graph_with_a_cycle(self, client: str, size: int) -> None:
        """A graph that can never run is refused: each of its keys errs, none is kept."""
        keys = [self.fresh("cycle") for _ in range(size)]
        specs = tuple(st.TaskSpec(k, RUN_SPEC, (keys[(i + 1) % size],), 0, "f") for i, k in enumerate(keys))
        client_msgs, worker_msgs = self.handle(st.UpdateGraph(self.sid(), client, specs, (keys[0],)))
        assert not set(keys) & set(self.state.tasks) and not worker_msgs
        assert {m.key for m in client_msgs.get(client, []) if type(m) is KeyErred} == set(keys)

    @rule(client=hst.sampled_from(CLIENTS), stored=hst.booleans(), nbytes=hst.integers(1, 1000), data=hst.data())
    def update_data(self, client: str, stored: bool, nbytes: int, data: hst.DataObject) -> None:
        s = self.state
        if KNOWN_BUG_STALE_WAITING:
            client = PUT_CLIENT
        existing = sorted(k for k, ts in s.tasks.items() if ts.state != "erred")  # not a failed future's key
        if existing and data.draw(hst.booleans(), label="to an existing key"):
            key = data.draw(hst.sampled_from(existing), label="key")
        else:
            key = self.fresh("put")
        before = s.tasks[key].state if key in s.tasks else "released"
        # A stored value for a key the scheduler ignores would leak in its store; clients put
        # under fresh keys, so only inline values go to existing keys here.
        if stored and s.nodes and key not in s.tasks and not KNOWN_BUG_STALE_WAITING:
            node = data.draw(hst.sampled_from(sorted(s.nodes)), label="node")
            value: bytes | StoreRef = StoreRef(node, nbytes, self.fresh("obj"))
        else:
            value = b"x"
        self.handle(st.UpdateData(self.sid(), client, key, value, nbytes))
        ts = s.tasks[key]
        assert ts in s.clients[client].wants_what
        self.told.setdefault(client, {})[key] = "memory"  # the client's own future is done at once
        if before == "released":
            assert ts.state == "memory" and ts.data == value, ts
        else:  # a value for a key being computed or already known is ignored
            assert ts.state == before, ts

    @precondition(lambda self: self.has_wanted())
    @rule(data=hst.data())
    def client_releases_keys(self, data: hst.DataObject) -> None:
        client, keys = self.draw_client_keys(data)
        if data.draw(hst.booleans(), label="with a key it does not want"):  # must be ignored
            keys.append(data.draw(hst.sampled_from([self.fresh("ghost"), *sorted(self.state.tasks)]), label="other"))
        others = {c: keys_of(cs.wants_what) for c, cs in self.state.clients.items() if c != client}
        self.handle(st.ClientReleasesKeys(self.sid(), client, tuple(keys)))
        assert not keys_of(self.state.clients[client].wants_what) & set(keys)
        assert others == {c: keys_of(cs.wants_what) for c, cs in self.state.clients.items() if c != client}
        for key in keys:
            self.told.get(client, {}).pop(key, None)

    @precondition(lambda self: self.has_wanted())
    @rule(data=hst.data(), force=hst.booleans())
    def cancel(self, data: hst.DataObject, force: bool) -> None:
        client, keys = self.draw_client_keys(data)
        s = self.state
        shared = {k for k in keys if len(s.tasks[k].who_wants) > 1}
        self.handle(st.Cancel(self.sid(), client, tuple(keys), force))
        for key in keys:
            ts = s.tasks.get(key)
            if ts is None:
                continue
            if force:
                assert not ts.who_wants, f"{key} cancelled with force but still wanted"
            elif key not in shared:
                assert client not in {cs.client_key for cs in ts.who_wants}, f"{key} cancelled but still wanted"

    # ------------------------------------------------------------------ worker reports

    @precondition(lambda self: self.has_processing())
    @rule(
        data=hst.data(), stored=hst.booleans(), nbytes=hst.integers(1, 1000), timed=hst.booleans(),
        take_hints=hst.booleans(),
    )  # fmt: skip
    def task_finished(self, data: hst.DataObject, stored: bool, nbytes: int, timed: bool, take_hints: bool) -> None:
        key = data.draw(hst.sampled_from(self.processing_keys()), label="key")
        self.finish(key, self.result_value(key, stored, nbytes), nbytes, 1.0, 1.5 if timed else 0.0, take_hints)
        assert key not in self.state.tasks or self.state.tasks[key].state != "processing"

    @precondition(lambda self: self.has_processing())
    @rule(data=hst.data())
    def task_erred(self, data: hst.DataObject) -> None:
        key = data.draw(hst.sampled_from(self.processing_keys()), label="key")
        ts = self.state.tasks[key]
        assert ts.processing_on is not None
        retried = ts.retries > 0
        self.handle(st.TaskErred(self.sid(), key, ts.processing_on.address, ERROR, "tb", "ValueError: x"))
        if not retried and key in self.state.tasks:
            assert self.state.tasks[key].state == "erred"

    @precondition(lambda self: self.has_processing())
    @rule(data=hst.data())
    def long_running(self, data: hst.DataObject) -> None:
        """A task secedes from its worker's threads: its slot takes another task."""
        key = data.draw(hst.sampled_from(self.processing_keys()), label="key")
        ws = self.state.tasks[key].processing_on
        assert ws is not None
        self.handle(st.LongRunning(self.sid(), key, ws.address))
        assert self.state.tasks[key] in ws.long_running

    @precondition(lambda self: self.lost_inputs())
    @rule(data=hst.data(), stale=hst.booleans())
    def missing_data(self, data: hst.DataObject, stale: bool) -> None:
        """A worker could not read a stored input it was sent (or, if stale, an older copy)."""
        s = self.state
        key, dep = data.draw(hst.sampled_from(self.lost_inputs()), label="task and input")
        ws, dts = s.tasks[key].processing_on, s.tasks[dep]
        assert ws is not None and is_stored(dts.data)
        value = self.sent_deps[key][dep]
        if KNOWN_BUG_LOST_REPLICA:
            value = dts.data
        if stale:
            value = StoreRef(value.node, value.nbytes, self.fresh("obj"))
        self.handle(st.MissingData(self.sid(), key, ws.address, dep, value))
        if not stale:
            ts = s.tasks.get(dep)
            assert ts is None or value not in (ts.data, *(ts.located_on(n) for n in s.nodes)), f"{dep}: lost copy kept"

    @precondition(lambda self: self.remote_inputs())
    @rule(data=hst.data())
    def add_replica(self, data: hst.DataObject) -> None:
        """A worker's node fetched a stored input from another node into its own store."""
        s = self.state
        key, dep = data.draw(hst.sampled_from(self.remote_inputs()), label="task and input")
        ws = s.tasks[key].processing_on
        assert ws is not None
        source = self.sent_deps[key][dep]
        name = f"{source.name}@{ws.node}"  # named after the original: the same name if fetched again
        self.handle(st.AddReplica(self.sid(), dep, ws.node, name, source))
        dts = s.tasks[dep]
        if dts.state == "memory" and dts.data == source:
            assert dts.located_on(ws.node) == StoreRef(ws.node, source.nbytes, name), dts.replicas

    @precondition(lambda self: self.has_processing())
    @rule(data=hst.data(), use_policy=hst.booleans())
    def request_steals(self, data: hst.DataObject, use_policy: bool) -> None:
        """Work stealing's policy runs, or a random (often stale) move is suggested."""
        moves = stealing.balance(self.state) if use_policy else []
        if not moves:
            key = data.draw(hst.sampled_from(self.processing_keys()), label="key")
            ws = self.state.tasks[key].processing_on
            assert ws is not None
            if data.draw(hst.booleans(), label="a valid thief"):
                others = [w.address for w in self.running_workers() if w is not ws]
                if not others:  # a thief joins
                    self.start_worker(data.draw(hst.sampled_from(sorted(self.state.nodes)), label="node"))
                    others = [w.address for w in self.running_workers() if w is not ws]
                thief = data.draw(hst.sampled_from(others), label="thief")
            else:
                thief = data.draw(hst.sampled_from(self.all_workers), label="thief")  # maybe dead, paused or ws
            moves = [(key, ws.address, thief)]
        self.handle(st.RequestSteals(self.sid(), tuple(moves)))

    @precondition(lambda self: self.steal_requests)
    @rule(data=hst.data(), state=hst.sampled_from(["queued", "queued", "executing", "gone"]), race=hst.booleans())
    def steal_response(self, data: hst.DataObject, state: str, race: bool) -> None:
        """A victim answers a steal request; with ``race`` it finishes the task just before."""
        s = self.state
        key, victim, request = data.draw(hst.sampled_from(sorted(self.steal_requests)), label="request")
        ts = s.tasks.get(key)
        if race and ts is not None and ts.processing_on is not None and ts.processing_on.address == victim:
            self.finish(key, self.result_value(key, False, 10), 10)
        seen = self.steal_requests.pop((key, victim, request))
        if seen["ran"] and state == "queued":  # a victim gives up only a run it has not started
            state = "gone"
        if state == "queued" and not seen["resent"]:
            self.dropped.add((victim, key))
        self.answering_steal = True
        try:
            _, worker_msgs = self.handle(st.StealResponse(self.sid(), key, victim, request, state))
        finally:
            self.answering_steal = False
        sent = [w for w, msgs in worker_msgs.items() for m in msgs if type(m) is ComputeTask and m.key == key]
        if state != "queued" or seen["resent"]:  # the victim runs it (or ran it): it goes nowhere else
            assert not sent, f"{key} sent to {sent}, though {victim} answered {state!r} (resent: {seen['resent']})"
        assert len(sent) <= 1, f"{key} sent to {sent}"

    @invariant()
    def no_task_waits_on_a_victim_that_dropped_it(self) -> None:
        for ts in self.state.tasks.values():
            if ts.processing_on is not None:
                pair = (ts.processing_on.address, ts.key)
                assert pair not in self.dropped, f"{ts.key} processes on {pair[0]}, which dropped it for a steal"

    @rule(data=hst.data(), erred=hst.booleans(), stored=hst.booleans())
    def stale_report(self, data: hst.DataObject, erred: bool, stored: bool) -> None:
        """A late or misdirected report: unknown key, or a worker that is not running the key."""
        s = self.state
        key = data.draw(hst.sampled_from([self.fresh("ghost"), *sorted(s.tasks)]), label="key")
        ts = s.tasks.get(key)
        right = ts.processing_on.address if ts is not None and ts.processing_on is not None else None
        wrong = [w for w in self.all_workers if w != right] or [f"n-0/{self.fresh('w')}"]
        worker = data.draw(hst.sampled_from(wrong), label="worker")
        node = node_of(worker)
        counter = s.transition_counter
        if erred:
            stimulus: st.Stimulus = st.TaskErred(self.sid(), key, worker, ERROR, "tb", "ValueError: x")
        else:
            value = StoreRef(node, 7, self.fresh("obj")) if stored else b"x"
            stimulus = st.TaskFinished(self.sid(), key, worker, value, 7)
        client_msgs, worker_msgs = self.handle(stimulus)
        assert s.transition_counter == counter, "a stale report moved a task"
        assert not client_msgs
        if not erred and stored and node in s.nodes:  # only the stale stored copy is freed
            assert worker_msgs == {node: [FreeObjects((value.name,))]}
        else:
            assert not worker_msgs

    # ------------------------------------------------------------------ drain

    def drain_and_check(self) -> None:
        """Finish every processing task, round after round, until none is left."""
        s = self.state
        assert s.workers
        for address in sorted(s.workers):  # paused and retiring workers take tasks again
            self.handle(st.WorkerStatusChange(self.sid(), address, "running", by_scheduler=True))
        for _ in range(len(s.tasks) + 2):
            keys = self.processing_keys()
            if not keys:
                break
            for i, key in enumerate(keys):
                ts = s.tasks.get(key)
                if ts is not None and ts.state == "processing":  # not cancelled by an earlier finish
                    self.finish(key, self.result_value(key, stored=i % 2 == 0, nbytes=10), 10)
        stuck = {k: ts.state for k, ts in s.tasks.items() if ts.state in PENDING and not self.blocked(ts)}
        assert not stuck, f"tasks stuck with {len(s.workers)} workers alive: {stuck}"
        for cs in s.clients.values():
            for ts in cs.wants_what:
                assert ts.state in ("memory", "erred") or self.blocked(ts), (
                    f"{cs.client_key} wants {ts.key!r}: {ts.state}"
                )

    @precondition(lambda self: self.state.workers)
    @rule()
    def drain(self) -> None:
        self.drain_and_check()

    def teardown(self) -> None:
        if self.broken:
            return
        if not self.state.workers:
            self.start_worker(self.new_node())
        self.drain_and_check()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def validate_state(self) -> None:
        self.state.validate_state()

    @invariant()
    def links_point_at_live_objects(self) -> None:
        s = self.state
        for ts in s.tasks.values():
            assert ts.state in RESTING, ts
            waiting = ts.waiting or {}
            for other in (*ts.dependencies, *ts.dependents, *waiting, *ts.waiting_data):
                assert s.tasks.get(other.key) is other, f"{ts.key} links to dropped {other.key}"
            assert set(waiting) <= set(ts.dependencies) and set(ts.waiting_data) <= set(ts.dependents), ts
            for ws in ts.who_has or ():
                assert s.workers.get(ws.address) is ws, f"{ts.key} held by dead worker {ws.address}"
            if ts.processing_on is not None:
                assert s.workers.get(ts.processing_on.address) is ts.processing_on, ts
            if ts.state != "memory":
                assert not ts.who_has, ts
            if ts.run_spec is not None:  # a task, not a put: its dependencies stay as submitted
                assert keys_of(ts.dependencies) == set(self.specs[ts.key].dependencies), ts

    @invariant()
    def workers_and_nodes_agree(self) -> None:
        s = self.state
        for address, ws in s.workers.items():
            assert ws.address == address and ws.node in s.nodes, ws
            assert ws in s.nodes[ws.node].workers, ws
            assert ws.nbytes == sum(ts.nbytes for ts in ws.has_what), ws
            assert all(ts.state == "processing" for ts in ws.processing), ws
        for node, ns in s.nodes.items():
            assert all(s.workers.get(ws.address) is ws for ws in ns.workers), node
            in_store = {
                ts for ts in s.tasks.values() if ts.state == "memory" and is_stored(ts.data) and ts.data.node == node
            }
            assert ns.stored.keys() == in_store, f"{node}: stored {keys_of(ns.stored)} != {keys_of(in_store)}"
        for ts in s.tasks.values():
            if ts.state == "memory" and is_stored(ts.data):
                assert ts.data.node in s.nodes, f"{ts.key} in memory in the store of dead node {ts.data.node}"
            for node, name in (ts.replicas or {}).items():
                assert ts.state == "memory" and node != ts.data.node and ts in s.nodes[node].replicas, ts
                # Copies are named "<original>@<node>": a copy of this value, not of an older one.
                assert name.split("@")[0] == ts.data.name.split("@")[0], f"{ts.key}: {name} copies another value"
        for node, ns in s.nodes.items():
            assert all(ts.replicas and node in ts.replicas for ts in ns.replicas), node

    @invariant()
    def no_stored_object_leaks(self) -> None:
        """Every object in a live store is the value of a task in memory, or a copy of one."""
        referenced = set()
        for ts in self.state.tasks.values():
            if ts.state == "memory" and is_stored(ts.data):
                referenced.add((ts.data.node, ts.data.name))
                referenced.update((ts.replicas or {}).items())
        leaked = self.objects - referenced
        assert not leaked, f"stored objects nobody will free: {sorted(leaked)}"

    @invariant()
    def waiting_sets_match_states(self) -> None:
        for ts in self.state.tasks.values():
            if ts.state in PENDING:
                not_ready = {dts for dts in ts.dependencies if dts.state != "memory"}
                waiting = set(ts.waiting or ())
                assert waiting == not_ready, f"{ts.key}: waiting {keys_of(waiting)} != {keys_of(not_ready)}"
            else:
                assert not ts.waiting, ts
            pending = {dts for dts in ts.dependents if dts.state in PENDING}
            missing = pending - set(ts.waiting_data)
            assert not missing, f"{ts.key}: pending dependents {keys_of(missing)} not in waiting_data"

    @invariant()
    def ready_tasks_wait_only_when_they_must(self) -> None:
        s = self.state
        assert s.unrunnable.keys() == {ts for ts in s.tasks.values() if ts.state == "no-worker"}
        assert set(s.queued) == {ts for ts in s.tasks.values() if ts.state == "queued"}
        for ts in s.unrunnable:
            assert not self.runnable(ts), f"{ts.key} is no-worker, but a live worker may run it"
        if s.queued:
            assert s.workers, "tasks queued with no worker alive"

    @invariant()
    def clients_were_told(self) -> None:
        """Each client was told the outcome of every key it wants that has one."""
        for client, cs in self.state.clients.items():
            for ts in cs.wants_what:
                if ts.state in ("memory", "erred"):
                    told = self.told.get(client, {}).get(ts.key)
                    assert told == ts.state, f"{client} wants {ts.key!r} ({ts.state}) but was told {told}"

    @invariant()
    def only_what_is_wanted_or_needed_is_kept(self) -> None:
        for ts in self.state.tasks.values():
            assert ts.who_wants or ts.dependents, f"{ts.key} ({ts.state}) is kept but nobody wants or needs it"
            if ts.who_wants or ts.waiting_data:
                assert ts.state != "released", f"{ts.key} is released but wanted or needed"
            else:
                assert ts.state not in PENDING, f"{ts.key} is {ts.state} but nobody wants or waits for it"


def test_random_stimuli_keep_the_state_consistent() -> None:
    # Hypothesis replays and shrinks examples: it needs the same stimuli to give the same
    # decisions, which the state machine does by construction (its entity sets are ordered).
    run_state_machine_as_test(
        SchedulerMachine,
        settings=settings(
            max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


class StealingMachine(SchedulerMachine):
    """The same machine, starting with six tasks piled on one of two workers (loosely
    restricted to it), and with steals requested and answered three times as often: among
    its twenty-odd rules they would come up only a few times a run."""

    @initialize()
    def a_pile_on_one_worker(self) -> None:
        self.start_worker(self.new_node())
        self.start_worker(self.new_node())
        self.handle(st.AddClient(self.sid(), "c0"))
        pile = [st.TaskSpec(self.fresh("pile"), RUN_SPEC, (), 0, "pile", (self.all_workers[0],), None, True)]
        pile += [
            st.TaskSpec(self.fresh("pile"), RUN_SPEC, (), 0, "pile", pile[0].workers, None, True) for _ in range(5)
        ]
        self.specs.update((spec.key, spec) for spec in pile)
        self.handle(st.UpdateGraph(self.sid(), "c0", tuple(pile), tuple(spec.key for spec in pile)))
        assert len(self.state.workers[self.all_workers[0]].processing) == 6

    @precondition(lambda self: self.has_processing())
    @rule(data=hst.data(), use_policy=hst.booleans())
    def request_steals_again(self, data: hst.DataObject, use_policy: bool) -> None:
        self.request_steals(data, use_policy)

    @precondition(lambda self: self.has_processing())
    @rule(data=hst.data(), use_policy=hst.booleans())
    def request_steals_once_more(self, data: hst.DataObject, use_policy: bool) -> None:
        self.request_steals(data, use_policy)

    @precondition(lambda self: self.steal_requests)
    @rule(data=hst.data(), state=hst.sampled_from(["queued", "queued", "executing", "gone"]), race=hst.booleans())
    def steal_response_again(self, data: hst.DataObject, state: str, race: bool) -> None:
        self.steal_response(data, state, race)

    @precondition(lambda self: self.steal_requests)
    @rule(data=hst.data(), state=hst.sampled_from(["queued", "queued", "executing", "gone"]), race=hst.booleans())
    def steal_response_once_more(self, data: hst.DataObject, state: str, race: bool) -> None:
        self.steal_response(data, state, race)


def test_random_stimuli_with_frequent_steals_keep_the_state_consistent() -> None:
    run_state_machine_as_test(
        StealingMachine,
        settings=settings(
            max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


# ---------------------------------------------------------------------- regressions
#
# Minimal stimulus sequences for bugs the machine above found, each asserting what should
# happen (they failed before the fix).


def task(key: str, *deps: str) -> st.TaskSpec:
    return st.TaskSpec(key, RUN_SPEC, deps, 0, "f")


def scheduler(*workers: tuple[str, str]) -> SchedulerState:
    """A validating scheduler with client "c" and the given (address, node) workers."""
    s = SchedulerState(validate=True)
    s.handle(st.AddClient("add-c", "c"))
    for address, node in workers:
        s.handle(st.AddNode(f"add-{node}", node))
        s.handle(st.AddWorker(f"add-{address}", address, node))
    return s


def states(s: SchedulerState) -> dict[str, str]:
    return {key: ts.state for key, ts in s.tasks.items()}


def compute_keys(worker_msgs: Msgs) -> list[str]:
    return [m.key for msgs in worker_msgs.values() for m in msgs if type(m) is ComputeTask]


def finish(s: SchedulerState, key: str, value: bytes | StoreRef = b"v") -> tuple[Msgs, Msgs]:
    ts = s.tasks[key]
    assert ts.processing_on is not None
    return s.handle(st.TaskFinished(f"done-{key}", key, ts.processing_on.address, value, 10))


def err(s: SchedulerState, key: str) -> tuple[Msgs, Msgs]:
    ts = s.tasks[key]
    assert ts.processing_on is not None
    return s.handle(st.TaskErred(f"err-{key}", key, ts.processing_on.address, ERROR, "tb", "ValueError: x"))


def test_regression_wanting_a_released_key_again_computes_it() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateGraph("g1", "c", (task("a"), task("b", "a")), ("b",)))
    finish(s, "a")
    finish(s, "b")
    assert states(s) == {"a": "released", "b": "memory"}  # a is kept while b may need it
    _, worker_msgs = s.handle(st.UpdateGraph("g2", "c", (task("a"),), ("a",)))
    assert compute_keys(worker_msgs) == ["a"]  # was: nothing sent, a released forever


def test_regression_stale_result_of_a_dead_node_sends_nothing() -> None:
    s = scheduler()
    _, worker_msgs = s.handle(st.TaskFinished("late", "x", "w1", StoreRef("n1", 10, "obj"), 10))
    assert worker_msgs == {}  # was: free-objects to n1, which is unknown


def test_regression_a_released_put_needed_again_errs_clearly() -> None:
    s = scheduler(("w1", "n1"), ("w2", "n2"))
    s.handle(st.UpdateData("put", "c", "x", b"X", 1))
    s.handle(st.UpdateGraph("g", "c", (task("f", "x"),), ("f",)))
    finish(s, "f", StoreRef(s.tasks["f"].processing_on.node, 10, "obj-f"))
    s.handle(st.ClientReleasesKeys("rel", "c", ("x",)))  # x's value is dropped: released, kept for f
    # f's node leaves: f must be recomputed, but x cannot be.  Was: AssertionError in
    # _send_to_worker (x has no run_spec), x left "processing" on a worker.
    client_msgs, _ = s.handle(st.RemoveNode("gone", s.tasks["f"].data.node))
    assert states(s) == {"x": "erred", "f": "erred"}
    lost, msg = client_msgs["c"]
    assert lost == LostKeys(("f",))
    assert type(msg) is KeyErred and msg.key == "f" and msg.blame == "x"
    assert isinstance(pickle.loads(msg.exception), LookupError)


def test_regression_unneeded_dependency_is_cancelled() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateGraph("g", "c", (task("x"), task("e"), task("y", "x", "e")), ("y",)))
    _, worker_msgs = err(s, "e")  # y errs, so nothing needs x any more
    assert states(s) == {"x": "released", "e": "erred", "y": "erred"}  # was: x still processing
    assert worker_msgs == {"w1": [CancelCompute("x")]}


def test_regression_worker_death_keeps_dependencies_in_memory() -> None:
    s = scheduler(("w1", "n1"), ("w2", "n2"))
    s.handle(st.UpdateGraph("g", "c", (task("a"), task("b", "a")), ("b",)))
    finish(s, "a", b"A")
    _, worker_msgs = s.handle(st.RemoveWorker("dies", s.tasks["b"].processing_on.address))
    # a's value is inline, held by the scheduler: nothing was lost.  Was: a released and
    # recomputed; the survivor got compute b, compute a, cancel b.
    assert states(s) == {"a": "memory", "b": "processing"}
    assert compute_keys(worker_msgs) == ["b"]


def test_regression_worker_death_does_not_fail_a_task_whose_put_input_was_dropped() -> None:
    s = scheduler(("w1", "n1"), ("w2", "n2"))
    s.handle(st.UpdateData("put", "c", "x", b"X", 1))
    s.handle(st.UpdateGraph("g", "c", (task("f", "x"),), ("f",)))
    s.handle(st.ClientReleasesKeys("rel", "c", ("x",)))  # f.remote(rt.put(v)): the put future is dropped
    client_msgs, _ = s.handle(st.RemoveWorker("dies", s.tasks["f"].processing_on.address))
    # Was: x released, then "lost" (put by a client), and f erred with LookupError.
    assert client_msgs == {} and states(s) == {"x": "memory", "f": "processing"}


def test_regression_a_put_does_not_retry_an_erred_task() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateGraph("g1", "c", (task("a"), task("b", "a"), task("c", "b")), ("b", "c")))
    for key in ("a", "b", "c"):
        finish(s, key)
    s.handle(st.UpdateGraph("g2", "c", (task("z", "a"),), ("z",)))
    err(s, "a")  # the client is told z erred
    s.handle(st.ClientReleasesKeys("rel", "c", ("b",)))  # b released, kept for c
    assert states(s) == {"a": "erred", "b": "released", "c": "memory", "z": "erred"}
    _, worker_msgs = s.handle(st.UpdateData("put", "c", "b", b"B", 1))
    # Was: a went erred -> released -> processing and z back to waiting: a failed task
    # retried, unasked, because of an unrelated put.
    assert compute_keys(worker_msgs) == []
    assert states(s)["a"] == "erred" and states(s)["z"] == "erred"


def test_regression_heapset_topk_returns_distinct_tasks() -> None:
    group = TaskGroup("g")
    a, b = TaskState("a", RUN_SPEC, group), TaskState("b", RUN_SPEC, group)
    a.priority, b.priority = 0, 1
    queue = HeapSet()
    queue.add(a)
    queue.add(b)
    queue.discard(a)  # lazy: a's heap entry stays
    queue.add(a)  # a second entry for a
    assert queue.topk(2) == [a, b]  # was: [a, a]


def test_regression_requeued_tasks_fill_every_free_slot() -> None:
    s = scheduler(("w1", "n1"))  # 1 thread: 2 slots
    roots = tuple(st.TaskSpec(f"r-{i}", RUN_SPEC, ("d",), 0, "root") for i in range(5))  # root-ish: queued
    s.handle(st.UpdateGraph("g", "c", (st.TaskSpec("d", RUN_SPEC, (), 0, "d"), *roots), tuple(t.key for t in roots)))
    finish(s, "d", StoreRef("n1", 10, "obj-d"))
    assert states(s) == {"d": "memory", "r-0": "processing", "r-1": "processing"} | {
        f"r-{i}": "queued" for i in (2, 3, 4)
    }
    # w1 cannot read d: d runs again, and its dependents are released, then queued again.
    s.handle(st.MissingData("lost", "r-0", "w1", "d", StoreRef("n1", 10, "obj-d")))
    finish(s, "d", StoreRef("n1", 10, "obj-d2"))
    # A new worker has 2 free slots.  Was: only r-2 went out (topk returned it twice), and
    # validate_state raised "2 tasks queued while 1 workers have free slots".
    _, worker_msgs = s.handle(st.AddWorker("add-w2", "w2", "n1"))
    assert compute_keys(worker_msgs) == ["r-2", "r-3"]


def test_regression_worker_death_does_not_run_what_its_killed_task_made_unneeded() -> None:
    s = SchedulerState(validate=True, allowed_failures=1)
    s.handle(st.AddNode("add-n1", "n1"))
    s.handle(st.AddWorker("add-w0", "w0", "n1"))
    s.handle(st.UpdateGraph("g1", "c", (task("a"),), ("a",)))
    s.handle(st.AddWorker("add-w1", "w1", "n1"))
    s.handle(st.UpdateGraph("g2", "c", (task("g"), task("c", "g", "a")), ("c",)))  # g runs on w1
    s.handle(st.RemoveWorker("dies-0", "w0"))  # a: suspicious 1, runs again on w1, after g
    assert [ts.key for ts in s.workers["w1"].processing] == ["g", "a"]
    # w1 dies: g goes back to waiting (c needs it), then a errs with KilledWorker, c errs
    # and nobody needs g.  Was: g moved to no-worker anyway ("runs, but nobody wants it").
    s.handle(st.RemoveWorker("dies-1", "w1"))
    assert states(s) == {"a": "erred", "g": "released", "c": "erred"}


# ---------------------------------------------------------------------- open bugs


def test_regression_wanting_a_key_whose_put_input_is_gone_runs_nothing_needlessly() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateData("put", "c", "p", b"P", 1))
    s.handle(st.UpdateGraph("g1", "c", (task("a"), task("b", "a", "p"), task("z", "b")), ("z",)))
    for key in ("a", "b", "z"):
        finish(s, key)
    s.handle(st.ClientReleasesKeys("rel", "c", ("p",)))  # p's value is dropped
    assert states(s) == {"p": "released", "a": "released", "b": "released", "z": "memory"}
    # b is wanted again: a and p are recommended "waiting"; p cannot be recomputed and
    # errs, b errs, so nothing needs a.  Today a runs anyway ("runs, but nobody wants it").
    s.handle(st.UpdateGraph("g2", "c", (), ("b",)))
    assert states(s) == {"p": "erred", "a": "released", "b": "erred", "z": "memory"}


def test_regression_node_leaving_does_not_run_what_its_killed_task_made_unneeded() -> None:
    # A leaving node's workers are removed in the order they joined (w1 first); when that was a
    # set's order, this test fixed it by patching their hashes.
    s = SchedulerState(validate=True, allowed_failures=1)
    s.handle(st.AddNode("add-n0", "n0"))
    s.handle(st.AddWorker("add-w0", "n0/w0", "n0"))
    s.handle(st.UpdateGraph("g1", "c", (st.TaskSpec("a", RUN_SPEC, (), 0, "a", ("n0/w0", "n1/w2")),), ("a",)))
    s.handle(st.AddNode("add-n1", "n1"))
    s.handle(st.AddWorker("add-w1", "n1/w1", "n1"))
    s.handle(st.AddWorker("add-w2", "n1/w2", "n1"))
    g = st.TaskSpec("g", RUN_SPEC, (), 0, "g", ("n1/w1",))
    s.handle(st.UpdateGraph("g2", "c", (g, task("c", "g", "a")), ("c",)))
    s.handle(st.RemoveWorker("dies", "n0/w0"))  # a: suspicious 1, runs again on n1/w2
    # n1 leaves: w1 goes first and g back to waiting (c needs it); then w2, a errs with
    # KilledWorker, c errs, nothing needs g.  Today g moves to no-worker anyway.
    s.handle(st.RemoveNode("gone", "n1"))
    assert states(s) == {"a": "erred", "g": "released", "c": "erred"}


def two_nodes() -> SchedulerState:
    s = SchedulerState(validate=True)
    for node in ("n1", "n2"):
        s.handle(st.AddNode(f"add-{node}", node, f"tcp://{node}:1"))
        s.handle(st.AddWorker(f"add-{node}/w", f"{node}/w", node))
    return s


def test_regression_a_lost_copy_of_an_input_is_not_sent_again() -> None:
    s = two_nodes()
    a = st.TaskSpec("a", RUN_SPEC, (), 0, "a", ("n1/w",))
    b = st.TaskSpec("b", RUN_SPEC, ("a",), 0, "b", ("n2/w",))
    s.handle(st.UpdateGraph("g", "c", (a, b), ("b",)))
    s.handle(st.TaskFinished("done-a", "a", "n1/w", StoreRef("n1", 10, "obj-a"), 10))
    s.handle(st.AddReplica("copied", "a", "n2", "obj-a@n2", StoreRef("n1", 10, "obj-a")))  # n2/w fetched a
    # n2/w cannot read n2's copy.  Today: taken for a stale report, b reruns with the same copy.
    _, worker_msgs = s.handle(st.MissingData("lost", "b", "n2/w", "a", StoreRef("n2", 10, "obj-a@n2")))
    sent = [m.deps["a"] for m in worker_msgs.get("n2/w", []) if type(m) is ComputeTask]
    assert StoreRef("n2", 10, "obj-a@n2") not in sent
    assert not s.tasks["a"].replicas


def test_regression_node_leaving_sends_no_compute_reading_its_store() -> None:
    # Found when the departed node's values were released in the iteration order of a set:
    # recommended in the order stored (a, then b) and popped last first, b ran first.
    s = two_nodes()
    a = st.TaskSpec("a", RUN_SPEC, (), 0, "a", ("n1/w",))
    b = st.TaskSpec("b", RUN_SPEC, ("a",), 0, "b", ("n1/w",), None, True)
    s.handle(st.UpdateGraph("g", "c", (a, b), ("a", "b")))
    s.handle(st.TaskFinished("done-a", "a", "n1/w", StoreRef("n1", 10, "obj-a"), 10))
    s.handle(st.TaskFinished("done-b", "b", "n1/w", StoreRef("n1", 10, "obj-b"), 10))
    # n1 leaves with a and b.  Before the fix b was recomputed at once on n2/w, reading a from
    # n1's store (gone), then cancelled in the same batch when a was released too.
    _, worker_msgs = s.handle(st.RemoveNode("gone", "n1"))
    assert worker_msgs == {}


def test_regression_recomputed_value_is_not_read_from_a_copy_of_the_old_one() -> None:
    s = two_nodes()
    a = st.TaskSpec("a", RUN_SPEC, (), 0, "a", ("n1/w",))
    b = st.TaskSpec("b", RUN_SPEC, ("a",), 0, "b", ("n2/w",))
    s.handle(st.UpdateGraph("g", "c", (a, b), ("b",)))
    s.handle(st.TaskFinished("done-a", "a", "n1/w", StoreRef("n1", 10, "obj-a"), 10))
    s.handle(st.AddReplica("copied", "a", "n2", "obj-a@n2", StoreRef("n1", 10, "obj-a")))
    s.handle(st.MissingData("lost", "b", "n2/w", "a", StoreRef("n1", 10, "obj-a")))  # n1's copy is gone: a reruns
    _, worker_msgs = s.handle(st.TaskFinished("done-a2", "a", "n1/w", StoreRef("n1", 20, "obj-a2"), 20))
    # Today: b is sent StoreRef("n2", 20, "obj-a@n2"), the copy of the old value (never freed either).
    sent = [m.deps["a"] for m in worker_msgs.get("n2/w", []) if type(m) is ComputeTask]
    assert StoreRef("n2", 20, "obj-a@n2") not in sent


def test_heapset_orders_like_a_sorted_list_whatever_the_order_of_adds() -> None:
    # Ascending adds take the lane, others the heap: the front is always the least entry.
    group = TaskGroup("g")
    for seed in range(100):
        rng = random.Random(seed)
        tasks = [TaskState(f"t{i}", RUN_SPEC, group) for i in range(20)]
        for t in tasks:
            t.priority = pack_priority(rng.randint(-1, 1), rng.randint(0, 50))
        queue, members = HeapSet(), set()
        for _ in range(150):
            op, ts = rng.random(), rng.choice(tasks)
            if op < 0.5:
                queue.add(ts)
                members.add(ts)
            elif op < 0.75:
                queue.discard(ts)
                members.discard(ts)
            elif members:
                top = queue.peek()
                queue.discard(top)
                members.remove(top)
            k = rng.randint(1, 5)
            expected = sorted(members, key=lambda t: (t.priority, queue._members[t]))[:k]
            assert queue.topk(k) == expected, seed
            assert queue.peek() == (expected[0] if expected else None)
            assert len(queue) == len(members) and set(queue) == members


def test_regression_an_input_of_a_new_task_that_will_not_run_is_not_held_for_it() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateGraph("g1", "c", (task("z"), task("o")), ("z", "o")))
    err(s, "z")
    finish(s, "o")
    # b errs at once (z erred), and with it e, before n's turn: nobody needs n any more, so
    # it stays released, and o must not keep its value for n.  Was: o's waiting_data still
    # named n, which update-graph had put there for a run that never came.
    s.handle(st.UpdateGraph("g2", "c", (task("b", "z"), task("n", "o"), task("e", "b", "n")), ("e",)))
    assert states(s) == {"z": "erred", "o": "memory", "b": "erred", "n": "released", "e": "erred"}
    assert not s.tasks["o"].waiting_data
    s.handle(st.ClientReleasesKeys("rel", "c", ("o",)))
    assert s.tasks["o"].state == "released"  # kept as an input of n, its value freed


def test_regression_update_graph_sends_no_input_of_a_task_that_errs_at_once() -> None:
    s = scheduler(("w1", "n1"))
    s.handle(st.UpdateGraph("g1", "c", (task("z"),), ("z",)))
    err(s, "z")
    # y errs at once (its input z erred), so nothing needs x.  Was: x, first in graph order
    # and ready, was sent to w1 at once, then cancelled in the same batch when y erred.
    _, worker_msgs = s.handle(st.UpdateGraph("g2", "c", (task("x"), task("y", "x", "z")), ("y",)))
    assert sent_and_cancelled(worker_msgs) == [] and worker_msgs == {}
    assert states(s) == {"z": "erred", "x": "released", "y": "erred"}


def test_regression_worker_death_sends_no_task_that_its_killed_task_made_unneeded() -> None:
    s = SchedulerState(validate=True, allowed_failures=0)
    s.handle(st.AddNode("add-n1", "n1"))
    s.handle(st.AddWorker("add-w1", "w1", "n1"))
    s.handle(st.UpdateGraph("g", "c", (task("k"), task("r"), task("d", "k", "r")), ("d",)))
    s.handle(st.AddWorker("add-w2", "w2", "n1"))
    assert [ts.key for ts in s.workers["w1"].processing] == ["k", "r"]
    # w1 dies running k: k errs with KilledWorker, d with it, and nothing needs r, which
    # was only waiting its turn on w1.  Was: r went back to waiting and was sent to w2
    # before d erred, then cancelled in the same batch.
    _, worker_msgs = s.handle(st.RemoveWorker("dies", "w1", executing=("k",)))
    assert sent_and_cancelled(worker_msgs) == [] and worker_msgs == {}
    assert states(s) == {"k": "erred", "r": "released", "d": "erred"}
