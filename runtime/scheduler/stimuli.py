"""Stimuli: the events that change the scheduler's state, one frozen class per kind.

The I/O shell builds one from each incoming message (``from_msg``) and hands it to
``SchedulerState.handle``.  Every stimulus carries a ``stimulus_id`` so that each
transition it causes can be traced back to it (``SchedulerState.story``).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Stimulus:
    op: ClassVar[str] = ""
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of an ``update-graph``: how to run it and what it needs."""

    key: str
    #: serialized (callable, (args, kwargs)); the scheduler never unpickles it
    run_spec: tuple[bytes, bytes]
    dependencies: tuple[str, ...] = ()
    retries: int = 0
    #: the name shared by tasks of one function, for duration estimates and display
    prefix: str = ""
    #: worker addresses or host names that may run it
    workers: tuple[str, ...] = ()
    #: abstract resources it needs, e.g. {"GPU": 1}
    resources: dict[str, float] | None = None
    #: run elsewhere when no worker meets the restrictions
    allow_other_workers: bool = False

    @classmethod
    def from_wire(cls, t: list) -> TaskSpec:
        """``[key, func, args, deps, retries, prefix]`` plus an optional dict of restrictions."""
        extra = t[6] if len(t) > 6 else {}
        return cls(
            t[0], (t[1], t[2]), tuple(t[3]), t[4], t[5],
            tuple(extra.get("workers", ())), extra.get("resources"), bool(extra.get("allow_other_workers", False)),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class UpdateGraph(Stimulus):
    op: ClassVar[str] = "update-graph"
    client: str
    tasks: tuple[TaskSpec, ...]
    #: keys the client holds futures for
    wanted: tuple[str, ...]
    #: user priority: higher runs first
    priority: int = 0


@dataclass(frozen=True, slots=True)
class UpdateData(Stimulus):
    """A client put a value: it is in memory at once, without a task."""

    op: ClassVar[str] = "update-data"
    client: str
    key: str
    value: Any  # wire form of a located value (inline bytes or [node, nbytes])
    nbytes: int


@dataclass(frozen=True, slots=True)
class TaskFinished(Stimulus):
    op: ClassVar[str] = "task-finished"
    key: str
    worker: str
    value: Any
    nbytes: int
    start: float = 0.0
    stop: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskErred(Stimulus):
    op: ClassVar[str] = "task-erred"
    key: str
    worker: str
    exception: bytes  # the pickled exception
    traceback: str  # the remote traceback, as text
    exception_text: str  # str(exception), for messages and status pages
    start: float = 0.0
    stop: float = 0.0


@dataclass(frozen=True, slots=True)
class MissingData(Stimulus):
    """A worker could not read a stored dependency of ``key`` (the copy at ``value`` is gone)."""

    op: ClassVar[str] = "missing-data"
    key: str
    worker: str
    dependency: str
    value: Any


@dataclass(frozen=True, slots=True)
class AddReplica(Stimulus):
    """A node fetched a copy of ``key``'s stored value into its own store, as ``name``."""

    op: ClassVar[str] = "add-replica"
    key: str
    node: str
    name: str
    #: the copy it was made from, [node, nbytes, name]
    source: Any


@dataclass(frozen=True, slots=True)
class DropReplicas(Stimulus):
    """The active memory manager found copies nobody needs: free them (each checked again)."""

    op: ClassVar[str] = "drop-replicas"
    #: (key, node, name of the copy in that node's store)
    replicas: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class AddWorker(Stimulus):
    op: ClassVar[str] = "add-worker"
    address: str
    node: str
    nthreads: int = 1
    pid: int = 0
    host: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    #: bytes it may use; 0 when unknown
    memory_limit: int = 0


@dataclass(frozen=True, slots=True)
class RemoveWorker(Stimulus):
    op: ClassVar[str] = "remove-worker"
    address: str
    #: why it left, in words a user can act on (exit code, signal, ...)
    cause: str = "connection closed"
    #: the tasks it was executing when it died, when known: only they are suspicious
    executing: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat(Stimulus):
    """A worker's periodic report of its memory."""

    op: ClassVar[str] = "worker-heartbeat"
    address: str
    #: its own memory (resident, not shared) and its resident set, in bytes
    memory: int
    rss: int = 0


@dataclass(frozen=True, slots=True)
class WorkerStatusChange(Stimulus):
    """A worker paused (short of memory) or runs again; or the scheduler retires it."""

    op: ClassVar[str] = "worker-status"
    address: str
    #: "running", "paused" or "closing_gracefully"
    status: str
    memory: int = 0
    #: the scheduler itself (retiring): only it takes a worker out of closing_gracefully
    by_scheduler: bool = False


@dataclass(frozen=True, slots=True)
class NodeHeartbeat(Stimulus):
    """A node agent's periodic report of its store: bytes in shared memory, spilled, and its limit."""

    op: ClassVar[str] = "heartbeat"
    node: str
    used: int
    spilled: int
    limit: int


@dataclass(frozen=True, slots=True)
class AddNode(Stimulus):
    """A node agent joined: its store can hold objects."""

    op: ClassVar[str] = "add-node"
    node: str
    #: where its agent serves objects to other nodes
    address: str = ""


@dataclass(frozen=True, slots=True)
class RemoveNode(Stimulus):
    """A node agent left: what only its store held is lost."""

    op: ClassVar[str] = "remove-node"
    node: str
    cause: str = "connection closed"


@dataclass(frozen=True, slots=True)
class AddClient(Stimulus):
    op: ClassVar[str] = "add-client"
    client: str


@dataclass(frozen=True, slots=True)
class RemoveClient(Stimulus):
    op: ClassVar[str] = "remove-client"
    client: str


@dataclass(frozen=True, slots=True)
class ClientReleasesKeys(Stimulus):
    op: ClassVar[str] = "release-keys"
    client: str
    keys: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Cancel(Stimulus):
    """Stop computing ``keys`` and their dependents (for every client with ``force``)."""

    op: ClassVar[str] = "cancel"
    client: str
    keys: tuple[str, ...] = field(default=())
    force: bool = False


def _quick_init(cls: type) -> type:
    """Give a frozen slotted dataclass an ``__init__`` that stores through its slots' descriptors.

    The same signature and defaults as the one ``dataclass`` writes, at half the cost: that
    one calls ``object.__setattr__`` per field (``frozen`` blocks plain assignment).  For the
    stimuli made once or more per task, where the cost adds up over a large graph.
    """
    fs = fields(cls)
    assert all(f.default_factory is MISSING for f in fs), cls
    params = ", ".join(f.name if f.default is MISSING else f"{f.name}=_d_{f.name}" for f in fs)
    body = "".join(f"    _s_{f.name}(self, {f.name})\n" for f in fs)
    ns: dict[str, Any] = {f"_s_{f.name}": getattr(cls, f.name).__set__ for f in fs}
    ns |= {f"_d_{f.name}": f.default for f in fs if f.default is not MISSING}
    exec(f"def __init__(self, {params}) -> None:\n{body}", ns)  # as dataclass itself does
    ns["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = ns["__init__"]  # type: ignore[misc]
    return cls


for _cls in (TaskSpec, TaskFinished, TaskErred):
    _quick_init(_cls)
