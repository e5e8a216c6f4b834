"""The three kinds of task of a shuffle, as they run on workers.

::

    input i ──► transfer i: split by key, write one shard file per group of outputs into
                   │          this node's store (returns where they are and where each
                   │          output's batch lies)
                   ▼
    all transfers ──► barrier: checks the schemas agree; its value is the table of contents
                   │
                   ▼
    barrier ──► output j: batch j of every input's file of j's group (same node: a view,
                          no copy; other node: those bytes only, over TCP), as one table

The scheduler sees ``n + 1 + npartitions`` tasks and ``n + npartitions`` edges.

An output that cannot read a shard (its node died with its store, or its group's files
were freed and the output is built again) asks the scheduler's shuffle extension to
restart the shuffle (``shuffle-restart``): the barrier and the transfers run again, and so
does this output, once they are done.  After ``allowed-failures`` restarts of one shuffle
the outputs fail with ``ShuffleError`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.shuffling import hashing, layout, shards


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


class ShuffleError(RuntimeError):
    """A shuffle gave up: it lost shards more often than ``allowed-failures`` allows."""


class ShardsLostError(RuntimeError):
    """This run of an output task found a shard lost and restarted its shuffle (the scheduler
    ignores the error of a run it released)."""


@dataclass(frozen=True)
class ShardFile:
    """A transfer task's result: where its shard files are and how they are laid out."""

    index: int
    node: str
    #: the name of its file of each group of outputs (``layout.group_of``), or of its one file
    names: tuple[str, ...]
    #: the ``(start, end)`` byte span of each output partition's batch in its group's file
    spans: np.ndarray
    #: the Arrow schema, serialized (the barrier compares them)
    schema: bytes
    #: the input was a pandas DataFrame (outputs are then DataFrames too)
    pandas: bool
    #: where this node's agent listens (for nodes that joined after the plan)
    agent: str

    def name(self, j: int, plan: Plan) -> str:
        """The file that holds output ``j``'s batch."""
        return self.names[layout.file_of(len(self.names), j, plan.npartitions)]


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
    """Input task ``index``: split the partition by output partition into its shard files."""
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
    return write(table, parts, plan, index, was_pandas)


def write(table: Any, parts: np.ndarray, plan: Plan, index: int, was_pandas: bool) -> ShardFile:
    """Write input ``index`` (``table``, each row to output ``parts[row]``) as its shard files."""
    from runtime.worker.actors import get_worker

    worker = get_worker()
    n = plan.npartitions
    groups = layout.groups_of(table.nbytes, n)
    names = tuple(layout.shard_name(worker.prefix, plan.sid, index, g) for g in groups)
    spans = shards.write_shards(list(names), table, parts, n)
    schema = table.schema.serialize().to_pybytes()
    return ShardFile(index, worker.node, names, spans, schema, was_pandas, worker.agent)


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
    """Output task ``j``: batch ``j`` of every input's shard file of its group, as one table
    (views where local); a shard it cannot read restarts the shuffle."""
    import pyarrow as pa

    from runtime.objstore.store import ObjectLostError
    from runtime.worker.actors import get_worker

    if not files:
        return pa.table({})
    schema = pa.ipc.read_schema(pa.py_buffer(files[0].schema))
    worker = get_worker()
    try:
        batches = _read(files, plan, j, worker, schema)
    except ObjectLostError as e:
        raise _restart(plan, j, worker, e) from None
    table = pa.Table.from_batches([b for b in batches if b.num_rows] or batches[:1], schema)
    if all(f.pandas for f in files):
        return table.to_pandas()
    return table


def _read(files: list[ShardFile], plan: Plan, j: int, worker: Any, schema: Any) -> list[Any]:
    batches: list[Any] = []
    by_node: dict[str, list[ShardFile]] = {}
    for f in files:
        by_node.setdefault(f.node, []).append(f)
    for node, group in by_node.items():
        what = f"shard {j} of shuffle {plan.sid} on node {node}"
        if node == worker.node:
            for f in group:
                batches += shards.read_local(f.name(j, plan), schema, [(int(f.spans[j, 0]), int(f.spans[j, 1]))], what)
        else:
            ranges = [(f.name(j, plan), int(f.spans[j, 0]), int(f.spans[j, 1])) for f in group]
            batches += shards.read_remote(plan.agents.get(node, group[0].agent), schema, ranges, what)
    return batches


def _restart(plan: Plan, j: int, worker: Any, lost: Exception) -> Exception:
    """Ask the scheduler to restart the shuffle; the error this task then ends with (ignored
    by the scheduler when it restarted: this run of the task is no longer current)."""
    from runtime.api.in_task import get_client

    answer = get_client().core.request(
        "shuffle-restart", sid=plan.sid, output=j, worker=worker.address, reason=str(lost)
    )
    if answer in ("restarted", "stale"):
        return ShardsLostError(f"{lost} (the shuffle restarts)")
    return ShuffleError(answer)
