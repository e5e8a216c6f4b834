"""Stimuli: the events that change the scheduler's state, one frozen class per kind.

The I/O shell builds one from each incoming message (``from_msg``) and hands it to
``SchedulerState.handle``.  Every stimulus carries a ``stimulus_id`` so that each
transition it causes can be traced back to it (``SchedulerState.story``).

They are frozen msgspec Structs, as the wire's messages: one is built per message (0.15 us
against 0.8 for a frozen slotted dataclass), and defining the module's classes takes 1 ms
instead of 20 at each scheduler's start.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from runtime.comm.messages import StoreRef, TaskSpec, Value

__all__ = ["TaskSpec"]  # a task's description is the wire's own type


class Stimulus(msgspec.Struct, frozen=True):
    op: ClassVar[str] = ""
    stimulus_id: str


class UpdateGraph(Stimulus):
    op: ClassVar[str] = "update-graph"
    client: str
    tasks: tuple[TaskSpec, ...]
    #: keys the client holds futures for
    wanted: tuple[str, ...]
    #: user priority: higher runs first
    priority: int = 0
    #: the span the tasks were submitted in (``runtime.span``): its tags, outermost first, and
    #: the id of each level; empty outside any span.  The state machine ignores them.
    span_names: tuple[str, ...] = ()
    span_ids: tuple[str, ...] = ()


class UpdateData(Stimulus):
    """A client put a value: it is in memory at once, without a task."""

    op: ClassVar[str] = "update-data"
    client: str
    key: str
    value: Value
    nbytes: int


class TaskFinished(Stimulus):
    op: ClassVar[str] = "task-finished"
    key: str
    worker: str
    value: Value
    nbytes: int
    start: float = 0.0
    stop: float = 0.0
    #: hinted dependents the worker started with this value, at once
    started: tuple[str, ...] = ()
    #: seconds the worker spent getting its inputs
    transfer: float = 0.0


class TaskErred(Stimulus):
    op: ClassVar[str] = "task-erred"
    key: str
    worker: str
    exception: bytes  # the pickled exception
    traceback: str  # the remote traceback, as text
    exception_text: str  # str(exception), for messages and status pages
    start: float = 0.0
    stop: float = 0.0


class LongRunning(Stimulus):
    """The task ``key`` seceded from its worker's threads (``runtime.secede()``, or a ``get``
    inside it): it runs on, but no longer holds a thread, so its slot takes another task."""

    op: ClassVar[str] = "long-running"
    key: str
    worker: str


class RequestSteals(Stimulus):
    """Work stealing's policy (``stealing.balance``) found tasks to move: ask each victim to
    give its task up.  Each suggestion is checked again before it is acted on."""

    op: ClassVar[str] = "request-steals"
    #: (key, victim's address, thief's address)
    moves: tuple[tuple[str, str, str], ...]


class StealResponse(Stimulus):
    """A victim answered a steal request: ``state`` is what ``key`` was on it ("queued":
    dropped, so the thief runs it; "executing" or "gone": it keeps it, or finished it)."""

    op: ClassVar[str] = "steal-response"
    key: str
    worker: str
    #: the id of the request it answers (the RequestSteals' stimulus id)
    request: str
    state: str


class MissingData(Stimulus):
    """A worker could not read a stored dependency of ``key`` (the copy at ``value`` is gone)."""

    op: ClassVar[str] = "missing-data"
    key: str
    worker: str
    dependency: str
    value: Value


class AddReplica(Stimulus):
    """A node fetched a copy of ``key``'s stored value into its own store, as ``name``."""

    op: ClassVar[str] = "add-replica"
    key: str
    node: str
    name: str
    #: the copy it was made from
    source: StoreRef


class DropReplicas(Stimulus):
    """The active memory manager found copies nobody needs: free them (each checked again)."""

    op: ClassVar[str] = "drop-replicas"
    #: (key, node, name of the copy in that node's store)
    replicas: tuple[tuple[str, str, str], ...]


class AddWorker(Stimulus):
    op: ClassVar[str] = "add-worker"
    address: str
    node: str
    nthreads: int = 1
    pid: int = 0
    host: str = ""
    resources: dict[str, float] = msgspec.field(default_factory=dict)
    #: bytes it may use; 0 when unknown
    memory_limit: int = 0


class RemoveWorker(Stimulus):
    op: ClassVar[str] = "remove-worker"
    address: str
    #: why it left, in words a user can act on (exit code, signal, ...)
    cause: str = "connection closed"
    #: the tasks it was executing when it died, when known: only they are suspicious
    executing: tuple[str, ...] | None = None


class WorkerHeartbeat(Stimulus):
    """A worker's periodic report of its memory."""

    op: ClassVar[str] = "worker-heartbeat"
    address: str
    #: its own memory (resident, not shared) and its resident set, in bytes
    memory: int
    rss: int = 0


class WorkerStatusChange(Stimulus):
    """A worker paused (short of memory) or runs again; or the scheduler retires it."""

    op: ClassVar[str] = "worker-status"
    address: str
    #: "running", "paused" or "closing_gracefully"
    status: str
    memory: int = 0
    #: the scheduler itself (retiring): only it takes a worker out of closing_gracefully
    by_scheduler: bool = False


class NodeHeartbeat(Stimulus):
    """A node agent's periodic report of its store: bytes in shared memory, spilled, and its limit."""

    op: ClassVar[str] = "heartbeat"
    node: str
    used: int
    spilled: int
    limit: int
    #: of ``used``, the bytes of freed files kept for reuse
    pooled: int = 0


class AddNode(Stimulus):
    """A node agent joined: its store can hold objects."""

    op: ClassVar[str] = "add-node"
    node: str
    #: where its agent serves objects to other nodes
    address: str = ""


class RemoveNode(Stimulus):
    """A node agent left: what only its store held is lost."""

    op: ClassVar[str] = "remove-node"
    node: str
    cause: str = "connection closed"


class AddClient(Stimulus):
    op: ClassVar[str] = "add-client"
    client: str


class RemoveClient(Stimulus):
    op: ClassVar[str] = "remove-client"
    client: str


class ClientReleasesKeys(Stimulus):
    op: ClassVar[str] = "release-keys"
    client: str
    keys: tuple[str, ...] = ()


class Cancel(Stimulus):
    """Stop computing ``keys`` and their dependents (for every client with ``force``)."""

    op: ClassVar[str] = "cancel"
    client: str
    keys: tuple[str, ...] = ()
    force: bool = False


class RerunTasks(Stimulus):
    """Compute ``keys`` again: each in memory or processing is released, and runs again when
    something needs it, as a lost value does (an extension's restart: a shuffle's whose
    shards were lost, ``rerun.py``)."""

    op: ClassVar[str] = "rerun-tasks"
    keys: tuple[str, ...] = ()


class Retry(Stimulus):
    """Run failed ``keys`` again: from the erred tasks they failed because of (Dask's ``retry``)."""

    op: ClassVar[str] = "retry"
    client: str
    keys: tuple[str, ...] = ()
