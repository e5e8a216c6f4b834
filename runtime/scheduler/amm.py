"""The active memory manager: policies that keep the cluster's memory healthy.

Pure functions of the scheduler's state that return suggestions; they change nothing.  The
shell (``server.py``) runs ``reduce_replicas`` every few seconds and hands what it returns
to the state machine as a ``DropReplicas`` stimulus, which checks each suggestion again
before acting.  ``retire_moves`` drives retiring (``retire.py``).

In this design values live in node stores, not in workers (``docs/architecture.md``), so
both policies are about nodes:

* **ReduceReplicas**: a value copied to other nodes keeps its original; a copy (replica) is
  dropped once no task running on that node still reads it and no task that reads it
  waits to be placed.
* **RetireWorker**: before a node leaves on purpose, each value whose only copy is in its
  store is copied to a node that stays, the one with the most free store space (counting
  what is already planned for it).  Retiring workers alone moves nothing: their node's
  store keeps every value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.comm.messages import StoreRef
from runtime.scheduler.entities import NodeState, TaskState

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState


def needed_on(ts: TaskState, node: str) -> bool:
    """Whether a task running on ``node`` reads ``ts``'s value (it may be reading our copy), or
    one not yet placed may (placement prefers nodes holding its inputs)."""
    return any(d.processing_on is None or d.processing_on.node == node for d in ts.waiting_data)


def reduce_replicas(s: SchedulerState, keep: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """``(key, node, replica name)`` of copies nobody needs.  Values whose original is on a node in
    ``keep`` (being retired) keep their copies: one of them is about to become the value."""
    drops = []
    for node, ns in s.nodes.items():
        for ts in ns.replicas:
            assert ts.replicas is not None and type(ts.data) is StoreRef
            if ts.data.node in keep or needed_on(ts, node):
                continue
            drops.append((ts.key, node, ts.replicas[node]))
    return drops


def retire_moves(s: SchedulerState, leaving: set[str]) -> list[tuple[TaskState, str]]:
    """``(task, target node)``: values that live only in the stores of ``leaving`` nodes, and
    where to copy each so that nothing is lost when they go.  Empty when nothing is at risk;
    raises ValueError when no node stays to take them."""
    at_risk = [
        ts
        for node in leaving
        if (ns := s.nodes.get(node)) is not None
        for ts in ns.stored
        if ts.state == "memory" and not any(n not in leaving for n in ts.replicas or ())
    ]
    if not at_risk:
        return []
    staying = [ns for node, ns in s.nodes.items() if node not in leaving]
    if not staying:
        raise ValueError(f"nodes {sorted(leaving)} hold {len(at_risk)} values and no other node remains to take them")
    planned: dict[str, int] = {ns.node: 0 for ns in staying}

    def room(ns: NodeState) -> int:
        return ns.store_limit - ns.store_used - planned[ns.node]

    moves = []
    for ts in sorted(at_risk, key=lambda ts: -ts.nbytes):  # biggest first, into the most room
        target = max(staying, key=room)
        planned[target.node] += ts.nbytes
        moves.append((ts, target.node))
    return moves
