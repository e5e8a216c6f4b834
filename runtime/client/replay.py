"""Replay a task in this process: ``recreate_error_locally`` and ``recreate_task_locally``.

::

    future ──wait──► get-error-cause (the task to blame) ──► get-runspec: pickled function,
    arguments, dependency keys ──► the dependencies' values (wanted again: recomputed if
    released) ──► function(*args, **kwargs) called here, in the caller's thread

The call runs in the calling thread with the task's real inputs, so an exception it
raises carries its own traceback and ``pdb`` (``%debug``, ``pdb.post_mortem``,
``pdb.runcall``) lands in the task's code.  The scheduler side is
``runtime/scheduler/extensions/replay.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.client.client import ClusterClient
from runtime.client.future import ERRED, Future
from runtime.comm import serialize


def _futures(future: Future | Sequence[Future]) -> list[Future]:
    futures = [future] if isinstance(future, Future) else list(future) if isinstance(future, (list, tuple)) else None
    if not futures or not all(isinstance(f, Future) for f in futures):
        raise TypeError(f"expected a Future or a list of Futures, not {future!r:.80}")
    return futures


def _owner_when_done(futures: list[Future]) -> ClusterClient:
    """The cluster client of ``futures``, once they are all done."""
    owner = futures[0]._owner
    if not isinstance(owner, ClusterClient) or any(f._owner is not owner for f in futures):
        raise TypeError(
            "recreating tasks works on the futures of one cluster client; under a local scheduler "
            "(sync) tasks run in this process already"
        )
    owner.wait_for(lambda: all(f.done() for f in futures), futures, None)
    return owner


def recreate_error_locally(future: Future | Sequence[Future]) -> Any:
    """Run the task to blame for ``future``'s error (the future's own task, or the input
    that failed first) again in this process, with its real inputs; it raises here."""
    futures = _futures(future)
    client = _owner_when_done(futures)
    erred = [f.key for f in futures if f._state.status == ERRED]
    if not erred:
        raise ValueError(f"no erred future among {[f.key for f in futures][:3]}: nothing to recreate")
    return run_locally(client, client.request_checked("get-error-cause", keys=erred))


def recreate_task_locally(future: Future) -> Any:
    """Run ``future``'s task again in this process, with its real inputs; returns its result."""
    if not isinstance(future, Future):
        raise TypeError(f"expected a Future, not {future!r:.80}")
    return run_locally(_owner_when_done([future]), future.key)


def run_locally(client: ClusterClient, key: str) -> Any:
    """Call task ``key``'s function here on its inputs' values."""
    spec = client.request_checked("get-runspec", key=key)
    deps: list[str] = spec["dependencies"]
    values: dict[str, Any] = {}
    if deps:  # want them again: a released input is computed again
        values = dict(zip(deps, client.get(client.update_graph([], deps)), strict=True))
    func = serialize.loads(spec["function"])
    args, kwargs = serialize.loads_args(spec["args"], values)
    return func(*args, **kwargs)
