"""``who_has`` / ``has_what`` as Dask's users read them: which workers hold each value.

A value here lives in one of three places, and a worker "holds" it when it can use it
without a transfer between workers:

- a worker that computed (or fetched) it: the workers in ``ts.who_has``, as in Dask;
- a node's shared-memory store (a ``StoreRef``: large results, ``put``, ``scatter``): every
  worker of that node and of the nodes holding a replica, since each reads the store with
  no copy;
- inline in the scheduler (a small ``put``/``scatter`` value): every worker, since it rides
  along with each task that needs it.

So scattered and put data show in both, as Dask users expect (``scatter(..., broadcast=True)``
needs no copies to be on every worker of a node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.comm.messages import StoreRef

if TYPE_CHECKING:
    from runtime.scheduler.entities import TaskState
    from runtime.scheduler.state import SchedulerState


def holders(state: SchedulerState, ts: TaskState) -> list[str]:
    """The addresses of the workers holding ``ts``'s value (empty unless it is in memory)."""
    out = {ws.address for ws in ts.who_has or ()}
    if ts.state != "memory":
        return sorted(out)
    data = ts.data
    if type(data) is StoreRef:
        nodes = {data.node, *(ts.replicas or ())}
        out.update(ws.address for ws in state.workers.values() if ws.node in nodes)
    elif not out:
        out.update(state.workers)
    return sorted(out)


def who_has(state: SchedulerState, keys: list[str] | None) -> dict[str, list[str]]:
    """``{key: [worker, ...]}`` for ``keys`` (every key if None)."""
    tasks = state.tasks
    return {k: holders(state, ts) for k in (keys or list(tasks)) if (ts := tasks.get(k)) is not None}


def has_what(state: SchedulerState) -> dict[str, list[str]]:
    """``{worker: [key, ...]}``: every worker, with the keys it holds."""
    out: dict[str, list[str]] = {address: [] for address in state.workers}
    for key, ts in state.tasks.items():
        if ts.state == "memory" or ts.who_has:
            for address in holders(state, ts):
                out[address].append(key)
    return out
