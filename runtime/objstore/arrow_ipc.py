"""Arrow values in the store as Arrow IPC streams, read back without a copy.

A Table, RecordBatch, Array or ChunkedArray is written as one IPC stream (an Array or
ChunkedArray as a one-column table); its kind is kept in the object's header so the
reader gives back the same type.  pyarrow is imported only when an Arrow value is met.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

TABLE, RECORD_BATCH, ARRAY, CHUNKED_ARRAY = 1, 2, 3, 4


def is_arrow(value: Any) -> bool:
    pa = sys.modules.get("pyarrow")  # a value can only be Arrow if pyarrow is loaded
    return pa is not None and isinstance(value, pa.Table | pa.RecordBatch | pa.Array | pa.ChunkedArray)


def as_table(value: Any) -> tuple[int, Any]:
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return TABLE, value
    if isinstance(value, pa.RecordBatch):
        return RECORD_BATCH, pa.Table.from_batches([value])
    if isinstance(value, pa.Array):
        return ARRAY, pa.table({"value": value})
    return CHUNKED_ARRAY, pa.table({"value": value})


def stream_size(table: Any) -> int:
    """Bytes the IPC stream of ``table`` takes, found without writing it anywhere."""
    import pyarrow as pa

    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.size()


def write_stream(f: BinaryIO, table: Any) -> None:
    import pyarrow as pa

    with pa.ipc.new_stream(pa.PythonFile(f, mode="w"), table.schema) as writer:
        writer.write_table(table)


def read_stream(kind: int, view: memoryview) -> Any:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.py_buffer(view)).read_all()
    if kind == TABLE:
        return table
    if kind == RECORD_BATCH:  # written as one batch (none if it had no rows)
        batches = table.to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pydict({n: [] for n in table.schema.names}, table.schema)
    column = table.column(0)
    if kind == ARRAY:
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column
