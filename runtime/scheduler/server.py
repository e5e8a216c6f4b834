"""The scheduler's I/O shell: connections in, stimuli to the state machine, messages out.

Every connection starts with one ``register-*`` message saying who it is (client, worker
or node agent).  After that, each message whose ``op`` names a stimulus becomes one and
goes to ``SchedulerState.handle``; the messages it returns are queued on the right
connections and leave batched (``Comm.send``).  A few ops are queries answered on the
same connection (``reply`` with the request's ``reqid``).  A closed connection is itself a
stimulus: ``remove-client``, ``remove-worker`` or ``remove-node``.

Node agents send ``heartbeat`` every second or so and get ``heartbeat-ack`` back; a node
silent for longer than its timeout is removed with its workers (``liveness.py``).

Whatever a peer sends is checked before it is acted on: a frame that does not decode, a
first message that is not a registration, an unknown op, a message missing a field or
holding the wrong type of value (``comm/messages.py`` checks each as it decodes), or one
that kind of peer does not send (``_SENT_BY``) drops that one connection with a logged
reason.  Everyone else is served as before.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec

from runtime import config
from runtime.comm import messages as m
from runtime.comm.codec import ProtocolError
from runtime.comm.core import Comm, listen
from runtime.dashboard.service import Dashboard
from runtime.scheduler import amm, holders, placement, record, retire, sampler, stealing
from runtime.scheduler import stimuli as st
from runtime.scheduler.actor_lifetime import ActorLifetime
from runtime.scheduler.actors import ACTORS_CLIENT, ActorRegistry
from runtime.scheduler.channels import Channels
from runtime.scheduler.handlers import registers
from runtime.scheduler.liveness import Liveness, heartbeat_settings
from runtime.scheduler.plugins import Plugins
from runtime.scheduler.state import Msgs, SchedulerState
from runtime.scheduler.status import cluster_status
from runtime.scheduler.worker_runs import WorkerRuns

logger = logging.getLogger("runtime.scheduler")

#: seconds a new connection has to send its registration
REGISTRATION_TIMEOUT = 10.0
#: how long a closed worker connection waits for its node agent to say why it died
DEATH_REPORT_GRACE = 0.5


def _update_graph(msg: m.UpdateGraph, peer: str, sid: str) -> st.UpdateGraph:
    names, ids = (msg.span.names, msg.span.ids) if msg.span is not None else ((), ())
    return st.UpdateGraph(sid, peer, msg.tasks, msg.wanted, msg.priority, names, ids)


#: message type -> how to build its stimulus from (message, the sender's id, stimulus id)
_STIMULI: dict[type, Callable[[Any, str, str], st.Stimulus]] = {
    m.UpdateGraph: _update_graph,
    m.UpdateData: lambda msg, peer, sid: st.UpdateData(sid, peer, msg.key, msg.value, msg.nbytes),
    m.ReleaseKeys: lambda msg, peer, sid: st.ClientReleasesKeys(sid, peer, msg.keys),
    m.Cancel: lambda msg, peer, sid: st.Cancel(sid, peer, msg.keys, msg.force),
    m.TaskFinished: lambda msg, peer, sid: st.TaskFinished(
        sid, msg.key, peer, msg.value, msg.nbytes, msg.start, msg.stop, msg.started, msg.transfer
    ),
    m.TaskErred: lambda msg, peer, sid: st.TaskErred(
        sid, msg.key, peer, msg.exception, msg.traceback, msg.text, msg.start, msg.stop
    ),
    m.LongRunning: lambda msg, peer, sid: st.LongRunning(sid, msg.key, peer),
    m.StealResponse: lambda msg, peer, sid: st.StealResponse(sid, msg.key, peer, msg.request, msg.state),
    m.MissingData: lambda msg, peer, sid: st.MissingData(sid, msg.key, peer, msg.dependency, msg.value),
    m.WorkerHeartbeat: lambda msg, peer, sid: st.WorkerHeartbeat(sid, peer, msg.memory, msg.rss),
    m.WorkerStatus: lambda msg, peer, sid: st.WorkerStatusChange(sid, peer, msg.status, msg.memory),
    m.AddReplica: lambda msg, peer, sid: st.AddReplica(sid, msg.key, msg.node, msg.name, msg.source),
    # a node agent's: it is alive (liveness, see _on_heartbeat) and how full its store is
    m.Heartbeat: lambda msg, peer, sid: st.NodeHeartbeat(sid, peer, msg.used, msg.spilled, msg.limit, msg.pooled),
}

#: which messages each kind of peer may send after its registration
_SENT_BY = {
    "client": (
        m.UpdateGraph, m.UpdateData, m.ReleaseKeys, m.Cancel, m.Request, m.Ping, m.CloseCluster,
        m.PubsubMsg,  # handled by an extension (MESSAGES)
    ),
    "worker": (
        m.TaskFinished, m.TaskErred, m.MissingData, m.WorkerHeartbeat, m.WorkerStatus, m.ActorStarted,
        m.RunResult, m.LongRunning, m.StealResponse, m.Request,
    ),
    "node": (m.Heartbeat, m.WorkerDied, m.AddReplica, m.Request),
}  # fmt: skip


def _setting(given: Any, key: str) -> Any:
    return config.get(key) if given is None else given


class PeerError(Exception):
    """A peer broke the protocol; its connection is dropped with this reason."""


class Scheduler:
    """Holds a ``SchedulerState`` and performs what it returns."""

    def __init__(
        self, *, validate: bool | None = None, allowed_failures: int | None = None,
        worker_saturation: float | None = None, amm_interval: float | None = None,
        transition_log_length: int | None = None, record_to: str | None = None,
        dashboard_address: str | None = None, work_stealing: bool | None = None,
    ):  # fmt: skip
        """Each setting not given is the config tree's (``scheduler.*``), but the dashboard:
        served at ``dashboard_address`` (``host:port``) only when given."""
        settings = dict(
            allowed_failures=_setting(allowed_failures, "scheduler.allowed-failures"),
            worker_saturation=_setting(worker_saturation, "scheduler.worker-saturation"),
            round_trip=config.get("scheduler.round-trip"),
            worker_saturation_cap=config.get("scheduler.worker-saturation-cap"),
            chain_hints=config.get("scheduler.chain-hints"),
            transition_log_length=_setting(transition_log_length, "scheduler.transition-log-length"),
        )  # fmt: skip
        self.state = SchedulerState(validate=_setting(validate, "scheduler.validate"), **settings)
        #: every stimulus handled, written down for ``runtime replay`` (``record_to``: its file)
        self.stimulus_log = (
            record.StimulusLog(record_to, settings, config.get("scheduler.record-messages")) if record_to else None
        )
        #: open connections by client id, worker address or node id
        self.comms: dict[str, Comm] = {}
        #: clients' direct request channels (one per user thread that asks)
        self.channels = Channels(self)
        #: what each node agent told us about itself (its RegisterNode's fields: store prefix, host, pid)
        self.node_info: dict[str, dict] = {}
        self.address = ""
        #: when it started (time.time()), as Dask's scheduler_info()["started"]
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None
        #: why workers died and what they ran, as their agents reported, before their connection closed
        self._death_reports: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: workers whose connection closed, removed when their agent reports or the grace ends
        self._awaiting_report: dict[str, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        self.heartbeat_interval, heartbeat_timeout = heartbeat_settings()
        #: when each node agent was last heard from
        self.liveness = Liveness(heartbeat_timeout, self.heartbeat_interval)
        #: seconds between runs of the active memory manager (0: off)
        self.amm_interval = _setting(amm_interval, "scheduler.amm-interval")
        #: whether idle workers take tasks queued on busy ones (stealing.py), and how often
        self.work_stealing: bool = _setting(work_stealing, "scheduler.work-stealing")
        self.work_stealing_interval: float = config.get("scheduler.work-stealing-interval")
        #: nodes being retired: the active memory manager keeps the copies of their values
        self.retiring_nodes: set[str] = set()
        #: workers stopped on purpose: their connection closing is no death
        self.retired: set[str] = set()
        #: memory samplings running for clients, by id
        self.samplings: dict[str, sampler.Sampling] = {}
        self._background: list[asyncio.Task] = []
        #: pickled worker plugins by name, sent to every worker that joins (Client.register_plugin)
        self.worker_plugins: dict[str, bytes] = {}
        self.closed = asyncio.Event()
        #: where every actor lives; it creates them through the state machine as ACTORS_CLIENT
        self.actors = ActorRegistry(self.handle_stimulus, self.send_to)
        self.actors.lifetime = ActorLifetime(self, self.actors)
        #: Client.run calls waiting for their workers' answers
        self.runs = WorkerRuns(self._send)
        #: the first error the state machine raised, if any (the ``validate`` request reports it)
        self.first_failure = ""
        #: scheduler plugins (the extensions among them), told of what each stimulus did
        self.plugins = Plugins(self)
        #: the extensions (coordination primitives, datasets) by name; extensions.install fills it
        self.extensions: dict[str, Any] = {}
        #: per kind of peer (client, worker, node): message type -> handler
        self._handlers = self._handler_tables()
        #: called with each stimulus before the state machine handles it (the dashboard's records)
        self.on_stimulus: list[Callable[[st.Stimulus], None]] = []
        #: the HTTP dashboard, /metrics and /api/v1 (runtime/dashboard), or None
        self.dashboard = Dashboard(self, dashboard_address) if dashboard_address else None
        self.handle_stimulus(st.AddClient("add-client-actors", ACTORS_CLIENT))

    async def start(self, address: str, sock: socket.socket | None = None) -> str:
        """Listen at ``address`` (on ``sock``, if given: bound there by whoever started us)."""
        self._server, self.address = await listen(address, self._handle_comm, m.TO_SCHEDULER, sock)
        from runtime.scheduler import extensions  # its modules register their requests

        extensions.install(self)
        self._background.append(asyncio.ensure_future(self._remove_silent_nodes()))
        logger.info("scheduler listening at %s", self.address)
        if self.amm_interval > 0:
            self._background.append(asyncio.ensure_future(self._run_amm()))
        if self.work_stealing:
            self._background.append(asyncio.ensure_future(self._run_stealing()))
        if self.dashboard is not None:  # in the background: clients need not wait for it
            self._background.append(self.dashboard.begin())
        return self.address

    async def _run_amm(self) -> None:
        """The active memory manager's ReduceReplicas, every ``amm_interval`` seconds."""
        while True:
            await asyncio.sleep(self.amm_interval)
            self.retiring_nodes &= self.state.nodes.keys()  # those retired are gone
            drops = amm.reduce_replicas(self.state, frozenset(self.retiring_nodes))
            if drops:
                logger.info("active memory manager: dropping %d copies nobody needs", len(drops))
                self.handle_stimulus(st.DropReplicas(f"amm-{next(self._ids)}", tuple(drops)))

    async def _run_stealing(self) -> None:
        """Work stealing's policy every ``work_stealing_interval`` seconds; what it suggests goes
        to the state machine as a RequestSteals stimulus, which asks the victims."""
        while True:
            await asyncio.sleep(self.work_stealing_interval)
            if moves := stealing.balance(self.state):
                self.handle_stimulus(st.RequestSteals(f"steal-{next(self._ids)}", tuple(moves)))

    def send_to(self, peer: str, msg: m.Message) -> None:
        self._send({peer: [msg]})

    async def close(self) -> None:
        for task in (*self._background, *(s._task for s in self.samplings.values())):
            task.cancel()
        self.plugins.close()
        if self._server is not None:
            self._server.close()
        if self.dashboard is not None:
            await self.dashboard.close()
        for comm in list(self.comms.values()):
            comm.close()
        if self.stimulus_log is not None:
            self.stimulus_log.close()
        self.closed.set()

    def handle_stimulus(self, stimulus: st.Stimulus) -> None:
        # An update-graph makes ~10 long-lived objects per task and no garbage: the cyclic GC
        # would walk the growing heap again and again (a million-task graph: 17 us per task
        # instead of 7).  The state machine runs no user code, so the GC waits till it is done.
        for listener in self.on_stimulus:
            listener(stimulus)
        pause_gc = isinstance(stimulus, st.UpdateGraph) and gc.isenabled()
        if pause_gc:
            gc.disable()
        try:
            client_msgs, worker_msgs = self.state.handle(stimulus)
        except Exception as e:
            if self.stimulus_log is not None:
                self.stimulus_log.write(stimulus, None)
            # A bug in the state machine (validate=True finds these first).  Say so to every
            # client, so nobody waits forever on a task this scheduler can no longer track.
            logger.exception("scheduler state machine failed on %r", stimulus)
            text = f"the scheduler failed while handling {stimulus.stimulus_id}: {type(e).__name__}: {e}"
            self.first_failure = self.first_failure or text
            self._send({c: [m.SchedulerError(text)] for c in self.state.clients})
            return
        finally:
            if pause_gc:
                gc.enable()
        if self.stimulus_log is not None:
            log = self.stimulus_log
            log.write(stimulus, record.digest(client_msgs, worker_msgs, log.full_messages))
        self._send(client_msgs)
        self._send(worker_msgs)
        if self.state.dropped_watched:  # actors' handle keys: their last handles are gone
            self.actors.lifetime.dropped(self.state.take_dropped())
        if self.state.events:
            events, self.state.events = self.state.events, []
            for topic, msg in events:
                self.log_event(topic, msg)
        if isinstance(stimulus, (st.RemoveWorker, st.RemoveNode)):
            self.actors.workers_gone(self.state.workers, stimulus.cause)
        elif isinstance(stimulus, st.RemoveClient):
            self.actors.client_gone(stimulus.client)
            self.channels.client_gone(stimulus.client)
            for sid in [sid for sid, s in self.samplings.items() if s.client == stimulus.client]:
                self.samplings.pop(sid).stop()
        self.plugins.after(stimulus)

    def log_event(self, topic: str, msg: Any) -> None:
        """Log ``msg`` on ``topic`` in the event log, as a client's ``log_event`` (Dask's ``Scheduler.log_event``)."""
        ext = self.extensions.get("event_log")
        if ext is not None:
            self._send(ext.log.log(topic, msg, time.time()))

    def _send(self, msgs: Msgs) -> None:
        for peer, batch in msgs.items():
            comm = self.comms.get(peer)
            if comm is not None:
                comm.send_many(batch)
            elif peer == ACTORS_CLIENT:
                self.actors.on_client_messages(batch)

    async def _remove_silent_nodes(self) -> None:
        """Every heartbeat interval: remove the nodes silent past the timeout, with their workers."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for node, silent in self.liveness.silent(loop.time()):
                cause = f"its node agent sent no heartbeat for {silent:.1f}s (timeout {self.liveness.timeout:g}s)"
                logger.warning("removing node %s: %s", node, cause)
                ns = self.state.nodes.get(node)
                workers = [ws.address for ws in ns.workers] if ns is not None else []
                self.handle_stimulus(st.RemoveNode(f"remove-node-{node}-silent", node, cause))
                # Its workers went with it: close their connections and the agent's, so
                # that, should it wake up, it sees it was removed and stops.
                for peer in (*workers, node):
                    comm = self.comms.get(peer)
                    if comm is not None:
                        comm.close()

    async def _handle_comm(self, comm: Comm) -> None:
        try:
            await self._serve_peer(comm)
        except (ProtocolError, PeerError) as e:
            logger.warning("dropping connection from %s: %s", comm.peer, e)

    async def _serve_peer(self, comm: Comm) -> None:
        try:  # a peer that connects and says nothing must not hold a connection forever
            msgs = await asyncio.wait_for(comm.read(), REGISTRATION_TIMEOUT)
        except TimeoutError:
            raise PeerError(f"it did not register within {REGISTRATION_TIMEOUT:g}s") from None
        if not msgs:
            raise PeerError("its first frame held no message")
        first = msgs[0]
        if type(first) is m.RegisterChannel:  # a client thread's requests (channels.py)
            return await self.channels.serve(comm, first, msgs[1:])
        kind, peer, added, removed = self._registration(first)
        if peer in self.comms:
            raise PeerError(f"{m.op_of(type(first))} as {peer!r}, which is already connected")
        if isinstance(added, st.AddWorker) and added.node in self.state.departed_nodes:
            raise PeerError(f"worker {peer!r} belongs to node {added.node!r}, which was removed from the cluster")
        self.comms[peer] = comm
        if isinstance(added, st.AddNode):
            self.node_info[peer] = msgspec.structs.asdict(first)
            self.liveness.seen(peer, asyncio.get_running_loop().time())
        comm.send(m.Registered(self.address))
        if kind == "worker":
            comm.send_many([m.PluginAdd(n, p) for n, p in self.worker_plugins.items()])
        self.handle_stimulus(added)
        handlers = self._handlers[kind]
        try:
            self._handle_msgs(comm, peer, kind, handlers, msgs[1:])
            while True:
                self._handle_msgs(comm, peer, kind, handlers, await comm.read())
        finally:
            if self.comms.get(peer) is comm:
                del self.comms[peer]
                self.node_info.pop(peer, None)
                self.liveness.forget(peer)
            if self.closed.is_set():
                pass
            elif removed is None:
                self._worker_gone(peer)
            else:
                self.handle_stimulus(removed())

    def _registration(self, first: m.Message) -> tuple[str, str, st.Stimulus, Callable[[], st.Stimulus] | None]:
        """Who a peer says it is: its kind, its id, the stimulus of its arrival and (but for
        workers) of its leaving."""
        if type(first) is m.RegisterClient:
            peer = first.client
            added: st.Stimulus = st.AddClient(f"add-client-{peer}", peer)
            return "client", peer, added, lambda: st.RemoveClient(f"remove-client-{peer}", peer)
        if type(first) is m.RegisterWorker:
            peer = first.address
            added = st.AddWorker(
                f"add-worker-{peer}", peer, first.node, first.nthreads, first.pid, first.host, first.resources,
                first.memory_limit,
            )  # fmt: skip
            return "worker", peer, added, None  # see _worker_gone: it waits briefly for the node agent to say why
        if type(first) is m.RegisterNode:
            peer = first.node
            added = st.AddNode(f"add-node-{peer}", peer, first.address)
            removed = lambda: st.RemoveNode(f"remove-node-{peer}", peer, "its node agent's connection closed")  # noqa: E731
            return "node", peer, added, removed
        raise PeerError(f"its first message was {m.op_of(type(first))!r}, not a registration")

    def _worker_gone(self, address: str) -> None:
        """A worker's connection closed.  Remove it with what its node agent reports (cause:
        exit code, signal, last log lines; the tasks it was executing) if that comes within
        DEATH_REPORT_GRACE seconds, else with what we know."""
        if address in self.retired:
            self.retired.discard(address)
            self._remove_worker(address, "retired")
            return
        report = self._death_reports.pop(address, None)
        if report is not None:
            self._remove_worker(address, *report)
            return
        self._awaiting_report[address] = asyncio.get_running_loop().call_later(
            DEATH_REPORT_GRACE, self._remove_worker, address, "its connection closed; its node agent said nothing"
        )

    def _remove_worker(self, address: str, cause: str, executing: tuple[str, ...] | None = None) -> None:
        self._awaiting_report.pop(address, None)
        self.runs.worker_gone(address, cause)
        self.handle_stimulus(st.RemoveWorker(f"remove-worker-{address}", address, cause, executing))

    def _worker_died(self, address: str, cause: str, executing: tuple[str, ...]) -> None:
        """A node agent says why one of its workers died and what it was executing."""
        timer = self._awaiting_report.pop(address, None)
        if timer is not None:  # its connection already closed
            timer.cancel()
            self._remove_worker(address, cause, executing)
        elif address in self.comms:  # the report came first: use it when the connection closes
            self._death_reports[address] = (cause, executing)

    def _cancel_interrupting(self, stimulus: st.Stimulus, hard: bool) -> None:
        """Cancel, then interrupt the tasks it took off a worker mid-run (``hard``: a forced
        cancel, which restarts a worker whose task does not stop)."""
        # Only tasks sent to workers can be running: a few per thread, not the whole graph.
        running = [(ts, ws) for ws in self.state.workers.values() for ts in ws.processing]
        self.handle_stimulus(stimulus)
        msgs: dict[str, list[m.Message]] = {}
        for ts, ws in running:
            if ts.processing_on is not ws:
                msgs.setdefault(ws.address, []).append(m.Interrupt(ts.key, hard))
        self._send(msgs)

    def _handle_msgs(self, comm: Comm, peer: str, kind: str, handlers: dict[type, Callable], msgs: list) -> None:
        for msg in msgs:
            handler = handlers.get(type(msg))
            if handler is None:
                raise PeerError(f"a {kind} may not send {m.op_of(type(msg))!r}")
            handler(comm, peer, msg)

    def _handler_tables(self) -> dict[str, dict[type, Callable[[Comm, str, Any], None]]]:
        """Per kind of peer: message type -> its handler(comm, sender's id, message)."""
        ids = self._ids

        def stimulus(make: Callable[[Any, str, str], st.Stimulus]) -> Callable[[Comm, str, Any], None]:
            return lambda comm, peer, msg: self.handle_stimulus(make(msg, peer, f"{m.op_of(type(msg))}-{next(ids)}"))

        table: dict[type, Callable[[Comm, str, Any], None]] = {kind: stimulus(make) for kind, make in _STIMULI.items()}
        table.update({
            m.Cancel: self._on_cancel,
            m.Heartbeat: self._on_heartbeat,
            m.Request: lambda comm, peer, msg: self._answer(comm, peer, msg),
            m.Ping: lambda comm, peer, msg: comm.send(m.Pong()),  # a client making sure we are there
            m.RunResult: lambda comm, peer, msg: self.runs.answered(peer, msg.run_id, msg.answer),
            m.ActorStarted: lambda comm, peer, msg: self.actors.started(msg),
            m.WorkerDied: lambda comm, peer, msg: self._worker_died(msg.address, msg.cause, msg.executing),
            m.CloseCluster: self._on_close_cluster,
        })  # fmt: skip
        for kind, handle in MESSAGES.items():  # the extensions' one-way messages
            table[kind] = lambda comm, peer, msg, handle=handle: handle(self, msg, peer)
        return {kind: {t: table[t] for t in sent} for kind, sent in _SENT_BY.items()}

    def _on_cancel(self, comm: Comm, peer: str, msg: m.Cancel) -> None:
        stimulus = _STIMULI[m.Cancel](msg, peer, f"cancel-{next(self._ids)}")
        if msg.force or msg.interrupt:
            self._cancel_interrupting(stimulus, hard=msg.force)
        else:
            self.handle_stimulus(stimulus)

    def _on_heartbeat(self, comm: Comm, peer: str, msg: m.Heartbeat) -> None:
        self.liveness.seen(peer, asyncio.get_running_loop().time())
        comm.send(m.HeartbeatAck())
        self.handle_stimulus(_STIMULI[m.Heartbeat](msg, peer, f"heartbeat-{next(self._ids)}"))

    def _on_close_cluster(self, comm: Comm, peer: str, msg: m.CloseCluster) -> None:
        logger.info("%s asked to close the cluster: telling %d node agents", peer, len(self.node_info))
        self._send({p: [m.Close()] for p in self.node_info})

    def _answer(self, comm: Comm, peer: str, msg: m.Request) -> None:
        """Do what ``msg`` asks as ``peer``; answer it on ``comm`` unless nobody waits for it."""
        result = self._ask(msg.what, msg.args, peer)
        if msg.answer:
            self._reply(comm, msg.reqid, result)

    @staticmethod
    def _reply(comm: Comm, reqid: int, result: Any) -> None:
        """Answer a request now, or when ``result`` (a coroutine or asyncio future) is done."""
        if asyncio.iscoroutine(result):
            result = asyncio.ensure_future(result)
        if isinstance(result, asyncio.Future):
            result.add_done_callback(lambda f: comm.send(m.Reply(reqid, _outcome(f))))
        else:
            comm.send(m.Reply(reqid, result))

    def _validate(self) -> dict | None:
        """None if the state machine never failed and its state is valid now; else what is
        wrong (tests ask this when they end, whether the scheduler validates or not)."""
        if self.first_failure:
            return {"error": self.first_failure}
        try:
            self.state.validate_state()
        except Exception as e:  # an InvariantError, or a state too broken to check
            return {"error": f"invalid scheduler state: {type(e).__name__}: {e}"}
        return None

    def _ask(self, what: str, args: dict, peer: str) -> Any:
        handler = REQUESTS.get(what)
        if handler is None:
            return {"error": f"unknown request {what!r}"}
        try:
            return handler(self, args, peer)
        except (KeyError, TypeError, ValueError) as e:
            return {"error": f"bad request {what!r}: {type(e).__name__}: {e}"}


#: what a request asks -> its handler(scheduler, request's arguments, asker's id); a handler
#: answers with a value, an ``{"error": ...}``, or a coroutine or future to wait for
RequestHandler = Callable[[Scheduler, dict, str], Any]
REQUESTS: dict[str, RequestHandler] = {}


def request(what: str) -> Callable[[RequestHandler], RequestHandler]:
    """Register the handler of the request ``what`` (extensions register theirs too)."""
    return registers(REQUESTS, what, f"request {what!r}")


#: an extension's one-way message type -> its handler(scheduler, message, sender's id); it
#: answers nothing.  The type is declared in ``comm/messages.py`` (decoded and checked there)
#: and listed in ``_SENT_BY`` under the kinds of peer that may send it.
MESSAGES: dict[type, Callable[[Scheduler, Any, str], None]] = {}


request("register-actor")(lambda s, msg, peer: s.actors.register(msg, peer))
request("actor-location")(lambda s, msg, peer: s.actors.locate(msg["actor"], msg.get("not_at", "")))
request("get-actor")(lambda s, msg, peer: s.actors.by_name(msg["name"], peer))
request("kill-actor")(lambda s, msg, peer: s.actors.kill(msg["actor"], msg.get("no_restart", True)))
request("memory")(lambda s, msg, peer: sampler.snapshot(s.state))
request("status")(
    lambda s, msg, peer: {**cluster_status(s.state, s.node_info), "dashboard": s.dashboard and s.dashboard.link}
)
request("validate")(lambda s, msg, peer: s._validate())
# The dashboard's URL (None: off, or it could not start), once it serves or has given up.
request("dashboard")(lambda s, msg, peer: s.dashboard.started if s.dashboard else None)
request("workers-to-close")(lambda s, msg, peer: s.state.workers_to_close(n=msg.get("n")))
request("adaptive-target")(lambda s, msg, peer: placement.adaptive_target(s.state, msg.get("target_duration", 5.0)))
request("story")(lambda s, msg, peer: [list(t[:3]) + [t[4]] for t in s.state.story(*msg["keys"])])
request("task-states")(lambda s, msg, peer: {k: ts.state for k, ts in s.state.tasks.items()})
request("processing")(lambda s, msg, peer: {a: [t.key for t in w.processing] for a, w in s.state.workers.items()})
request("has-what")(lambda s, msg, peer: holders.has_what(s.state))
request("channels")(lambda s, msg, peer: {client: len(open_) for client, open_ in s.channels.open.items()})


@request("identity")
def _identity(s: Scheduler, msg: dict, peer: str) -> dict:
    memory = sampler.snapshot(s.state)
    return {
        "address": s.address,
        "started": s.started,
        "nodes": {n: {**info, "store": memory.get(n, [0, 0, 0])[1:]} for n, info in s.node_info.items()},
        "workers": {
            a: {
                "node": w.node, "nthreads": w.nthreads, "pid": w.pid, "status": w.status,
                "memory": w.memory, "memory_limit": w.memory_limit,
            }
            for a, w in s.state.workers.items()
        },
    }  # fmt: skip


@request("retire-workers")
def _retire_workers(s: Scheduler, msg: dict, peer: str) -> Any:
    return retire.retire(s, list(msg.get("workers") or ()), list(msg.get("nodes") or ()), msg["within"])


@request("start-workers")
def _start_workers(s: Scheduler, msg: dict, peer: str) -> dict:
    if msg["node"] not in s.node_info:
        return {"error": f"no such node: {msg['node']}"}
    s.send_to(msg["node"], m.StartWorkers(int(msg["n"])))
    return {}


@request("memory-sampling-start")
def _memory_sampling_start(s: Scheduler, msg: dict, peer: str) -> str:
    sid = f"sampling-{next(s._ids)}"
    s.samplings[sid] = sampler.Sampling(s.state, msg.get("interval", 0.5), peer)
    return sid


@request("memory-sampling-stop")
def _memory_sampling_stop(s: Scheduler, msg: dict, peer: str) -> Any:
    sampling = s.samplings.pop(msg["id"], None)
    return sampling.stop() if sampling is not None else {"error": f"no memory sampling {msg['id']!r}"}


@request("who-has")
def _who_has(s: Scheduler, msg: dict, peer: str) -> dict:
    return holders.who_has(s.state, msg.get("keys"))


@request("run")
def _run(s: Scheduler, msg: dict, peer: str) -> Any:
    workers = msg.get("workers") or list(s.state.workers)
    unknown = [w for w in workers if w not in s.state.workers]
    if unknown:
        return {"error": f"no such worker(s): {', '.join(unknown)}"}
    return s.runs.start(msg["function"], workers)


@request("register-worker-plugin")
def _register_worker_plugin(s: Scheduler, msg: dict, peer: str) -> None:
    s.worker_plugins[msg["name"]] = msg["plugin"]  # for workers that join from now on


@request("register-scheduler-plugin")
def _register_scheduler_plugin(s: Scheduler, msg: dict, peer: str) -> str:
    from runtime.comm.serialize import loads  # the scheduler unpickles nothing else

    return s.plugins.add(loads(msg["plugin"]), msg.get("name") or "")


request("unregister-scheduler-plugin")(lambda s, msg, peer: s.plugins.remove(msg["name"]))


@request("restart-workers")
def _restart_workers(s: Scheduler, msg: dict, peer: str) -> dict:
    workers = {a: w.pid for a, w in s.state.workers.items()}
    s._send({a: [m.Restart(msg.get("client", ""))] for a in workers})
    return workers


def _outcome(f: asyncio.Future) -> Any:
    """What a request that waited answers: its result, or the error, which the asker gets."""
    if f.cancelled():
        return {"error": "the scheduler is closing"}
    if f.exception() is not None:
        logger.error("a request failed: %s: %s", type(f.exception()).__name__, f.exception())
        return {"error": f"{type(f.exception()).__name__}: {f.exception()}"}
    return f.result()


# These modules register their requests and messages in the tables above at once (the
# scheduler's handler tables take MESSAGES in); extensions.install adds them as plugins.
from runtime.scheduler import borrowed  # noqa: E402, F401
from runtime.scheduler.extensions import event_log, pubsub, replay, spans  # noqa: E402, F401
