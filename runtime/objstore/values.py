"""Where a value travels: inline in messages when small, through the node's store when large.

On the wire a value (``messages.Value``) is either ``bytes`` (an in-band pickle, small) or a
``StoreRef`` (node, nbytes, name: the object sits in that node's shared-memory store).
Users cannot tell the two apart: ``decode`` gives the value back either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime import config
from runtime.comm import serialize
from runtime.comm.messages import StoreRef, Value
from runtime.objstore import arrow_ipc, store

#: ``(key, pickle, buffers) -> wire form``: puts a value into a node's store from a process with none
Upload = Callable[[str, bytes, list], StoreRef]


def encode(
    obj: Any, *, key: str, prefix: str, node: str, threshold: int | None = None, upload: Upload | None = None
) -> tuple[Value, int]:
    """Serialize ``obj``; returns its wire form and its size in bytes.

    Values smaller than ``threshold`` (default: the ``inline-threshold`` setting) travel inline;
    larger ones go into the store with ``prefix``, or, with no store here (``prefix`` empty),
    through ``upload`` into another node's.  Futures inside ``obj`` are kept alive while the
    value lives (``serialize.hold_refs``).
    """
    if type(obj) in serialize.PLAIN_VALUES:  # an int, a str...: no futures inside to look for
        return _encode(obj, key, prefix, node, threshold, upload)
    with serialize.collecting_refs() as refs:
        located, nbytes = _encode(obj, key, prefix, node, threshold, upload)
    if refs:  # futures inside the value: it keeps them alive
        serialize.hold_refs(key, refs)
    return located, nbytes


def _encode(
    obj: Any, key: str, prefix: str, node: str, threshold: int | None, upload: Upload | None
) -> tuple[Value, int]:
    if threshold is None:
        threshold = config.get("inline-threshold")
    if arrow_ipc.is_arrow(obj) and obj.nbytes >= threshold and prefix:
        name = store.new_name(prefix, key)
        nbytes = store.write_arrow(name, obj, key)
        return StoreRef(node, nbytes, name), nbytes
    data, buffers = serialize.dumps_value(obj)
    nbytes = len(data) + (serialize.buffers_nbytes(buffers) if buffers else 0)
    if nbytes < threshold:
        if buffers:  # small enough to carry the buffers in band
            data = serialize.dumps(obj)
        return data, len(data)
    if not prefix and upload is not None:
        located = upload(key, data, buffers)
        return located, located.nbytes
    if not prefix:
        raise store.ObjectStoreUnavailableError(
            f"value for {key!r} is {nbytes} bytes, over the {threshold}-byte inline limit, "
            "and this process has no node store to put it in (no node agent runs on this host)"
        )
    name = store.new_name(prefix, key)
    nbytes = store.write(name, data, buffers, key)
    return StoreRef(node, nbytes, name), nbytes


def decode(located: Value, *, key: str, node: str) -> Any:
    if isinstance(located, bytes):
        return serialize.loads(located)
    where = located.node
    if where != node:
        raise store.ObjectStoreUnavailableError(
            f"object {key!r} is in the store of node {where!r}; this process is on node {node!r} "
            "and reads only its own node's store (transfer.fetch_sync copies it here first)"
        )
    return store.read(located.name, key)
