"""What the scheduler knows about each task, task group, worker, node and client.

Plain slotted classes with no behaviour beyond bookkeeping: ``state.py`` changes them,
``placement.py`` reads them, ``validation.py`` checks them.  Names follow the
specification (``who_has``, ``processing``, ``waiting_data``, ...).
"""

from __future__ import annotations

import heapq
import io
import math
import pickle
from collections.abc import Iterator
from typing import Any, Literal, get_args

from runtime.comm.messages import Message, StoreRef, Value

TaskStateState = Literal["released", "waiting", "no-worker", "queued", "processing", "memory", "erred", "forgotten"]
ALL_TASK_STATES: frozenset[str] = frozenset(get_args(TaskStateState))
#: the task states in the order a task goes through them (for counts that print in order)
TASK_STATES_IN_ORDER: tuple[str, ...] = get_args(TaskStateState)
WorkerStatus = Literal["running", "paused", "closing_gracefully"]
#: recommendations: key -> the state it should move to next
Recs = dict[str, TaskStateState]
#: messages to send: client id, worker address or node id -> wire-ready messages
Msgs = dict[str, list[Message]]
#: what a transition returns: more recommendations, client messages, worker messages
# The local schedulers (``runtime/local.py``) drive this same state machine in the client's
# process, with the objects themselves where workers send pickles: the function and its
# arguments, the value (in a ``local.Box``), the exception.  The state never looks inside them.
#: how to run a task: the pickled callable and the pickled (args, kwargs), or those themselves
T_runspec = tuple[Any, Any]
#: the exception a task raised: pickled, or itself
T_exception = bytes | BaseException


#: bits of a priority that number tasks in the order they were submitted
SEQUENCE_BITS = 44
#: user priorities run from -USER_PRIORITY_LIMIT to USER_PRIORITY_LIMIT - 1
USER_PRIORITY_LIMIT = 1 << (62 - SEQUENCE_BITS)


def slots_for(nthreads: int, per_thread: float) -> float:
    """How many tasks a worker of ``nthreads`` holds at ``per_thread`` tasks a thread (inf: all)."""
    return math.inf if per_thread == math.inf else max(1, math.ceil(per_thread * nthreads))


def pickle_error(exc: BaseException) -> bytes:
    """An exception the scheduler makes (KilledWorker, a missing input), pickled the same in
    every process: by the exception's own ``__reduce_ex__``, whatever reducers the process
    registered with ``copyreg`` (tblib's, which Dask installs on import, change how every
    exception pickles).  So a replay in any process decides byte for byte as the run did."""
    f = io.BytesIO()
    pickler = pickle.Pickler(f)
    pickler.dispatch_table = {}  # not copyreg's, which is the process's
    pickler.dump(exc)
    return f.getvalue()


def pack_priority(user: int, sequence: int) -> int:
    """A task's priority, lower first, as one signed 64-bit int (a msgpack int on the wire).

    The specification's ``(-user priority, submission generation, order in the graph)``:
    ``sequence`` numbers tasks across all graphs, in graph order within each, which sorts
    as generation then order.  One int, not a tuple: 32 bytes a task instead of about 90,
    compared in one step; with the default user priority 0 it is the sequence itself.
    Clients reject user priorities out of range; the scheduler clamps one that comes in a
    hand-made message.
    """
    user = min(max(user, -USER_PRIORITY_LIMIT), USER_PRIORITY_LIMIT - 1)
    return (-user << SEQUENCE_BITS) + sequence


class TaskGroup:
    """Tasks that share a prefix (one function): sized to tell root-ish tasks apart, and
    counted as they move, so the dashboard reads tasks per state without walking them."""

    __slots__ = (
        "name", "size", "dependencies", "entered", "left", "compute_seconds", "transfer_seconds", "nbytes",
        "suspicious",
    )  # fmt: skip

    def __init__(self, name: str):
        self.name = name
        #: how many of its tasks the scheduler knows now
        self.size = 0
        #: groups its tasks depend on
        self.dependencies: set[TaskGroup] = set()
        # Two increments per transition give both what the dashboard shows: tasks in a state
        # now (entered - left; ``released`` is the rest of ``size``) and moves into each
        # state since the start (``entered``, Dask's prefix state totals).
        #: transitions of its tasks into each state, ever
        self.entered: dict[str, int] = dict.fromkeys(TASK_STATES_IN_ORDER, 0)
        #: transitions of its tasks out of each state, ever
        self.left: dict[str, int] = dict.fromkeys(TASK_STATES_IN_ORDER, 0)
        #: seconds its tasks that finished ran on workers, summed
        self.compute_seconds = 0.0
        #: seconds its tasks' workers spent getting their inputs
        self.transfer_seconds = 0.0
        #: bytes of its values in memory now
        self.nbytes = 0
        #: times a worker died while running one of its tasks
        self.suspicious = 0

    def states(self) -> dict[str, int]:
        """How many of its tasks are in each state now (forgotten ones are not counted)."""
        entered, left = self.entered, self.left
        counts = {s: entered[s] - left[s] for s in TASK_STATES_IN_ORDER if s != "forgotten"}
        counts["released"] = 0
        counts["released"] = self.size - sum(counts.values())
        return counts


class TaskState:
    __slots__ = (
        "key", "prefix", "group", "run_spec", "state", "priority", "dependencies", "dependents",
        "waiting", "waiting_data", "who_wants", "who_has", "processing_on", "data", "nbytes",
        "exception", "traceback", "exception_text", "exception_blame", "erred_on",
        "suspicious", "retries", "worker_restrictions", "host_restrictions",
        "resource_restrictions", "loose_restrictions", "replicas", "hinted",
    )  # fmt: skip

    def __init__(self, key: str, run_spec: T_runspec | None, group: TaskGroup):
        #: the task's name, unique in the cluster
        self.key = key
        #: name shared by tasks of one function, for duration estimates
        self.prefix = group.name
        self.group = group
        #: how to run it; None for data put by a client
        self.run_spec = run_spec
        #: one of ALL_TASK_STATES
        self.state: TaskStateState = "released"
        #: lower runs first: user priority, then submission order (pack_priority)
        self.priority = 0
        # The graph edges and who_wants/who_has below are ordered sets (dicts with None
        # values): iteration order is deterministic, and an empty one costs 64 bytes, not a
        # set's 216 (waiting and who_has, empty for most tasks most of the time, are None).
        #: tasks whose values this one needs
        self.dependencies: dict[TaskState, None] = {}
        #: tasks that need this one's value
        self.dependents: dict[TaskState, None] = {}
        #: dependencies not yet in memory (the specification's ``waiting``); None, not an
        #: empty dict, while there are none: most tasks never wait, or not for long
        self.waiting: dict[TaskState, None] | None = None
        #: dependents yet to run that need this value kept (``waiting_data``)
        self.waiting_data: dict[TaskState, None] = {}
        #: clients holding a future for this key
        self.who_wants: dict[ClientState, None] = {}
        #: workers holding the value (None until one does)
        self.who_has: dict[WorkerState, None] | None = None
        #: the worker running it, while processing (``rprocessing``)
        self.processing_on: WorkerState | None = None
        #: the value's wire form while in memory: inline pickle or where it is stored
        self.data: Value | None = None
        #: size of the value in bytes
        self.nbytes = 0
        #: pickled exception, remote traceback text and str(exception), when erred
        self.exception: T_exception | None = None
        self.traceback: str | None = None
        self.exception_text = ""
        #: the erred task this one failed because of (itself if it raised)
        self.exception_blame: TaskState | None = None
        #: workers it raised on or died on (created on first use)
        self.erred_on: set[str] | None = None
        #: how many workers died while running it
        self.suspicious = 0
        #: how many more times to rerun it if it raises
        self.retries = 0
        #: addresses of the only workers that may run it, or None
        self.worker_restrictions: dict[str, None] | None = None
        #: hosts whose workers may run it, or None
        self.host_restrictions: dict[str, None] | None = None
        #: abstract resources it needs from a worker, e.g. {"GPU": 1}, or None
        self.resource_restrictions: dict[str, float] | None = None
        #: run elsewhere when no worker meets the restrictions
        self.loose_restrictions = False
        #: copies of a stored value on other nodes: node -> object name (created on first use)
        self.replicas: dict[str, str] | None = None
        #: while waiting: the worker it was sent to as a hint, to run there once the one input
        #: it waits for finishes there (``chain_hints``), until that worker starts it or the
        #: hint is revoked
        self.hinted: WorkerState | None = None

    def located_on(self, node: str) -> Value | None:
        """The value's wire form as a process on ``node`` should read it: its local copy if any."""
        data = self.data
        if self.replicas and type(data) is StoreRef and node in self.replicas:
            return StoreRef(node, data.nbytes, self.replicas[node])
        return data

    def has_restrictions(self) -> bool:
        return bool(self.worker_restrictions or self.host_restrictions or self.resource_restrictions)

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = (
        "address", "node", "host", "nthreads", "pid", "resources", "memory_limit",
        "processing", "long_running", "has_what", "occupancy", "nbytes", "slots", "status", "memory", "memory_rss",
    )  # fmt: skip

    def __init__(
        self, address: str, node: str, nthreads: int, *, host: str = "", pid: int = 0,
        resources: dict[str, float] | None = None, memory_limit: int = 0, per_thread: float = math.inf,
    ):  # fmt: skip
        #: its id with the scheduler
        self.address = address
        #: the node (agent and store) it belongs to
        self.node = node
        #: the machine it runs on, for host restrictions
        self.host = host
        self.nthreads = nthreads
        self.pid = pid
        #: abstract resources it offers, e.g. {"GPU": 2}
        self.resources: dict[str, float] = resources or {}
        #: bytes it may use (0: unknown)
        self.memory_limit = memory_limit
        #: tasks sent to it and their expected durations
        self.processing: dict[TaskState, float] = {}
        #: those of its processing tasks that seceded: they hold no thread, and no slot
        self.long_running: dict[TaskState, None] = {}
        #: values it holds (an ordered set)
        self.has_what: dict[TaskState, None] = {}
        #: expected seconds of work sent to it
        self.occupancy = 0.0
        #: bytes of the values it holds
        self.nbytes = 0
        #: how many tasks it may run or hold ready before it counts as saturated
        self.slots = slots_for(nthreads, per_thread)
        #: "running" takes new tasks; "paused" (short of memory) and "closing_gracefully"
        #: (being retired) do not, though they finish what they have
        self.status: WorkerStatus = "running"
        #: its own memory (resident, not shared with the store) at its last heartbeat, bytes
        self.memory = 0
        #: its resident set at its last heartbeat (includes mapped store pages), bytes
        self.memory_rss = 0

    def has_free_slot(self) -> bool:
        """Whether it holds fewer tasks than its ``slots`` (long-running ones hold none)."""
        return len(self.processing) - len(self.long_running) < self.slots

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} node={self.node} processing={len(self.processing)}>"


class ClientState:
    __slots__ = ("client_key", "wants_what")

    def __init__(self, client_key: str):
        self.client_key = client_key
        #: tasks this client holds futures for
        self.wants_what: dict[TaskState, None] = {}

    def __repr__(self) -> str:
        return f"<ClientState {self.client_key!r} wants={len(self.wants_what)}>"


class NodeState:
    __slots__ = (
        "node", "address", "workers", "stored", "replicas", "store_used", "store_spilled", "store_limit",
        "store_pooled",
    )  # fmt: skip

    def __init__(self, node: str, address: str = ""):
        self.node = node
        #: where its agent serves objects to other nodes
        self.address = address
        #: live workers on this node
        self.workers: dict[WorkerState, None] = {}
        #: tasks whose value was first stored here (``TaskState.data`` names this node)
        self.stored: dict[TaskState, None] = {}
        #: tasks of which this store holds a copy fetched from another node
        self.replicas: dict[TaskState, None] = {}
        #: its store's bytes in shared memory, spilled to disk, and limit, at its last heartbeat
        self.store_used = 0
        self.store_spilled = 0
        #: of store_used, the bytes of freed files its store keeps for reuse
        self.store_pooled = 0
        self.store_limit = 0


class HeapSet:
    """Tasks ordered by priority, with O(log n) push/pop and O(1) membership and removal.

    Removal is lazy: a removed task's entry stays until it reaches the front.  Each add
    stamps its entry, and only the entry with a member's current stamp counts, so a task
    removed and added again is never seen twice.

    An entry is ``(priority, stamp, task)``: comparing two entries compares ints only (the
    stamps differ).  Entries that come in ascending order (update-graph
    queues a graph's roots in priority order) go to a sorted list, the lane, whose front
    moves on in O(1); any other entry goes to a heap, and the front is the lesser of the two
    fronts.  A million queued roots then cost no ~20-level heap pops.  (The lane is a list
    with a moving start, not a deque: one buffer, where a deque's thousands of 528-byte
    blocks fragment the C heap under a large graph's temporaries.)
    """

    __slots__ = ("_heap", "_lane", "_start", "_members", "_count")

    def __init__(self) -> None:
        self._heap: list[tuple] = []
        #: entries in ascending order, each added after the one before it, from _start on
        self._lane: list[tuple] = []
        self._start = 0
        #: member -> the stamp of its live entry
        self._members: dict[TaskState, int] = {}
        self._count = 0

    def add(self, ts: TaskState) -> None:
        if ts not in self._members:
            self._count += 1
            self._members[ts] = self._count
            entry = (ts.priority, self._count, ts)
            lane = self._lane
            if len(lane) == self._start or lane[-1] < entry:
                lane.append(entry)
            else:
                heapq.heappush(self._heap, entry)

    def discard(self, ts: TaskState) -> None:
        if self._members.pop(ts, None) is not None:
            # Mostly the front, leaving for a worker: step over it now, not by a probe later.
            lane, start = self._lane, self._start
            if start < len(lane) and lane[start][-1] is ts:
                self._start = start + 1

    def _front(self) -> tuple | None:
        """The first live entry, dropping removed ones ahead of it."""
        heap, lane, members = self._heap, self._lane, self._members
        while heap and members.get(heap[0][-1]) != heap[0][-2]:
            heapq.heappop(heap)
        start, end = self._start, len(lane)
        while start < end and members.get((entry := lane[start])[-1]) != entry[-2]:
            start += 1
        if start == end:
            lane.clear()
            start = 0
        elif start > 4096 and 2 * start > end:
            del lane[:start]  # amortised O(1): the dead part is at least the live one
            start = 0
        self._start = start
        lane_front = lane[start] if lane else None
        if heap and (lane_front is None or heap[0] < lane_front):
            return heap[0]
        return lane_front

    def peek(self) -> TaskState | None:
        front = self._front()
        return front[-1] if front is not None else None

    def topk(self, k: int) -> list[TaskState]:
        """The ``k`` first tasks, without removing them: O(k log n)."""
        if k == 1:  # the common case: one slot freed
            front = self._front()
            return [front[-1]] if front is not None else []
        heap, lane, members = self._heap, self._lane, self._members
        self._front()
        taken: list[tuple] = []  # popped off the heap, pushed back after
        top: list[TaskState] = []
        i = self._start  # the next lane entry to look at (the lane is left as it is)
        while len(top) < k:
            while heap and members.get(heap[0][-1]) != heap[0][-2]:
                heapq.heappop(heap)
            while i < len(lane) and members.get(lane[i][-1]) != lane[i][-2]:
                i += 1
            next_lane = lane[i] if i < len(lane) else None
            if heap and (next_lane is None or heap[0] < next_lane):
                taken.append(heapq.heappop(heap))
                top.append(taken[-1][-1])
            elif next_lane is not None:
                top.append(next_lane[-1])
                i += 1
            else:
                break
        for entry in taken:
            heapq.heappush(heap, entry)
        return top

    def __contains__(self, ts: object) -> bool:
        return ts in self._members

    def __len__(self) -> int:
        return len(self._members)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self._members)
