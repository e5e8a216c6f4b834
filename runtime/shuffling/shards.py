"""Shard files: how one input partition's rows, split by output partition, sit in the store.

The outputs are cut into at most ``layout.GROUPS`` **groups** of neighbouring partitions
(``group_of``).  An input task writes one **shard file** per group into its node's store: an
Arrow IPC stream whose record batches hold the rows of each output partition of the group,
in order (empty batches included), and returns where each output's batch starts and ends in
its group's file (``spans``).  An output task reads its batch from every input's file of
its group:

- on its own node, straight from the shared-memory mapping, with no copy;
- on another node, only the bytes of its batch, over TCP from that node's agent
  (``transfer.read_ranges``, ``get-object`` with a range): each shard crosses once.

Groups bound memory: the scheduler's shuffle extension frees a group's files as soon as
every output of the group is built, so while outputs accumulate the shards shrink (outputs
run about in order), and the shuffle holds about ``1 + 1 / GROUPS`` times its data (and what
the outputs being built hold) at its peak rather than twice it.  More groups, more files:
16 is 1600 files of 0.6 MB for 1 GB in 100 partitions.

A small input (under ``SMALL`` bytes) writes one file for all outputs instead, under a
group of its own (``WHOLE``), freed when the shuffle ends: up to 16 files of a few
kilobytes each cost more to write and read than they save.

File names are derived from the shuffle's id, the input's index and the group
(``shard_name``), so a run of an input task again (its worker died, or the shuffle
restarted) replaces its files rather than leaving orphans, and the extension frees every
file of a shuffle, on every node, knowing only its id, its numbers of inputs and outputs
and the nodes' store prefixes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.objstore import store
from runtime.shuffling.layout import group_outputs


def write_shards(names: list[str], table: Any, parts: np.ndarray, npartitions: int) -> np.ndarray:
    """Write ``table``'s rows grouped by output partition (``parts``, one per row) as shard
    files ``names`` (one per group, or one for all outputs); returns each output's
    ``(start, end)`` byte span in its file (``file_of``)."""
    import pyarrow as pa

    counts = np.bincount(parts, minlength=npartitions)
    # A stable sort of small integers is a radix sort: 8 times faster than of int64s.
    order = np.argsort(parts.astype(np.min_scalar_type(max(npartitions - 1, 0)), copy=False), kind="stable")
    grouped = table.take(pa.array(order)).combine_chunks()
    del order
    batch = grouped.to_batches()[0] if grouped.num_rows else None
    starts = np.concatenate(([0], np.cumsum(counts)))
    spans = np.empty((npartitions, 2), dtype=np.int64)
    for g, name in enumerate(names):
        outputs = group_outputs(g, npartitions) if len(names) > 1 else range(npartitions)
        batches = [
            batch.slice(int(starts[j]), int(counts[j])) if batch is not None else _empty(table.schema) for j in outputs
        ]
        spans[outputs.start : outputs.stop] = _write_stream(name, table.schema, batches)
    return spans


def _write_stream(name: str, schema: Any, batches: list[Any]) -> np.ndarray:
    """Write ``batches`` as one Arrow IPC stream, object ``name``; the span of each batch."""
    import pyarrow as pa

    sink = pa.MockOutputStream()  # the stream's layout, found without writing it
    spans = np.empty((len(batches), 2), dtype=np.int64)
    with pa.ipc.new_stream(sink, schema) as writer:
        for k, b in enumerate(batches):
            writer.write_batch(b)  # the schema goes out with the first batch
            spans[k, 1] = sink.size()
    spans[1:, 0] = spans[:-1, 1]
    spans[0, 0] = spans[0, 1] - batches[0].serialize().size

    def fill(fd: int) -> None:
        with open(fd, "r+b", closefd=False) as f, pa.ipc.new_stream(pa.PythonFile(f, mode="w"), schema) as w:
            for b in batches:
                w.write_batch(b)

    store.write_raw(name, sink.size(), fill, key=name)
    return spans


def _empty(schema: Any) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def read_local(name: str, schema: Any, ranges: list[tuple[int, int]], what: str) -> list[Any]:
    """Batches at byte ``ranges`` of a shard file of this node, as views of its mapping."""
    view = store.map_raw(name, what)
    return [_batch(view[start:end], schema) for start, end in ranges]


def read_remote(source: str, schema: Any, ranges: list[tuple[str, int, int]], what: str) -> list[Any]:
    """Batches at byte ranges ``(name, start, end)`` of shard files of another node, whose
    agent is ``source``, on one connection."""
    from runtime.objstore.transfer import read_ranges

    views = read_ranges(source, [(name, start, end - start) for name, start, end in ranges], what)
    return [_batch(v, schema) for v in views]


def _batch(view: memoryview, schema: Any) -> Any:
    import pyarrow as pa

    return pa.ipc.read_record_batch(pa.py_buffer(view), schema)
