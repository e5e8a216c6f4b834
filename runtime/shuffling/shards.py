"""Shard files: how one input partition's rows, split by output partition, sit in the store.

An input task writes one **shard file** into its node's store: an Arrow IPC stream whose
record batch ``j`` holds the rows of output partition ``j`` (empty batches included), and
returns where each batch starts (``offsets``: ``npartitions + 1`` byte positions, the last
the end of the last batch).  An output task reads batch ``j`` of every shard file:

- on its own node, straight from the shared-memory mapping, with no copy;
- on another node, only the bytes of batch ``j``, over TCP from that node's agent
  (``transfer.read_ranges``, ``get-object`` with a range): each shard crosses once.

File names are derived from the shuffle's id and the input's index (``shard_name``), so a
run of an input task again (its worker died) replaces its file rather than leaving an
orphan, and the scheduler's shuffle extension frees every file of a shuffle, on every
node, knowing only its id, its number of inputs and the nodes' store prefixes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from runtime.objstore import store


def shard_name(prefix: str, sid: str, index: int) -> str:
    """The name of input ``index``'s shard file of shuffle ``sid`` in the store with ``prefix``."""
    return prefix + hashlib.blake2b(f"shuffle/{sid}/{index}".encode(), digest_size=14).hexdigest()


def write_shards(name: str, table: Any, parts: np.ndarray, npartitions: int) -> tuple[np.ndarray, int]:
    """Write ``table``'s rows grouped by output partition (``parts``, one per row) as shard
    file ``name``; returns the byte offsets of its batches and the rows of each partition."""
    import pyarrow as pa

    counts = np.bincount(parts, minlength=npartitions)
    order = np.argsort(parts, kind="stable")
    grouped = table.take(pa.array(order)).combine_chunks()
    batch = grouped.to_batches()[0] if grouped.num_rows else None
    starts = np.concatenate(([0], np.cumsum(counts)))
    batches = [
        batch.slice(int(starts[j]), int(counts[j])) if batch is not None else _empty(table.schema)
        for j in range(npartitions)
    ]
    sink = pa.MockOutputStream()  # the stream's layout, found without writing it
    offsets = np.empty(npartitions + 1, dtype=np.int64)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for j, b in enumerate(batches):
            writer.write_batch(b)  # the schema goes out with the first batch
            offsets[j + 1] = sink.size()
    offsets[0] = offsets[1] - batches[0].serialize().size
    size = sink.size()

    def fill(fd: int) -> None:
        with open(fd, "r+b", closefd=False) as f, pa.ipc.new_stream(pa.PythonFile(f, mode="w"), table.schema) as w:
            for b in batches:
                w.write_batch(b)

    store.write_raw(name, size, fill, key=name)
    return offsets, size


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
