"""Peer-to-peer shuffle of Arrow tables through the nodes' shared-memory stores.

``runtime.shuffle(partitions, on=...)`` (``api.py``) builds the tasks (``tasks.py``), which
write and read shard files (``shards.py``) split by a stable hash (``hashing.py``); the
scheduler's shuffle extension (``runtime/scheduler/extensions/shuffle.py``) frees them.
"""
