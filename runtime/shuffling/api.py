"""``runtime.shuffle``: repartition futures of Arrow tables (or pandas DataFrames) by key.

::

    outs = runtime.shuffle(parts, on="id")                    # as many outputs as inputs
    outs = runtime.shuffle(parts, on=["a", "b"], npartitions=64)
    outs = runtime.shuffle(parts, by="random")                 # rows spread at random

Output ``j`` holds exactly the rows whose key hashes to ``j`` (``hashing.py`` documents the
hash: the same on every node and in every run).  The scheduler sees one transfer task per
input, one barrier and one task per output (``tasks.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runtime.client.client import task_spec
from runtime.client.graph import _Ref
from runtime.comm import serialize
from runtime.scheduler.extensions.shuffle import barrier_key, output_key, transfer_key
from runtime.shuffling import tasks

if TYPE_CHECKING:
    from runtime.client.future import Future
    from runtime.client.futures_client import Client


def shuffle(
    partitions: Sequence[Any],
    on: str | Sequence[str] | None = None,
    npartitions: int | None = None,
    *,
    by: str | None = None,
    seed: int | None = None,
    client: Client | None = None,
) -> list[Future]:
    """Repartition ``partitions`` (futures of, or values that are, pyarrow Tables or pandas
    DataFrames of one schema) into ``npartitions`` (default: as many as given) outputs.

    With ``on`` (a column name or a list of them), output ``j`` holds every row whose key
    hashes to ``j``, and only those; with ``by="random"``, each row goes to a random output
    (``seed`` makes the placement repeatable).  Returns one future per output: a pyarrow
    Table, or a pandas DataFrame if every input was one.
    """
    keys = _check(partitions, on, npartitions, by, seed)
    n = len(partitions)
    npartitions = n if npartitions is None else npartitions
    client = client or _client()
    core = client.core
    sid = os.urandom(8).hex()
    agents = {node: info["address"] for node, info in core.request("identity")["nodes"].items()}
    plan = tasks.Plan(sid, keys, npartitions, seed if seed is not None else int.from_bytes(os.urandom(8)), agents)
    core.request("shuffle-register", sid=sid, ninputs=n, noutputs=npartitions)

    specs = []
    for i, part in enumerate(partitions):
        args, deps = serialize.dumps_args("shuffle-transfer", (part, plan, i), {})
        bad = core.failed_dependency(deps)
        if bad is not None:  # an actor call that failed: every output fails with its error
            return [core.failed_future(output_key(sid, j), bad) for j in range(npartitions)]
        specs.append(_spec(client, tasks.transfer, transfer_key(sid, i), args, deps, "shuffle-transfer"))
    args, deps = serialize.dumps_args("shuffle-barrier", tuple(_Ref(transfer_key(sid, i)) for i in range(n)), {})
    specs.append(_spec(client, tasks.barrier, barrier_key(sid), args, deps, "shuffle-barrier"))
    outputs = [output_key(sid, j) for j in range(npartitions)]
    for j, key in enumerate(outputs):
        args, deps = serialize.dumps_args("shuffle-output", (_Ref(barrier_key(sid)), plan, j), {})
        specs.append(_spec(client, tasks.output, key, args, deps, "shuffle-output"))
    return core.update_graph(specs, outputs)


def _spec(client: Client, fn: Any, key: str, args: bytes, deps: dict, prefix: str) -> Any:
    return task_spec(key, client._pickle_function(fn), args, deps, 0, prefix)


def _client() -> Client:
    from runtime.api.in_task import get_client
    from runtime.client.futures_client import default_client

    return default_client() or get_client()


def _check(partitions: Any, on: Any, npartitions: Any, by: Any, seed: Any) -> tuple[str, ...] | None:
    """The key columns (None for a random shuffle); a clear error for any bad argument."""
    if isinstance(partitions, (str, bytes)) or not isinstance(partitions, Sequence):
        raise TypeError(f"shuffle() takes a list of partitions (futures or tables), not a {type(partitions).__name__}")
    if not partitions:
        raise ValueError("shuffle() needs at least one input partition")
    if npartitions is not None and (
        isinstance(npartitions, bool) or not isinstance(npartitions, int) or npartitions < 1
    ):
        raise ValueError(f"npartitions must be a whole number >= 1 or None, not {npartitions!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a whole number >= 0 or None, not {seed!r}")
    if by is not None:
        if by != "random":
            raise ValueError(f'by must be "random" (or use on= for a key), not {by!r}')
        if on is not None:
            raise ValueError('give either on= (key columns) or by="random", not both')
        return None
    if on is None:
        raise ValueError('shuffle() needs on= (a key column or a list of them) or by="random"')
    columns = (on,) if isinstance(on, str) else tuple(on) if isinstance(on, (list, tuple)) else None
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise ValueError(f"on must be a column name or a non-empty list of them, not {on!r}")
    return columns
