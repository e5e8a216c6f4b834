"""The scheduler's I/O shell: connections in, stimuli to the state machine, messages out.

Every connection starts with one ``register-*`` message saying who it is (client, worker
or node agent).  After that, each message whose ``op`` names a stimulus becomes one and
goes to ``SchedulerState.handle``; the messages it returns are queued on the right
connections and leave batched (``Comm.send``).  A few ops are queries answered on the
same connection (``reply`` with the request's ``reqid``).  A closed connection is itself a
stimulus: ``remove-client``, ``remove-worker`` or ``remove-node``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from runtime.comm.core import Comm, listen
from runtime.scheduler import stimuli as st
from runtime.scheduler.actors import ACTORS_CLIENT, ActorRegistry
from runtime.scheduler.state import WORKER_SATURATION, Msgs, SchedulerState
from runtime.scheduler.worker_runs import WorkerRuns

logger = logging.getLogger("runtime.scheduler")

#: how long a closed worker connection waits for its node agent to say why it died
DEATH_REPORT_GRACE = 0.5


def _update_graph(m: dict, peer: str, sid: str) -> st.Stimulus:
    tasks = tuple(st.TaskSpec.from_wire(t) for t in m["tasks"])
    return st.UpdateGraph(sid, peer, tasks, tuple(m["wanted"]), m.get("priority", 0))


#: op -> how to build its stimulus from (message, the sender's id, stimulus id)
_STIMULI: dict[str, Callable[[dict, str, str], st.Stimulus]] = {
    "update-graph": _update_graph,
    "update-data": lambda m, peer, sid: st.UpdateData(sid, peer, m["key"], m["value"], m["nbytes"]),
    "release-keys": lambda m, peer, sid: st.ClientReleasesKeys(sid, peer, tuple(m["keys"])),
    "task-finished": lambda m, peer, sid: st.TaskFinished(
        sid, m["key"], peer, m["value"], m["nbytes"], m.get("start", 0.0), m.get("stop", 0.0)
    ),
    "task-erred": lambda m, peer, sid: st.TaskErred(
        sid, m["key"], peer, m["exception"], m["traceback"], m["text"], m.get("start", 0.0), m.get("stop", 0.0)
    ),
    "missing-data": lambda m, peer, sid: st.MissingData(sid, m["key"], peer, m["dependency"], m["value"]),
    "add-replica": lambda m, peer, sid: st.AddReplica(sid, m["key"], m["node"], m["name"], m["source"]),
    "cancel": lambda m, peer, sid: st.Cancel(sid, peer, tuple(m["keys"]), bool(m.get("force", False))),
}


class Scheduler:
    """Holds a ``SchedulerState`` and performs what it returns."""

    def __init__(
        self, *, validate: bool = False, allowed_failures: int = 3, worker_saturation: float = WORKER_SATURATION
    ):
        self.state = SchedulerState(
            validate=validate, allowed_failures=allowed_failures, worker_saturation=worker_saturation
        )
        #: open connections by client id, worker address or node id
        self.comms: dict[str, Comm] = {}
        #: what each node agent told us about itself (store prefix, host, pid)
        self.node_info: dict[str, dict] = {}
        self.address = ""
        self._server: asyncio.AbstractServer | None = None
        #: why workers died and what they ran, as their agents reported, before their connection closed
        self._death_reports: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: workers whose connection closed, removed when their agent reports or the grace ends
        self._awaiting_report: dict[str, asyncio.TimerHandle] = {}
        self._ids = itertools.count()
        #: pickled worker plugins by name, sent to every worker that joins (Client.register_plugin)
        self.worker_plugins: dict[str, bytes] = {}
        self.closed = asyncio.Event()
        #: where every actor lives; it creates them through the state machine as ACTORS_CLIENT
        self.actors = ActorRegistry(self.handle_stimulus, lambda peer, msg: self._send({peer: [msg]}))
        #: Client.run calls waiting for their workers' answers
        self.runs = WorkerRuns(self._send)
        self.handle_stimulus(st.AddClient("add-client-actors", ACTORS_CLIENT))

    async def start(self, address: str) -> str:
        self._server, self.address = await listen(address, self._handle_comm)
        logger.info("scheduler listening at %s", self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for comm in list(self.comms.values()):
            comm.close()
        self.closed.set()

    def handle_stimulus(self, stimulus: st.Stimulus) -> None:
        try:
            client_msgs, worker_msgs = self.state.handle(stimulus)
        except Exception as e:
            # A bug in the state machine (validate=True finds these first).  Say so to every
            # client, so nobody waits forever on a task this scheduler can no longer track.
            logger.exception("scheduler state machine failed on %r", stimulus)
            text = f"the scheduler failed while handling {stimulus.stimulus_id}: {type(e).__name__}: {e}"
            self._send({c: [{"op": "scheduler-error", "text": text}] for c in self.state.clients})
            return
        self._send(client_msgs)
        self._send(worker_msgs)
        if isinstance(stimulus, (st.RemoveWorker, st.RemoveNode)):
            self.actors.workers_gone(self.state.workers, stimulus.cause)
        elif isinstance(stimulus, st.RemoveClient):
            self.actors.client_gone(stimulus.client)

    def _send(self, msgs: Msgs) -> None:
        for peer, batch in msgs.items():
            comm = self.comms.get(peer)
            if comm is not None:
                comm.send_many(batch)
            elif peer == ACTORS_CLIENT:
                self.actors.on_client_messages(batch)

    async def _handle_comm(self, comm: Comm) -> None:
        first = (await comm.read())[0]
        op = first["op"]
        if op == "register-client":
            peer = first["client"]
            added: st.Stimulus = st.AddClient(f"add-client-{peer}", peer)
            removed: Callable[[], st.Stimulus] | None = lambda: st.RemoveClient(f"remove-client-{peer}", peer)  # noqa: E731
        elif op == "register-worker":
            peer = first["address"]
            added = st.AddWorker(
                f"add-worker-{peer}", peer, first["node"], first.get("nthreads", 1), first.get("pid", 0),
                first.get("host", ""), first.get("resources") or {}, first.get("memory_limit", 0),
            )  # fmt: skip
            removed = None  # see _worker_gone: it waits briefly for the node agent to say why
        elif op == "register-node":
            peer = first["node"]
            self.node_info[peer] = first
            added = st.AddNode(f"add-node-{peer}", peer, first.get("address", ""))
            removed = lambda: st.RemoveNode(f"remove-node-{peer}", peer, "its node agent's connection closed")  # noqa: E731
        else:
            logger.warning("dropping connection from %s: first message was %r, not a registration", comm.peer, op)
            return
        self.comms[peer] = comm
        comm.send({"op": "registered", "scheduler": self.address})
        if op == "register-worker":
            comm.send_many([{"op": "plugin-add", "name": n, "plugin": p} for n, p in self.worker_plugins.items()])
        self.handle_stimulus(added)
        try:
            await self._read_loop(comm, peer)
        finally:
            if self.comms.get(peer) is comm:
                del self.comms[peer]
            self.node_info.pop(peer, None)
            if self.closed.is_set():
                pass
            elif removed is None:
                self._worker_gone(peer)
            else:
                self.handle_stimulus(removed())

    def _worker_gone(self, address: str) -> None:
        """A worker's connection closed.  Remove it with what its node agent reports (cause:
        exit code, signal, last log lines; the tasks it was executing) if that comes within
        DEATH_REPORT_GRACE seconds, else with what we know."""
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

    def _force_cancel(self, stimulus: st.Stimulus) -> None:
        """``cancel(force=True)``: cancel, then interrupt the tasks it took off a worker mid-run."""
        # Only tasks sent to workers can be running: a few per thread, not the whole graph.
        running = [(ts, ws) for ws in self.state.workers.values() for ts in ws.processing]
        self.handle_stimulus(stimulus)
        msgs: dict[str, list[dict]] = {}
        for ts, ws in running:
            if ts.processing_on is not ws:
                msgs.setdefault(ws.address, []).append({"op": "interrupt", "key": ts.key})
        self._send(msgs)

    async def _read_loop(self, comm: Comm, peer: str) -> None:
        ids = self._ids
        while True:
            for msg in await comm.read():
                op = msg["op"]
                make = _STIMULI.get(op)
                if op == "cancel" and msg.get("force"):
                    self._force_cancel(make(msg, peer, f"{op}-{next(ids)}"))
                elif make is not None:
                    self.handle_stimulus(make(msg, peer, f"{op}-{next(ids)}"))
                elif op == "request":
                    self._reply(comm, msg["reqid"], self._query(msg, peer))
                elif op == "run-result":
                    self.runs.answered(peer, msg["run_id"], msg["answer"])
                elif op == "actor-started":
                    self.actors.started(msg)
                elif op == "worker-died":
                    self._worker_died(msg["address"], msg["cause"], tuple(msg.get("executing", ())))
                elif op == "close-cluster":
                    self._send({p: [{"op": "close"}] for p in self.node_info})
                else:
                    logger.warning("ignoring unknown op %r from %s", op, peer)

    @staticmethod
    def _reply(comm: Comm, reqid: int, result: Any) -> None:
        """Answer a request now, or when ``result`` (an asyncio future) is done."""
        if isinstance(result, asyncio.Future):
            result.add_done_callback(lambda f: comm.send({"op": "reply", "reqid": reqid, "result": f.result()}))
        else:
            comm.send({"op": "reply", "reqid": reqid, "result": result})

    def _query(self, msg: dict, peer: str) -> Any:
        what = msg["what"]
        if what == "register-actor":
            return self.actors.register(msg, peer)
        if what == "actor-location":
            return self.actors.locate(msg["actor"])
        if what == "get-actor":
            return self.actors.by_name(msg["name"])
        if what == "kill-actor":
            return self.actors.kill(msg["actor"], msg.get("no_restart", True))
        if what == "identity":
            return {
                "address": self.address,
                "nodes": self.node_info,
                "workers": {
                    a: {"node": w.node, "nthreads": w.nthreads, "pid": w.pid} for a, w in self.state.workers.items()
                },
            }
        if what == "story":
            return [list(t[:3]) + [t[4]] for t in self.state.story(*msg["keys"])]
        if what == "task-states":
            return {k: ts.state for k, ts in self.state.tasks.items()}
        if what == "who-has":
            tasks = self.state.tasks
            keys = msg.get("keys")
            return {k: sorted(w.address for w in ts.who_has) for k in keys or tasks if (ts := tasks.get(k)) is not None}
        if what == "run":
            workers = msg.get("workers") or list(self.state.workers)
            unknown = [w for w in workers if w not in self.state.workers]
            if unknown:
                return {"error": f"no such worker(s): {', '.join(unknown)}"}
            return self.runs.start(msg["function"], workers)
        if what == "register-worker-plugin":  # for workers that join from now on
            self.worker_plugins[msg["name"]] = msg["plugin"]
            return None
        if what == "restart-workers":
            workers = {a: w.pid for a, w in self.state.workers.items()}
            self._send({a: [{"op": "restart", "client": msg.get("client", "")}] for a in workers})
            return workers
        if what == "processing":
            return {a: [ts.key for ts in w.processing] for a, w in self.state.workers.items()}
        if what == "has-what":
            return {a: [ts.key for ts in w.has_what] for a, w in self.state.workers.items()}
        return {"error": f"unknown query {what!r}"}
