"""Stimuli of cluster membership: workers and nodes joining and leaving, copies of values
(and the loss of one: ``missing-data``).

Functions of the ``SchedulerState`` they change (``self``), split from ``state.py`` along
the seam between who is in the cluster and the life of each task; the state's handler
table calls them like its own ``stimulus_*`` methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.comm.messages import FreeObjects, KeyInMemory, LostKeys, StoreRef
from runtime.errors import KilledWorker
from runtime.scheduler import stimuli as st
from runtime.scheduler.amm import needed_on
from runtime.scheduler.entities import Recs, TaskState, WorkerState, WorkerStatus, pickle_error
from runtime.scheduler.handlers import handles

if TYPE_CHECKING:
    from runtime.scheduler.state import Outbox, SchedulerState


@handles(st.AddWorker)
def add_worker(self: SchedulerState, s: st.AddWorker, out: Outbox) -> Recs:
    if s.address in self.workers:
        return {}
    ns = self.nodes.get(s.node) or self.new_node(s.node)
    ws = WorkerState(
        s.address, s.node, max(1, s.nthreads), host=s.host, pid=s.pid,
        resources=dict(s.resources), memory_limit=s.memory_limit, per_thread=self.per_thread,
    )  # fmt: skip
    self.workers[s.address] = ws
    self.workers_by_host.setdefault(s.host, {})[ws] = None
    self._worker_list = None
    self.total_nthreads += ws.nthreads
    ns.workers[ws] = None
    self.idle[ws] = None
    return _try_unrunnable(self)


def _try_unrunnable(self: SchedulerState) -> Recs:
    """A worker became able to take tasks: the unrunnable ones try again."""
    # Highest priority first: recommendations are popped last-in first-out.
    ready = sorted(self.unrunnable, key=lambda ts: ts.priority, reverse=True)
    return {ts.key: "processing" for ts in ready}


@handles(st.WorkerHeartbeat)
def worker_heartbeat(self: SchedulerState, s: st.WorkerHeartbeat, out: Outbox) -> Recs:
    ws = self.workers.get(s.address)
    if ws is not None:
        ws.memory, ws.memory_rss = s.memory, s.rss or ws.memory_rss
    return {}


STATUSES: frozenset[str] = frozenset(("running", "paused", "closing_gracefully"))


@handles(st.WorkerStatusChange)
def worker_status_change(self: SchedulerState, s: st.WorkerStatusChange, out: Outbox) -> Recs:
    """Paused and retiring workers get no new tasks; one running again fills its free slots."""
    ws = self.workers.get(s.address)
    if ws is None or s.status not in STATUSES or s.status == ws.status:
        return {}
    if ws.status == "closing_gracefully" and not s.by_scheduler:
        return {}  # a worker being retired stays so: its pausing or resuming changes nothing
    if s.memory:
        ws.memory = s.memory
    status: WorkerStatus = s.status  # type: ignore[assignment]
    ws.status = status
    self._worker_list = None
    if status != "running":
        self.idle.pop(ws, None)
        return {}
    if ws.has_free_slot():
        self.idle[ws] = None  # queued tasks come once the stimulus settles (_fill_free_slots)
    return _try_unrunnable(self)


@handles(st.NodeHeartbeat)
def node_heartbeat(self: SchedulerState, s: st.NodeHeartbeat, out: Outbox) -> Recs:
    ns = self.nodes.get(s.node)
    if ns is not None:
        ns.store_used, ns.store_spilled, ns.store_limit, ns.store_pooled = s.used, s.spilled, s.limit, s.pooled
    return {}


@handles(st.RemoveWorker)
def remove_worker(self: SchedulerState, s: st.RemoveWorker, out: Outbox) -> Recs:
    ws = self.workers.pop(s.address, None)
    if ws is None:
        return {}
    self._worker_list = None
    self.total_nthreads -= ws.nthreads
    self.idle.pop(ws, None)
    self.workers_by_host[ws.host].pop(ws, None)
    if not self.workers_by_host[ws.host]:
        del self.workers_by_host[ws.host]
    ns = self.nodes.get(ws.node)
    if ns is not None:
        ns.workers.pop(ws, None)
    recs: Recs = {}
    running = list(ws.processing)
    for ts in running:
        # Only a task it was executing can have killed it; queued ones just run elsewhere.
        if s.executing is None or ts.key in s.executing:
            ts.suspicious += 1
            ts.group.suspicious += 1
            ts.erred_on = ts.erred_on or set()
            ts.erred_on.add(ws.address)
    # Err the tasks that killed too many workers first: what only they needed is then
    # released with them, instead of being sent back to waiting a moment before.
    for ts in running:
        if ts.suspicious > self.allowed_failures:
            exc = KilledWorker(ts.key, sorted(ts.erred_on or ()), s.cause)
            recs.update(self.transition(ts, "erred", s.stimulus_id, out, ws.address, pickle_error(exc), "", str(exc)))
    for ts in running:
        if ts.processing_on is ws:
            recs.update(self.transition(ts, "released", s.stimulus_id, out))
    # Its values survive: inline ones are held here, stored ones in its node's store.
    for ts in ws.has_what:
        if ts.who_has:
            ts.who_has.pop(ws, None)
    ws.has_what.clear()
    ws.nbytes = 0
    if not self.workers:  # nobody left to run what was queued
        for ts in list(self.queued):
            recs[ts.key] = "released"
    return recs


@handles(st.AddNode)
def add_node(self: SchedulerState, s: st.AddNode, out: Outbox) -> Recs:
    ns = self.nodes.get(s.node) or self.new_node(s.node)
    ns.address = s.address
    return {}


@handles(st.RemoveNode)
def remove_node(self: SchedulerState, s: st.RemoveNode, out: Outbox) -> Recs:
    ns = self.nodes.pop(s.node, None)
    if ns is None:
        return {}
    self.departed_nodes.add(s.node)
    recs: Recs = {}
    for ws in list(ns.workers):
        recs.update(remove_worker(self, st.RemoveWorker(s.stimulus_id, ws.address, s.cause), out))
    for ts in ns.replicas:
        assert ts.replicas is not None
        del ts.replicas[s.node]
    lost = []
    for ts in ns.stored:
        if ts.replicas:
            promote_replica(self, ts, out)  # and tells the clients, whose futures name the copy that is gone
        else:
            lost.append(ts)
    ns.stored.clear()
    ns.replicas.clear()
    # Everything only this store held leaves memory now, all of it, before any
    # recommendation runs: none may send a dependent off to read another lost value.
    # Clients holding futures of lost values hear it first: their futures wait again.
    lost_keys: dict[str, list[str]] = {}
    for ts in lost:
        if ts.state == "memory":
            for cs in ts.who_wants:
                lost_keys.setdefault(cs.client_key, []).append(ts.key)
            recs.update(self.transition(ts, "released", s.stimulus_id, out))
    for client, keys in lost_keys.items():
        out.to_client(client, LostKeys(tuple(keys)))
    return recs


@handles(st.AddReplica)
def add_replica(self: SchedulerState, s: st.AddReplica, out: Outbox) -> Recs:
    """A node copied a stored value into its store: dependents there read it locally."""
    ts = self.tasks.get(s.key)
    ns = self.nodes.get(s.node)
    if ts is None or ts.state != "memory" or ts.data != s.source or ns is None or s.node == s.source.node:
        if ns is not None:  # a copy nobody will use
            out.to_worker(s.node, FreeObjects((s.name,)))
        return {}
    ts.replicas = ts.replicas or {}
    if s.node in ts.replicas:
        return {}
    ts.replicas[s.node] = s.name
    ns.replicas[ts] = None
    return {}


@handles(st.DropReplicas)
def drop_replicas(self: SchedulerState, s: st.DropReplicas, out: Outbox) -> Recs:
    """Free copies the active memory manager found unneeded, if they still are."""
    for key, node, name in s.replicas:
        ts = self.tasks.get(key)
        ns = self.nodes.get(node)
        if ts is None or ns is None or not ts.replicas or ts.replicas.get(node) != name or needed_on(ts, node):
            continue
        del ts.replicas[node]
        ns.replicas.pop(ts, None)
        out.to_worker(node, FreeObjects((name,)))
    return {}


def promote_replica(self: SchedulerState, ts: TaskState, out: Outbox) -> None:
    """The original of a stored value is gone but a copy lives on: the copy becomes the value."""
    assert ts.replicas
    node, name = ts.replicas.popitem()
    ts.data = StoreRef(node, ts.nbytes, name)
    self.nodes[node].replicas.pop(ts, None)
    self.nodes[node].stored[ts] = None
    out.report(ts, KeyInMemory(ts.key, ts.data, ts.nbytes))  # moved


@handles(st.MissingData)
def missing_data(self: SchedulerState, s: st.MissingData, out: Outbox) -> Recs:
    """A worker could not read a stored dependency: that copy is gone.

    A lost copy on another node is forgotten; a lost original is replaced by a copy if
    one exists, else recomputed.  The task that asked runs again, reading what is left.
    """
    dts = self.tasks.get(s.dependency)
    ts = self.is_current(s.key, s.worker)
    rerun: Recs = {ts.key: "released"} if ts is not None else {}
    if dts is None or dts.state != "memory" or type(s.value) is not StoreRef or type(dts.data) is not StoreRef:
        return rerun  # already handled
    node, name = s.value.node, s.value.name
    if dts.replicas and dts.replicas.get(node) == name:  # a copy on another node
        del dts.replicas[node]
        if node in self.nodes:
            self.nodes[node].replicas.pop(dts, None)
        return rerun
    if dts.data != s.value:
        return rerun  # a copy we no longer use
    ns = self.nodes.get(node)
    if ns is not None:
        ns.stored.pop(dts, None)
    if dts.replicas:
        promote_replica(self, dts, out)
        return rerun
    dts.data = None  # nothing to free: the copy is gone
    return self.transition(dts, "released", s.stimulus_id, out)
