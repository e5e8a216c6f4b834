"""The stimulus of a client retrying failed tasks: ``retry`` (Dask's ``Client.retry``).

A task that erred because a dependency erred is not run again by itself: its root cause is.
From each key given, the walk follows erred dependencies down to the erred tasks none of
whose own dependencies erred (the roots); each root goes back to ``waiting`` (through
``released``, which clears its exception and sends its erred dependents to ``waiting`` too),
so the whole failed part of the graph runs again.  Keys that are not erred are left alone.

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
