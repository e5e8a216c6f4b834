"""The stimulus of an extension that needs tasks computed again: ``rerun-tasks``.

The shuffle's extension restarts a shuffle whose shards were lost (their node died, or
their files were freed and an output is built again) by releasing its barrier and its
transfers: what still needs them (the outputs, which the barrier's release sends back to
waiting when they were running) computes them again, as after the loss of a stored value
(``membership.remove_node``).  A task in any other state is left alone: released or
waiting ones run anyway when needed, and erred ones stay erred.

A function of the ``SchedulerState`` it changes (``self``), called by the state's handler
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
