"""What a client needs to run a task again in its own process (``recreate_error_locally``).

Two requests: ``get-error-cause`` names the task to blame for the first of some erred keys
(a task whose input failed blames that input's task), and ``get-runspec`` gives a task's
pickled function and arguments and its dependencies' keys.  The client then fetches the
dependencies' values (recomputed if they were released) and calls the function itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


@request("get-error-cause")
def _error_cause(s: Scheduler, msg: dict, peer: str) -> Any:
    for key in msg["keys"]:
        ts = s.state.tasks.get(key)
        if ts is not None and ts.state == "erred" and ts.exception_blame is not None:
            return ts.exception_blame.key
    return {"error": f"none of {list(msg['keys'])[:3]} is an erred task the scheduler still knows"}


@request("get-runspec")
def _runspec(s: Scheduler, msg: dict, peer: str) -> Any:
    key = msg["key"]
    ts = s.state.tasks.get(key)
    if ts is None:
        return {"error": f"the scheduler does not know task {key!r} (released, or never submitted)"}
    if ts.run_spec is None:
        return {"error": f"{key!r} is a value put into the cluster, not a task: there is nothing to run"}
    function, args = ts.run_spec
    return {"function": function, "args": args, "dependencies": [d.key for d in ts.dependencies]}
