"""Stimuli that compute tasks again: an extension's ``rerun-tasks`` and a client's ``retry``.

- ``rerun-tasks``: the shuffle's extension restarts a shuffle whose shards were lost (their
  node died, or their files were freed and an output is built again) by releasing its
  barrier and its transfers: what still needs them (the outputs, which the barrier's release
  sends back to waiting when they were running) computes them again, as after the loss of a
  stored value (``membership.remove_node``).  A task in any other state is left alone:
  released or waiting ones run anyway when needed, and erred ones stay erred.
- ``retry`` (Dask's ``Client.retry``): a task that erred because a dependency erred is not
  run again by itself: its root cause is.  From each key given, the walk follows erred
  dependencies down to the erred tasks none of whose own dependencies erred (the roots);
  each root goes back to ``waiting`` (through ``released``, which clears its exception and
  sends its erred dependents to ``waiting`` too), so the whole failed part of the graph runs
  again.  Keys that are not erred are left alone.

Functions of the ``SchedulerState`` they change (``self``), called by the state's handler
table like its own ``stimulus_*`` methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.scheduler import stimuli as st
from runtime.scheduler.entities import Recs
from runtime.scheduler.handlers import handles

if TYPE_CHECKING:
    from runtime.scheduler.state import Outbox, SchedulerState


@handles(st.RerunTasks)
def rerun_tasks(self: SchedulerState, s: st.RerunTasks, out: Outbox) -> Recs:
    recs: Recs = {}
    for key in s.keys:
        ts = self.tasks.get(key)
        if ts is not None and ts.state in ("memory", "processing"):
            recs.update(self.transition(ts, "released", s.stimulus_id, out))
    return recs


@handles(st.Retry)
def retry(self: SchedulerState, s: st.Retry, out: Outbox) -> Recs:
    recs: Recs = {}
    seen: set[str] = set()
    stack = [ts for key in s.keys if (ts := self.tasks.get(key)) is not None and ts.state == "erred"]
    while stack:
        ts = stack.pop()
        if ts.key in seen:
            continue
        seen.add(ts.key)
        erred = [dts for dts in ts.dependencies if dts.state == "erred"]
        if erred:
            stack.extend(erred)
        else:
            recs[ts.key] = "waiting"
    return recs
