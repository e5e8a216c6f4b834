"""Retiring workers and nodes on purpose, without losing data: the shell's side of RetireWorker.

::

    retire(workers, nodes)
      1. each worker to go: status closing_gracefully  (placement passes it over)
      2. until nothing runs on them and amm.retire_moves() is empty:
             ask staying agents to copy the leaving nodes' unique values (acquire-replicas);
             their add-replica stimuli record the copies
      3. agents stop the retired workers (stop-workers), leaving nodes' agents close;
         remove-node then makes each copy the value (promote_replica)

On timeout nothing is stopped: the workers run again and the error names what did not move.
The state machine is only changed through stimuli; this module waits and sends.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from runtime.comm.messages import AcquireReplicas, Close, StopWorkers
from runtime.scheduler import amm
from runtime.scheduler import stimuli as st

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: seconds between two checks of a retirement's progress
POLL = 0.05
#: a copy asked for and not yet recorded is asked for again after this many seconds
RETRY = 10.0


async def retire(sched: Scheduler, workers: list[str], nodes: list[str], timeout: float) -> dict:
    """Retire ``workers`` and whole ``nodes`` (with all their workers); returns what went."""
    state = sched.state
    unknown = [w for w in workers if w not in state.workers] + [n for n in nodes if n not in state.nodes]
    if unknown:
        return {"error": f"no such worker or node: {', '.join(unknown)}"}
    leaving = set(nodes)
    addresses = set(workers) | {ws.address for n in leaving for ws in state.nodes[n].workers}
    for a in addresses:
        sched.handle_stimulus(st.WorkerStatusChange(f"retire-{a}", a, "closing_gracefully", by_scheduler=True))
    sched.retiring_nodes |= leaving
    asked: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout
    moved = False
    try:
        while True:
            busy = [a for a in addresses if (ws := state.workers.get(a)) is not None and ws.processing]
            try:
                moves = amm.retire_moves(state, leaving)
            except ValueError as e:
                return _undo(sched, addresses, leaving, str(e))
            if not busy and not moves:
                moved = True
                break
            if time.monotonic() > deadline:
                why = f"{len(busy)} workers still running tasks, {len(moves)} values not yet copied"
                return _undo(sched, addresses, leaving, f"retiring timed out after {timeout:g}s: {why}")
            _ask_for_copies(sched, moves, asked)
            await asyncio.sleep(POLL)
    finally:
        # Once all is copied they stay retiring until they are gone, so that the active
        # memory manager does not drop the copies as spare while the originals still exist.
        if not moved:
            sched.retiring_nodes -= leaving
    by_node: dict[str, list[str]] = {}
    for a in addresses:
        ws = state.workers.get(a)
        if ws is not None:
            by_node.setdefault(ws.node, []).append(a)
            sched.retired.add(a)
    for node, group in by_node.items():
        if node not in leaving:
            sched.send_to(node, StopWorkers(tuple(group)))
    for node in leaving:
        sched.send_to(node, Close())
    return {"workers": sorted(addresses), "nodes": sorted(leaving), "copied": len(asked)}


def _ask_for_copies(sched: Scheduler, moves: list, asked: dict[tuple[str, str], float]) -> None:
    now = time.monotonic()
    batches: dict[str, list] = {}
    for ts, target in moves:
        if now - asked.get((ts.key, target), -RETRY) < RETRY:
            continue
        asked[ts.key, target] = now
        source = sched.state.nodes[ts.data.node].address
        batches.setdefault(target, []).append((ts.key, ts.data, source))
    for target, objects in batches.items():
        sched.send_to(target, AcquireReplicas(tuple(objects)))


def _undo(sched: Scheduler, addresses: set[str], leaving: set[str], error: str) -> dict:
    for a in addresses:
        sched.handle_stimulus(st.WorkerStatusChange(f"retire-undone-{a}", a, "running", by_scheduler=True))
    return {"error": error}
