"""The shuffle's partitioning hash: stable across processes, nodes, runs and versions.

Output partition of a row = ``row_hash % npartitions``, where ``row_hash`` (an unsigned
64-bit integer) is built from the key columns, in the order given:

- each key column gives a 64-bit word per row:

  - integers, booleans, dates, times, timestamps and durations: the value as an int64
    (so an ``int32`` key and an ``int64`` key with the same values agree);
  - floats: the IEEE-754 bits of the value as a float64, with ``-0.0`` taken as ``0.0``
    and every NaN as one NaN (integral floats do *not* agree with integers);
  - strings and binaries: FNV-1a (64 bit) of the UTF-8 bytes;
  - null: the word ``NULL_WORD`` (every null key lands in one partition);

- ``row_hash = 0``; for each column, ``row_hash = mix(row_hash * 31 + word)``, where
  ``mix`` is SplitMix64's finaliser (``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
  z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``), all modulo 2**64.

Everything is numpy, vectorised; strings take one pass per byte of the longest key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the word of a null key
NULL_WORD = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a uint64 array (which it returns)."""
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def column_words(column: Any) -> np.ndarray:
    """One uint64 word per row of a pyarrow Array or ChunkedArray (see the module's docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = column.type
    nulls = column.null_count
    if pa.types.is_floating(t):
        values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False).copy()
        values[values == 0.0] = 0.0  # -0.0 -> 0.0
        values[np.isnan(values)] = np.nan
        words = values.view(np.uint64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        words = _fnv1a(column)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
        if pa.types.is_temporal(t):
            column = column.view(_int_of(t))
        as_int = pc.cast(column, pa.int64(), safe=False)  # uint64 above 2**63 wraps, as its bits
        words = pc.fill_null(as_int, 0).to_numpy(zero_copy_only=False).astype(np.uint64, copy=True)
    else:
        raise TypeError(f"cannot hash a key column of type {t} (use integers, floats, strings, binaries or times)")
    if nulls:
        words[np.asarray(column.is_null().to_numpy(zero_copy_only=False))] = NULL_WORD
    return words


def _int_of(t: Any) -> Any:
    import pyarrow as pa

    return pa.int32() if t.bit_width == 32 else pa.int64()


def _fnv1a(column: Any) -> np.ndarray:
    """FNV-1a of each string's bytes, one vectorised pass per byte position."""
    import pyarrow as pa

    if pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
        offset_type = np.int64
    else:
        offset_type = np.int32
    bufs = column.buffers()
    n = len(column)
    offsets = np.frombuffer(bufs[1], dtype=offset_type, count=n + 1 + column.offset)[column.offset :].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(int(lengths.max()) if n else 0):
            live = np.nonzero(lengths > k)[0]
            h[live] ^= data[starts[live] + k].astype(np.uint64)
            h[live] *= _FNV_PRIME
    return h


def row_hashes(table: Any, on: list[str]) -> np.ndarray:
    """The stable hash of each row's key (columns ``on`` of a pyarrow Table), as uint64."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in on:
            h *= np.uint64(31)
            h += column_words(table.column(name))
            mix(h)
    return h


def partition_of(table: Any, on: list[str], npartitions: int) -> np.ndarray:
    """The output partition (0 .. npartitions-1) of each row of ``table``, by key ``on``."""
    return (row_hashes(table, on) % np.uint64(npartitions)).astype(np.int64)
