"""Dask DataFrames' shuffles run as ``runtime.shuffle``: ``df.shuffle(on)``, merges on unaligned
keys and ``set_index``, computed with ``runtime.Client`` (``client.compute``, ``client.get``,
``dask.compute(..., scheduler=client.get)``).

What Dask's own code allows (dask 2026.8, with dask-expr in ``dask.dataframe.dask_expr``):

- no shuffle can be plugged in by name: ``Shuffle._lower`` (``_shuffle.py``) maps the method
  (``shuffle_method=`` or the ``dataframe.shuffle.method`` setting, default
  ``get_default_shuffle_method()``: "p2p" with a ``distributed`` client, else "disk") to one
  of four classes, ``P2PShuffle``, ``DiskShuffle``, ``SimpleShuffle``, ``TaskShuffle``, and
  raises ``ValueError`` for anything else (its docstring's "or Callable" is not implemented);
- but the scheduler is handed the lowered expression itself (``dask.compute`` passes an
  ``_ExprSequence``; a collection's ``expr.lower_completely()`` is what its
  ``__dask_graph__`` builds from), and every shuffle of a DataFrame is, once lowered, one of
  those ``SimpleShuffle`` subclasses: its frame has a ``_partitions`` column (the output
  partition of each row, assigned by Dask's own hash in ``AssignPartitioningIndex``, or by
  divisions for ``set_index``/``sort_values``), and its outputs are keys
  ``(shuffle._name, j)``.  So ``graph`` builds the graph as Dask would and replaces each such
  shuffle's tasks (``shuffle._layer()``) by a runtime shuffle's: a transfer per input
  partition (split by ``_partitions``, Arrow shard files), a barrier, and an output task per
  partition under Dask's own output key, which gives a pandas DataFrame with the input's
  index and dtypes.  The rows land where Dask's shuffle would put them, so merges and
  ``set_index`` are unchanged.

Left to Dask's own shuffle: a merge lowered to ``HashJoinP2P`` (only with
``shuffle_method="p2p"``, which needs ``distributed``'s workers: do not ask for it here), a
shuffle of some outputs only (``_filtered``), and frames Arrow cannot hold with their dtypes
(an ``object`` column of no known type).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.scheduler.extensions.shuffle import barrier_key, transfer_key
from runtime.shuffling import tasks

if TYPE_CHECKING:
    from runtime.client.futures_client import Client


def graph(client: Client, obj: Any) -> Mapping:
    """The task graph of ``obj`` (anything with ``__dask_graph__``), each DataFrame shuffle in it
    a runtime shuffle (registered with the scheduler's shuffle extension).

    Built as ``Expr.__dask_graph__`` builds it, each expression's ``_layer()`` merged, but a
    shuffle's layer ours: a Dask shuffle's own is never made (``P2PShuffle``'s would import
    ``distributed``)."""
    expr = _lowered(obj)
    if expr is None:
        return obj.__dask_graph__()
    from dask.dataframe.dask_expr._shuffle import SimpleShuffle

    dsk: dict = {}
    agents = None
    stack, seen = [expr], set()
    while stack:
        node = stack.pop()
        if node._name in seen:
            continue
        seen.add(node._name)
        schema = _schema(node) if isinstance(node, SimpleShuffle) else None
        if schema is None:
            dsk.update(node._layer())
        else:
            if agents is None:
                agents = {n: info["address"] for n, info in client.core.request("identity")["nodes"].items()}
            dsk.update(_layer(client, node, schema, agents))
        stack.extend(node.dependencies())
    return dsk


def _lowered(obj: Any) -> Any:
    """The lowered expression of a dask-expr collection or expression; None for anything else."""
    if not type(obj).__module__.startswith("dask."):
        return None
    from dask._expr import Expr

    if isinstance(obj, Expr):
        return obj.lower_completely()  # lowered already when dask.compute hands it over
    expr = getattr(obj, "expr", None)
    return expr.lower_completely() if isinstance(expr, Expr) else None


def _schema(node: Any) -> Any:
    """The Arrow schema of a shuffle's frame, index included; None if it is not ours to run."""
    import pyarrow as pa

    if node._filtered or node.partitioning_index not in ("_partitions", ["_partitions"]):
        return None
    meta = node.frame._meta
    if not hasattr(meta, "columns") or "_partitions" not in meta.columns:
        return None
    try:
        schema = pa.Schema.from_pandas(meta, preserve_index=True)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return None if any(pa.types.is_null(f.type) for f in schema) else schema


def _layer(client: Client, node: Any, schema: Any, agents: dict[str, str]) -> dict:
    """A runtime shuffle's tasks in place of Dask shuffle ``node``'s, under its output keys."""
    from runtime.client.graph import runtime_key

    dsk: dict = {}
    sid = hashlib.blake2b(node._name.encode(), digest_size=8).hexdigest()  # pure, as Dask's keys
    n, npartitions = node.frame.npartitions, node.npartitions_out
    plan = tasks.Plan(sid, None, npartitions, 0, agents)
    raw_schema = schema.serialize().to_pybytes()
    transfers = [transfer_key(sid, i) for i in range(n)]
    for i, key in enumerate(transfers):
        dsk[key] = (transfer, (node.frame._name, i), plan, i, raw_schema)
    dsk[barrier_key(sid)] = (tasks.barrier, *transfers)
    outputs = [(node._name, j) for j in range(npartitions)]
    for j, key in enumerate(outputs):
        dsk[key] = (output, barrier_key(sid), plan, j, bool(node.ignore_index))
    client.core.request(
        "shuffle-register", sid=sid, ninputs=n, noutputs=npartitions, outputs=[runtime_key(k) for k in outputs]
    )
    return dsk


def transfer(df: Any, plan: tasks.Plan, index: int, raw_schema: bytes) -> tasks.ShardFile:
    """Input task ``index``: a pandas partition's rows to the outputs its ``_partitions`` names."""
    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(raw_schema))
    parts = df["_partitions"].to_numpy().astype(np.int64)
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=True).replace_schema_metadata(schema.metadata)
    return tasks.write(table, parts, plan, index, False)


def output(files: list[tasks.ShardFile], plan: tasks.Plan, j: int, ignore_index: bool) -> Any:
    """Output task ``j``: a pandas DataFrame with the inputs' index (unless ``ignore_index``) and dtypes."""
    df = tasks.output(files, plan, j).to_pandas()
    return df.reset_index(drop=True) if ignore_index else df
