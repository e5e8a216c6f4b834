"""The stimulus of a task that seceded from its worker's threads: ``long-running``.

A task that waits on other tasks (``runtime.secede()``, ``worker_client()``, or a ``get``
inside it) gives its thread back: its worker starts another thread in its place and says
so.  The task stays ``processing`` on that worker (it still runs there, and a worker's
death still blames it), but it no longer counts against the worker's slots nor its
occupancy, so queued tasks and new placements go to that worker as if it had finished.
This is Dask's ``long-running`` (``WorkerState.long_running``); as in Dask, the scheduler
is not told when the task rejoins: the worker then has one task more than its slots for a
while, as it has when any task runs longer than expected.

A function of the ``SchedulerState`` it changes (``self``), called by the state's handler
table like its own ``stimulus_*`` methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.scheduler import stimuli as st
from runtime.scheduler.entities import Recs

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState


def long_running(self: SchedulerState, s: st.LongRunning) -> Recs:
    ts = self._is_current(s.key, s.worker)
    if ts is None:  # stale: released, rescheduled, or finished already
        return {}
    ws = ts.processing_on
    assert ws is not None
    if ts in ws.long_running:
        return {}
    ws.long_running[ts] = None
    occupancy = ws.occupancy - ws.processing[ts]
    ws.occupancy = occupancy if occupancy > 0.0 else 0.0
    ws.processing[ts] = 0.0
    if ws.has_free_slot() and ws.status == "running":
        self.idle[ws] = None  # queued tasks come once the stimulus settles (_fill_free_slots)
    self.transition_log.append((ts.key, "processing", "processing", {}, s.stimulus_id))
    return {}


HANDLERS = {st.LongRunning: long_running}
