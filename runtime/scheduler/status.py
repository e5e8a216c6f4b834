"""A snapshot of the cluster for ``runtime status``: nodes, workers, tasks per state, and
why tasks wait in ``no-worker``.

A pure function of the scheduler's state (plus what agents said about themselves when they
registered); the shell answers the ``status`` query with it.  Tasks per state come from the
task groups' counts, so it never walks every task.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from runtime.scheduler.entities import TaskState

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState

#: how many no-worker tasks the snapshot lists one by one
MAX_UNRUNNABLE_LISTED = 20


def unmet_restriction(state: SchedulerState, ts: TaskState) -> str:
    """Why no worker may run ``ts``, in words: the first restriction no live worker meets."""
    workers = list(state.workers.values())
    if not workers:
        return "no workers are connected"
    if ts.worker_restrictions:
        workers = [ws for ws in workers if ws.address in ts.worker_restrictions or ws.host in ts.worker_restrictions]
        if not workers:
            return f"workers={sorted(ts.worker_restrictions)}: none of them is connected"
    if ts.host_restrictions:
        workers = [ws for ws in workers if ws.host in ts.host_restrictions]
        if not workers:
            return f"hosts={sorted(ts.host_restrictions)}: no worker runs there"
    for name, amount in (ts.resource_restrictions or {}).items():
        offered = max((ws.resources.get(name, 0) for ws in workers), default=0)
        if offered < amount:
            return f"resources={{{name!r}: {amount:g}}}: the most any worker offers is {offered:g}"
    return "no worker meets its restrictions"


def tasks_per_state(state: SchedulerState) -> Counter[str]:
    """Tasks in each state (those with any), from the task groups' counts: no walk over the tasks."""
    counts: Counter[str] = Counter()
    for tg in state.task_groups.values():
        counts.update({s: n for s, n in tg.states().items() if n})
    return counts


def cluster_status(state: SchedulerState, node_info: dict[str, dict]) -> dict[str, Any]:
    """What ``runtime status`` prints, as plain data."""
    workers: dict[str, dict[str, Any]] = {}
    for address, ws in state.workers.items():
        workers[address] = {
            "node": ws.node, "host": ws.host, "pid": ws.pid, "nthreads": ws.nthreads,
            "memory": ws.memory, "memory_limit": ws.memory_limit, "status": ws.status, "resources": ws.resources,
            "processing": len(ws.processing), "occupancy": ws.occupancy,
        }  # fmt: skip
    nodes = {}
    for node, info in node_info.items():
        nodes[node] = {
            "host": info.get("host", ""), "pid": info.get("pid", 0), "address": info.get("address", ""),
            "workers": sorted(w for w, d in workers.items() if d["node"] == node),
        }  # fmt: skip
        ns = state.nodes.get(node)
        if ns is not None:  # its store, as its last heartbeat said
            nodes[node]["store"] = {"used": ns.store_used, "spilled": ns.store_spilled, "limit": ns.store_limit}
    unrunnable = sorted(state.unrunnable, key=lambda ts: ts.priority)
    return {
        "nodes": nodes,
        "workers": workers,
        "tasks": dict(tasks_per_state(state)),
        "clients": len(state.clients),
        "no_worker": [[ts.key, unmet_restriction(state, ts)] for ts in unrunnable[:MAX_UNRUNNABLE_LISTED]],
        "no_worker_total": len(unrunnable),
    }
