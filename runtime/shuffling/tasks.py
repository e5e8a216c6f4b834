"""The three kinds of task of a shuffle, as they run on workers.

::

    input i ──► transfer i: split by key, write one shard file into this node's store
                   │          (returns where it is and where each output's batch starts)
                   ▼
    all transfers ──► barrier: checks the schemas agree; its value is the table of contents
                   │
                   ▼
    barrier ──► output j: batch j of every shard file (same node: a view, no copy; other
                          node: those bytes only, over TCP), as one table

The scheduler sees ``n + 1 + npartitions`` tasks and ``n + npartitions`` edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.shuffling import hashing, shards


@dataclass(frozen=True)
class Plan:
    """What every task of one shuffle is told (pickled into its arguments)."""

    #: the shuffle's id
    sid: str
    #: key columns, or None for a random shuffle
    on: tuple[str, ...] | None
    npartitions: int
    #: the random shuffle's seed (each input's rows are placed by seed and input index)
    seed: int
    #: node id -> the address of its agent, as the cluster was when the shuffle started
    agents: dict[str, str]


@dataclass(frozen=True)
class ShardFile:
    """A transfer task's result: where its shard file is and how it is laid out."""

    index: int
    node: str
    name: str
    #: byte offset of each output partition's batch, and the end of the last
    offsets: np.ndarray
    #: the Arrow schema, serialized (the barrier compares them)
    schema: bytes
    #: the input was a pandas DataFrame (outputs are then DataFrames too)
    pandas: bool
    #: where this node's agent listens (for nodes that joined after the plan)
    agent: str


def as_table(value: Any, what: str) -> tuple[Any, bool]:
    """A pyarrow Table of an input partition, and whether it was a pandas DataFrame."""
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return value, False
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value]), False
    if type(value).__module__.startswith("pandas") and type(value).__name__ == "DataFrame":
        return pa.Table.from_pandas(value, preserve_index=False), True
    raise TypeError(f"shuffle: {what} is a {type(value).__name__}, not a pyarrow Table or a pandas DataFrame")


def transfer(value: Any, plan: Plan, index: int) -> ShardFile:
    """Input task ``index``: split the partition by output partition into one shard file."""
    from runtime.worker.actors import get_worker

    table, was_pandas = as_table(value, f"input partition {index}")
    n = plan.npartitions
    if plan.on is None:
        parts = np.random.default_rng([plan.seed, index]).integers(0, n, table.num_rows)
    else:
        missing = [c for c in plan.on if c not in table.column_names]
        if missing:
            raise KeyError(
                f"shuffle: key column {missing[0]!r} is not in input partition {index}; "
                f"its columns are {table.column_names}"
            )
        parts = hashing.partition_of(table, list(plan.on), n)
    worker = get_worker()
    name = shards.shard_name(worker.prefix, plan.sid, index)
    offsets, _ = shards.write_shards(name, table, parts, n)
    schema = table.schema.serialize().to_pybytes()
    return ShardFile(index, worker.node, name, offsets, schema, was_pandas, worker.agent)


def barrier(*files: ShardFile) -> list[ShardFile]:
    """Every transfer is done: check the inputs agree on their schema; the shards' contents."""
    import pyarrow as pa

    if not files:
        return []
    first = files[0]
    for f in files[1:]:
        if f.schema != first.schema:
            a, b = (pa.ipc.read_schema(pa.py_buffer(s.schema)) for s in (first, f))
            raise ValueError(
                f"shuffle: input partitions do not share one schema: partition {first.index} has "
                f"({_describe(a)}) but partition {f.index} has ({_describe(b)})"
            )
    return list(files)


def _describe(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def output(files: list[ShardFile], plan: Plan, j: int) -> Any:
    """Output task ``j``: batch ``j`` of every shard file, as one table (views where local)."""
    import pyarrow as pa

    from runtime.worker.actors import get_worker

    if not files:
        return pa.table({})
    schema = pa.ipc.read_schema(pa.py_buffer(files[0].schema))
    worker = get_worker()
    batches: list[Any] = []
    by_node: dict[str, list[ShardFile]] = {}
    for f in files:
        by_node.setdefault(f.node, []).append(f)
    for node, group in by_node.items():
        what = f"shard {j} of shuffle {plan.sid} on node {node}"
        if node == worker.node:
            for f in group:
                batches += shards.read_local(f.name, schema, [(int(f.offsets[j]), int(f.offsets[j + 1]))], what)
        else:
            ranges = [(f.name, int(f.offsets[j]), int(f.offsets[j + 1])) for f in group]
            batches += shards.read_remote(plan.agents.get(node, group[0].agent), schema, ranges, what)
    table = pa.Table.from_batches([b for b in batches if b.num_rows] or batches[:1], schema)
    if all(f.pandas for f in files):
        return table.to_pandas()
    return table
