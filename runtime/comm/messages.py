"""The wire protocol: every message between client, scheduler, node agent and worker.

Each message is a typed record declared once here (a ``msgspec.Struct``), encoded as a
msgpack array whose first element is its ``op``: ``["task-finished", key, value, ...]``.
That is as compact as hand-built lists, and decoding checks every field's type, so a
malformed or hostile message is refused at the edge with an error naming its op and
field, before any state sees it.

A frame carries a list of messages (``codec``).  Each receiving side decodes with the union
of the messages it accepts (``TO_SCHEDULER``, ``TO_WORKER``, ...), then dispatches on the
record's type through a table.  ``docs/architecture.md``'s message table is checked
against these unions by ``tests/test_messages.py``.

A value on the wire (``Value``) is either its pickle inline (``bytes``, small values) or a
``StoreRef`` naming where it is stored: the node, its size and its name in that node's
shared-memory store.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

import msgspec

from runtime.comm.codec import ProtocolError
from runtime.objstore.store import OBJECT_NAME

#: the name of an object in a node's store: checked as it decodes, since agents make paths of it
ObjectName = Annotated[str, msgspec.Meta(pattern=f"^{OBJECT_NAME.pattern}$")]


class StoreRef(msgspec.Struct, array_like=True, frozen=True):
    """Where a stored value is: in the store of ``node``, ``nbytes`` long, as ``name``."""

    node: str
    nbytes: int
    name: ObjectName


#: a topic, a span's tag or id: a string that must not be empty
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

#: a value's wire form: its pickle inline, or where it is stored
Value = Union[bytes, StoreRef]  # noqa: UP007 - msgspec reads the annotation at run time


class TaskSpec(msgspec.Struct, array_like=True, frozen=True):
    """A task as a client describes it: how to run it and what it needs (one type, built by
    ``client.task_spec``, read by the scheduler as part of ``UpdateGraph``)."""

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


class Message(msgspec.Struct, array_like=True, frozen=True, tag_field="op"):
    """Base of every message; a subclass's ``tag`` is its ``op`` on the wire."""


def op_of(cls: type[Message]) -> str:
    return cls.__struct_config__.tag  # type: ignore[return-value]


# -- client -> scheduler -------------------------------------------------------------------


class RegisterClient(Message, tag="register-client"):
    client: str


class RegisterChannel(Message, tag="register-channel"):
    """Opens a direct request channel of ``client`` (connected already): one per user thread,
    carrying only its ``Request``s, answered on it (``runtime/client/channel.py``)."""

    client: str


class SpanPath(msgspec.Struct, array_like=True, frozen=True):
    """The span tasks were submitted in (``runtime.span``): its tags, outermost first, and the
    id of each level (the innermost span is the last)."""

    names: tuple[NonEmpty, ...]
    ids: tuple[NonEmpty, ...]

    def __post_init__(self) -> None:  # a ValueError here is a decoding error naming the field
        if not self.names or len(self.names) != len(self.ids):
            raise ValueError(f"a span needs one id per tag: tags {self.names!r}, ids {self.ids!r}")


class UpdateGraph(Message, tag="update-graph"):
    tasks: tuple[TaskSpec, ...]
    #: keys the client holds futures for
    wanted: tuple[str, ...]
    #: user priority: higher runs first
    priority: int = 0
    #: the span they were submitted in, if any (the spans extension tags them; the state machine ignores it)
    span: SpanPath | None = None


class UpdateData(Message, tag="update-data"):
    """A client put a value: it is in memory at once, without a task."""

    key: str
    value: Value
    nbytes: int


class ReleaseKeys(Message, tag="release-keys"):
    keys: tuple[str, ...]


class Cancel(Message, tag="cancel"):
    keys: tuple[str, ...]
    force: bool = False
    #: interrupt the tasks it takes off a worker mid-run between bytecodes, without restarting
    #: the worker (Ray's plain cancel); ``force`` interrupts them at any cost
    interrupt: bool = False


class Request(Message, tag="request"):
    """A question to the scheduler (its handlers: ``server.REQUESTS``), answered by ``Reply``."""

    reqid: int
    what: str
    args: dict[str, Any] = {}
    #: False: nobody waits for the answer (``ClusterClient.tell``), so none is sent
    answer: bool = True


class Ping(Message, tag="ping"):
    """A client making sure the scheduler is there (answered by ``Pong``)."""


class CloseCluster(Message, tag="close-cluster"):
    """``runtime stop``: the scheduler tells every node agent to close."""


# -- worker -> scheduler -------------------------------------------------------------------


class RegisterWorker(Message, tag="register-worker"):
    address: str
    node: str
    nthreads: int = 1
    pid: int = 0
    host: str = ""
    resources: dict[str, float] = {}
    #: bytes it may use; 0 when unknown
    memory_limit: int = 0


class TaskFinished(Message, tag="task-finished"):
    key: str
    value: Value
    nbytes: int
    start: float = 0.0
    stop: float = 0.0
    #: the hinted dependents (``compute-task``'s ``after``) the worker started with this value
    started: tuple[str, ...] = ()
    #: seconds it spent getting its inputs (fetched from other nodes, and read)
    transfer: float = 0.0


class Raised(Message):
    """What a task or an actor call raised (the fields of ``task-erred`` and ``actor-error``)."""

    key: str
    #: the pickled exception
    exception: bytes
    #: the remote traceback, as text
    traceback: str
    #: str(exception), for messages and status pages
    text: str
    start: float = 0.0
    stop: float = 0.0


class TaskErred(Raised, tag="task-erred"):
    pass


class MissingData(Message, tag="missing-data"):
    """A worker could not read a stored input of ``key``: the copy at ``value`` is gone."""

    key: str
    dependency: str
    value: Value


class WorkerHeartbeat(Message, tag="worker-heartbeat"):
    #: its own memory (resident, not shared) and its resident set, in bytes
    memory: int
    rss: int = 0


class WorkerStatus(Message, tag="worker-status"):
    #: "running" or "paused"
    status: str
    memory: int = 0


class ActorStarted(Message, tag="actor-started"):
    actor: str
    worker: str
    #: where the actor's worker serves direct calls
    address: str


class RunResult(Message, tag="run-result"):
    """A worker's answer to ``Run``: ``["ok", pickled result]`` or ``["error", exception, traceback]``."""

    run_id: int
    answer: tuple[Any, ...]


class LongRunning(Message, tag="long-running"):
    """The task ``key`` seceded from its worker's threads (``runtime.secede()``, or a wait
    inside it): it runs on without holding a thread, so its slot may take another task."""

    key: str


class StealResponse(Message, tag="steal-response"):
    """A worker's answer to ``steal-request``: what ``key`` was on it when asked.  "queued"
    (received, not started: it dropped it, the thief may run it), "executing" (started,
    seceded ones too: it keeps it) or "gone" (finished already; its result went before)."""

    key: str
    #: the request's id, as the scheduler sent it
    request: str
    state: str


# -- node agent -> scheduler ---------------------------------------------------------------


class RegisterNode(Message, tag="register-node"):
    node: str
    #: its store's name prefix
    prefix: str
    host: str = ""
    pid: int = 0
    #: where its agent serves objects to other nodes
    address: str = ""
    nworkers: int = 0
    nthreads: int = 0
    memory_limit: int = 0
    #: where its store spills (a driver that joins by address reads spilled objects there)
    spill_dir: str = ""


class Heartbeat(Message, tag="heartbeat"):
    """A node agent is alive; how full its store is (bytes in shared memory, spilled, limit)."""

    node: str
    used: int
    spilled: int
    limit: int
    #: of ``used``, the bytes of freed files kept for reuse (the store's pool)
    pooled: int = 0


class WorkerDied(Message, tag="worker-died"):
    """Why one of the agent's workers died (exit code, signal, last log lines) and what it ran."""

    address: str
    cause: str
    executing: tuple[str, ...] = ()


class AddReplica(Message, tag="add-replica"):
    """The agent fetched a copy of ``key``'s stored value into its store, as ``name``."""

    key: str
    node: str
    name: ObjectName
    #: the copy it was made from
    source: StoreRef


# -- scheduler -> client -------------------------------------------------------------------


class Registered(Message, tag="registered"):
    scheduler: str


class KeyInMemory(Message, tag="key-in-memory"):
    key: str
    value: Value
    nbytes: int


class KeyErred(Message, tag="key-erred"):
    """A task failed (``blame`` is the task that raised: ``key`` itself or one it needed)."""

    key: str
    exception: bytes
    traceback: str
    text: str
    blame: str = ""
    #: the worker(s) it failed on
    worker: str = ""


class CancelledKeys(Message, tag="cancelled-keys"):
    keys: tuple[str, ...]


class LostKeys(Message, tag="lost-keys"):
    """Their only copies were on a node that left: they are being recomputed."""

    keys: tuple[str, ...]


class Reply(Message, tag="reply"):
    reqid: int
    result: Any


class SchedulerError(Message, tag="scheduler-error"):
    """The state machine failed: nothing pending will finish."""

    text: str


class Pong(Message, tag="pong"):
    pass


# -- scheduler -> worker -------------------------------------------------------------------


class ComputeTask(Message, tag="compute-task"):
    key: str
    run_spec: tuple[bytes, bytes]
    priority: int
    #: every input's wire form
    deps: dict[str, Value]
    #: where to fetch inputs stored on other nodes only: node -> its agent's address
    sources: dict[str, str] = {}
    resources: dict[str, float] | None = None
    #: a hint: run this once the task ``after`` (its last input not in memory) finishes on
    #: this worker, with that value, and say so in that task's ``task-finished`` (``started``);
    #: the scheduler may revoke it (``cancel-compute``) until then
    after: str = ""


class CancelCompute(Message, tag="cancel-compute"):
    key: str


class StealRequest(Message, tag="steal-request"):
    """Work stealing: give ``key`` up if it has not started (answered with ``steal-response``)."""

    key: str
    #: the id the answer names, so a late answer to an older request is told apart
    request: str


class Interrupt(Message, tag="interrupt"):
    """Cancel: stop the task ``key`` if it is running; with ``hard`` (a forced cancel), by
    restarting the worker if it does not stop."""

    key: str
    hard: bool = True


class KillActor(Message, tag="kill-actor"):
    actor: str
    reason: str


class PluginAdd(Message, tag="plugin-add"):
    name: str
    plugin: bytes


class Run(Message, tag="run"):
    """``Client.run``: call the pickled function out of band and answer with ``RunResult``."""

    run_id: int
    function: bytes


class Restart(Message, tag="restart"):
    client: str = ""


# -- scheduler -> node agent ---------------------------------------------------------------


class FreeObjects(Message, tag="free-objects"):
    names: tuple[str, ...]


class StartWorkers(Message, tag="start-workers"):
    n: int


class StopWorkers(Message, tag="stop-workers"):
    addresses: tuple[str, ...]


class AcquireReplicas(Message, tag="acquire-replicas"):
    """Copy these objects into this node's store: (key, where it is, its agent's address)."""

    objects: tuple[tuple[str, StoreRef, str], ...]


class Close(Message, tag="close"):
    pass


class HeartbeatAck(Message, tag="heartbeat-ack"):
    pass


# -- the scheduler's extensions (scheduler/extensions/, client/event_log.py, client/pubsub.py) --


class PubsubMsg(Message, tag="pubsub-msg"):
    """One message published to ``topic`` (``Pub.put``): client -> scheduler, which relays the
    same record to every client subscribed to the topic (scheduler -> client); or, from a
    publisher in a worker process, straight to a subscriber's worker process (its actor server)."""

    topic: NonEmpty
    #: the pickled message: the scheduler only copies it
    msg: bytes


class PubsubTargets(Message, tag="pubsub-targets"):
    """Scheduler -> a client publishing ``topic`` from a worker process: where its subscribers
    are now.  ``addresses``: the worker processes to send to directly; ``relay``: some are
    reachable only through the scheduler (drivers).  ``version`` orders the updates."""

    topic: NonEmpty
    addresses: tuple[str, ...]
    relay: bool
    version: int


class LoggedEvent(Message, tag="event"):
    """An event logged under ``topic`` (``log_event``), pushed to a client subscribed to it
    (``subscribe_topic``): the scheduler's time and the message (anything msgpack carries)."""

    topic: str
    time: float
    msg: Any


# -- client <-> an actor's worker (direct calls) ------------------------------------------


class ActorCall(Message, tag="actor-call"):
    key: str
    actor: str
    method: str
    #: the pickled (args, kwargs)
    args: bytes
    #: the wire forms of the futures among the arguments
    deps: dict[str, Value] = {}
    #: where to fetch arguments stored on other nodes only: node -> its agent's address
    sources: dict[str, str] = {}
    #: with ``num_returns``: the keys of its results, one per item of what the method
    #: returns (each answered by its own ``ActorResult``/``ActorError``); empty: just ``key``
    returns: tuple[str, ...] = ()

    def result_keys(self) -> tuple[str, ...]:
        """The keys this call's results come back under."""
        return self.returns or (self.key,)


class ActorResult(Message, tag="actor-result"):
    key: str
    value: Value
    nbytes: int


class ActorError(Raised, tag="actor-error"):
    pass


# -- a node agent's object server (objstore/transfer.py) -----------------------------------


class Fetch(Message, tag="fetch"):
    """From this node's processes: copy ``key``'s value here from ``located``'s node."""

    key: str
    located: StoreRef
    #: the address of the agent that holds it, if the asker knows it
    source: str | None = None


class Fetched(Message, tag="fetched"):
    name: ObjectName


class FetchFailed(Message, tag="fetch-failed"):
    error: str


class GetObject(Message, tag="get-object"):
    """Send me the raw bytes of this object of your store (``length`` bytes from ``offset``:
    one shard of a shuffle's shard file; -1 to its end)."""

    name: ObjectName
    offset: int = 0
    length: int = -1


class Object(Message, tag="object"):
    """The object's raw bytes follow: ``size`` of them."""

    size: int


class ObjectMissing(Message, tag="object-missing"):
    error: str


class PutObject(Message, tag="put-object"):
    """From a client with no store on its host: store ``size`` raw bytes as ``key``'s value."""

    key: str
    size: int


class Ready(Message, tag="ready"):
    """Room is reserved: send the bytes."""


class PutFailed(Message, tag="put-failed"):
    error: str


class Stored(Message, tag="stored"):
    name: ObjectName


# -- node agent <-> its worker fork server (``worker/forkserver.py``), one per packet ------


class ForkWorker(Message, tag="fork-worker"):
    """Fork a worker that runs ``python -m runtime.worker ARGV`` in this environment; its stdin
    pipe and log file travel beside the message, as file descriptors."""

    id: int
    argv: tuple[str, ...]
    env: dict[str, str]


class ForkServerReady(Message, tag="fork-server-ready"):
    """The template has imported the runtime and forks from now on."""

    pid: int


class Forked(Message, tag="forked"):
    id: int
    pid: int


class ForkFailed(Message, tag="fork-failed"):
    id: int
    error: str


class WorkerExited(Message, tag="worker-exited"):
    """A forked worker was reaped: its exit code, or minus the signal that ended it."""

    pid: int
    code: int


_PATH = re.compile(r" - at `\$\[(\d+)\](?:\[(\d+)\])?")


class Decoder:
    """Decodes a frame's payload into messages of ``kinds``; errors name the op and field."""

    def __init__(self, *kinds: type[Message]):
        self.kinds = kinds
        self._decoder = msgspec.msgpack.Decoder(list[Union[kinds]])  # type: ignore[valid-type]  # noqa: UP007
        self._by_op = {op_of(k): k for k in kinds}

    def decode(self, payload: bytes) -> list[Message]:
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError as e:
            raise MalformedMessage(self._explain(payload, str(e))) from None
        except msgspec.DecodeError as e:
            raise MalformedMessage(f"undecodable frame ({e})") from None

    def _explain(self, payload: bytes, error: str) -> str:
        """msgspec says ``... - at `$[2][3]```: say which message's op and which field that is."""
        where = _PATH.search(error)
        if where is None:
            return f"malformed frame: {error} (a frame is a list of messages)"
        what = error[: where.start()]
        try:
            msg = msgspec.msgpack.decode(payload)[int(where.group(1))]
        except Exception:  # the frame is too broken to say more
            return f"malformed frame: {error}"
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
            return f"malformed message: {what} (a message is an array: [op, field, ...])"
        op = msg[0]
        cls = self._by_op.get(op)
        if cls is None:
            accepted = ", ".join(sorted(self._by_op))
            return f"unknown op {op!r} (this side accepts: {accepted})"
        fields = cls.__struct_fields__
        if where.group(2) is None:
            return f"malformed {op!r} message: {what} (its fields: {', '.join(fields)})"
        j = int(where.group(2))
        named = f"field {fields[j - 1]!r}" if 0 < j <= len(fields) else f"element {j}"
        return f"malformed {op!r} message: {named}: {what}"


class MalformedMessage(ProtocolError):
    """A message that does not match its type (the receiver drops that connection)."""


#: what each kind of receiver accepts
TO_SCHEDULER = Decoder(
    RegisterClient, RegisterChannel, UpdateGraph, UpdateData, ReleaseKeys, Cancel, Request, Ping, CloseCluster,
    RegisterWorker, TaskFinished, TaskErred, MissingData, WorkerHeartbeat, WorkerStatus, ActorStarted, RunResult,
    LongRunning, StealResponse,
    RegisterNode, Heartbeat, WorkerDied, AddReplica,
    PubsubMsg,
)  # fmt: skip
TO_CLIENT = Decoder(
    Registered, KeyInMemory, KeyErred, CancelledKeys, LostKeys, Reply, SchedulerError, Pong,
    PubsubMsg, PubsubTargets, LoggedEvent,
)  # fmt: skip
TO_WORKER = Decoder(Registered, ComputeTask, CancelCompute, StealRequest, Interrupt, KillActor, PluginAdd, Run, Restart)
TO_AGENT = Decoder(Registered, FreeObjects, StartWorkers, StopWorkers, AcquireReplicas, Close, HeartbeatAck)
TO_ACTOR_SERVER = Decoder(ActorCall, PubsubMsg)
FROM_ACTOR_SERVER = Decoder(ActorResult, ActorError)
TO_OBJECT_SERVER = Decoder(Fetch, GetObject, PutObject)
FROM_OBJECT_SERVER = Decoder(Fetched, FetchFailed, Object, ObjectMissing, Ready, PutFailed, Stored)
TO_FORK_SERVER = Decoder(ForkWorker)
FROM_FORK_SERVER = Decoder(ForkServerReady, Forked, ForkFailed, WorkerExited)
