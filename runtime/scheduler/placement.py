"""Which worker runs a task, and which workers can be closed: the specification's policies.

Pure functions of the scheduler's state; none walks the graph.  Only workers whose status
is "running" get new tasks: paused (short of memory) and retiring ones are passed over.

* ``valid_workers``: the workers that meet a task's restrictions (None: any worker).
* ``decide_worker``: for a task with dependencies in a node store, the worker with the least
  expected start time (bytes to fetch / bandwidth + occupancy per thread) among the workers
  on nodes holding them and the least busy worker elsewhere; otherwise the least busy
  worker with a free slot, else round robin.
* ``is_rootish`` / ``decide_rootish``: root-ish tasks (large groups with few dependencies)
  wait in ``queued`` on the scheduler until a worker has a free slot, so wide graphs do not
  flood workers with tasks they cannot run yet.
* ``workers_to_close``: idle workers holding little data, while enough memory remains.
* ``adaptive_target``: how many workers the load calls for, for adaptive scaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from runtime.comm.messages import StoreRef
from runtime.scheduler.entities import TaskState, WorkerState

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState

#: bytes per second assumed between nodes, for the cost of fetching a dependency
BANDWIDTH = 100e6


def valid_workers(s: SchedulerState, ts: TaskState) -> dict[WorkerState, None] | None:
    """Workers that satisfy ``ts``'s worker, host and resource restrictions, as an ordered set
    (so ties between them always go the same way); None if unrestricted."""
    if not ts.has_restrictions():
        return None
    ok: dict[WorkerState, None] | None = None
    if ts.worker_restrictions or ts.host_restrictions:
        ok = {ws: None for a in ts.worker_restrictions or () if (ws := s.workers.get(a)) is not None}
        for host in ts.host_restrictions or ():
            ok.update(s.workers_by_host.get(host, {}))
    if ts.resource_restrictions:
        pool: Iterable[WorkerState] = s.workers.values() if ok is None else ok
        ok = {ws: None for ws in pool if all(ws.resources.get(r, 0) >= n for r, n in ts.resource_restrictions.items())}
    assert ok is not None
    ok = {ws: None for ws in ok if ws.status == "running"}
    if not ok and ts.loose_restrictions:
        return None
    return ok


def fetch_seconds(ts: TaskState, ws: WorkerState) -> float:
    """Expected seconds to copy ``ts``'s stored inputs that ``ws``'s node has no copy of."""
    fetch = 0
    for dts in ts.dependencies:
        data = dts.data
        if type(data) is StoreRef and data.node != ws.node and not (dts.replicas and ws.node in dts.replicas):
            fetch += dts.nbytes
    return fetch / BANDWIDTH


def worker_objective(ts: TaskState, ws: WorkerState) -> tuple[float, int]:
    """Expected start time of ``ts`` on ``ws``, then bytes held (to break ties)."""
    return fetch_seconds(ts, ws) + ws.occupancy / ws.nthreads, ws.nbytes


def decide_worker(s: SchedulerState, ts: TaskState) -> WorkerState | None:
    """The worker to run ``ts`` (not root-ish), or None if no worker may run it."""
    valid = valid_workers(s, ts)
    if valid is not None and not valid:
        return None
    # Locality only matters for stored values: inline ones travel with the task anyway.
    holders: dict[WorkerState, None] = {}  # an ordered set: ties go the same way in every run
    for dts in ts.dependencies:
        if type(dts.data) is StoreRef:
            for node in (dts.data.node, *(dts.replicas or ())):
                ns = s.nodes.get(node)
                if ns is not None:
                    holders.update({ws: None for ws in ns.workers if ws.status == "running"})
    if valid is not None:
        holders = {ws: None for ws in holders if ws in valid}
    # The least busy worker anywhere competes with the holders: when they are busy enough,
    # moving the data costs less than waiting (the objective weighs both).
    elsewhere = min(valid, key=_load) if valid is not None else _least_busy(s)
    if not holders:
        return elsewhere
    if elsewhere is not None:
        holders[elsewhere] = None
    return min(holders, key=lambda ws: worker_objective(ts, ws))


def _load(ws: WorkerState) -> tuple[float, float]:
    return (len(ws.processing) - len(ws.long_running)) / ws.nthreads, ws.occupancy / ws.nthreads


def _least_busy(s: SchedulerState) -> WorkerState | None:
    """An unsaturated worker with the least load, else the next worker in turn: O(idle)."""
    if s.idle:
        return _least_loaded(s.idle)
    pool = s.worker_list()
    if not pool:
        return None
    s.round_robin += 1
    return pool[s.round_robin % len(pool)]


def is_rootish(s: SchedulerState, ts: TaskState) -> bool:
    """A task of a large group with few dependencies (Dask's definition), and no restrictions."""
    if ts.has_restrictions():
        return False
    tg = ts.group
    if tg.size <= 2 * s.total_nthreads or len(tg.dependencies) >= 5:
        return False
    n = 0  # a loop, not sum() over a generator: that costs more than the rest (per ready task)
    for dg in tg.dependencies:
        n += dg.size
    return n < 5


def decide_rootish(s: SchedulerState) -> WorkerState | None:
    """The least busy worker with a free slot, or None if all are saturated."""
    return _least_loaded(s.idle) if s.idle else None


def _least_loaded(idle: dict[WorkerState, None]) -> WorkerState:
    # One idle worker is the common case (the one whose task just finished): no min() over it.
    return next(iter(idle)) if len(idle) == 1 else min(idle, key=_load)


def workers_to_close(s: SchedulerState, memory_factor: float = 2.0, n: int | None = None) -> list[str]:
    """Idle workers that can go, holding the least data first.

    A worker is a candidate when it runs nothing.  Candidates are closed, the emptiest
    first, while the memory of the workers that remain is at least ``memory_factor`` times
    the data held in the cluster (or, with ``n``, while more than ``n`` workers remain).
    A worker with no known memory limit counts as offering none.
    """
    total = sum(ws.nbytes for ws in s.workers.values())
    limit = sum(ws.memory_limit for ws in s.workers.values())
    remaining = len(s.workers)
    to_close = []
    idle = (ws for ws in s.workers.values() if not ws.processing and ws.status != "closing_gracefully")
    for ws in sorted(idle, key=lambda ws: (ws.nbytes, ws.address)):
        if n is not None:
            if remaining <= n:
                break
        elif limit - ws.memory_limit < memory_factor * total:
            break
        to_close.append(ws.address)
        limit -= ws.memory_limit
        remaining -= 1
    return to_close


def adaptive_target(s: SchedulerState, target_duration: float = 5.0) -> int:
    """How many workers the cluster wants now (Dask's ``adaptive_target``).

    Enough that the expected work (running, queued and waiting-for-a-worker tasks, by their
    prefix's average duration) takes about ``target_duration`` seconds, but no more workers
    than there are tasks for their threads.  Below the current count, only the workers
    ``workers_to_close`` would let go are given up.
    """
    from runtime.scheduler.state import UNKNOWN_TASK_DURATION

    threads = s.total_nthreads / len(s.workers) if s.workers else 1.0
    waiting = [*s.queued.topk(100), *list(s.unrunnable)[:100]]
    n_waiting = len(s.queued) + len(s.unrunnable)
    per_task = sum(s.task_durations.get(ts.prefix, UNKNOWN_TASK_DURATION) for ts in waiting) / max(1, len(waiting))
    occupancy = sum(ws.occupancy for ws in s.workers.values()) + per_task * n_waiting
    tasks = n_waiting + sum(len(ws.processing) for ws in s.workers.values())
    cpu = min(math.ceil(occupancy / target_duration / threads), math.ceil(tasks / threads))
    if tasks:
        cpu = max(cpu, 1)
    if cpu >= len(s.workers):
        return cpu
    return max(cpu, len(s.workers) - len(workers_to_close(s)))
