"""The node agent's side of the store: keep it under its limit by spilling to disk.

Writers reserve room themselves (``store.reserve``) against the figures the agent
publishes; the agent recounts what is really in shared memory, publishes that, and when
use passes the high-water mark (80% of the limit) spills the least recently used objects
until it is back under the low-water mark (60%).  So spilling starts before the store is
full, and a writer only waits (back-pressure) when writes outrun the spiller.
"""

from __future__ import annotations

import logging
import os
import time

import psutil

from runtime.objstore import store

logger = logging.getLogger("runtime.store")

HIGH_WATER = 0.8
LOW_WATER = 0.6
#: the default limit, as a fraction of the machine's memory (Ray's default too)
DEFAULT_FRACTION = 0.3
#: recount at least this often, even when nothing asks for it
RECOUNT_INTERVAL = 1.0


def store_limit(requested: int | None = None) -> int:
    """The store's limit in bytes: ``requested``, or 30% of memory, and never more than /dev/shm holds.

    Where /dev/shm is smaller (containers often give 64 MB), say so once and size the store
    to it: the rest spills to disk instead of failing.
    """
    wanted = requested or int(DEFAULT_FRACTION * psutil.virtual_memory().total)
    shm = os.statvfs(store.SHM_DIR)
    room = int(0.95 * shm.f_bavail * shm.f_frsize)
    if wanted > room:
        logger.warning(
            "%s has %s bytes free, less than the %s bytes the object store wanted: the store holds %s "
            "bytes and spills the rest to %s (give the container a larger /dev/shm to avoid that)",
            store.SHM_DIR, f"{room:,}", f"{wanted:,}", f"{room:,}", store.spill_dir(),
        )  # fmt: skip
        return room
    return wanted


class StoreManager:
    def __init__(self, prefix: str, limit: int):
        #: the node store's object-name prefix
        self.prefix = prefix
        #: bytes of shared memory the store may use
        self.limit = limit
        #: bytes in shared memory at the last count
        self.used = 0
        self._last_count = 0.0
        self._dirty = True
        self._spill_error: str | None = None
        #: bytes of this store's objects spilled to disk, at the last count
        self.spilled = 0
        #: a worker of the node is short of memory: spill more at the next count
        self._relieve = False
        store.publish_capacity(prefix, 0, limit)

    def relieve(self) -> None:
        """A worker passed its spill threshold: at the next count, spill the least recently
        used objects until the store holds LOW_WATER of what it holds now."""
        self._relieve = True

    def freed(self) -> None:
        """Objects were freed: recount soon."""
        self._dirty = True

    def due(self) -> bool:
        """Whether ``maintain`` has work: frees to count, writers past the high-water mark, or a
        second since the last count.  Cheap enough to ask every few milliseconds."""
        if self._dirty or self._relieve or time.monotonic() - self._last_count > RECOUNT_INTERVAL:
            return True
        return store.read_capacity(self.prefix)[0] > HIGH_WATER * self.limit

    def maintain(self) -> None:
        """Recount, spill if over the high-water mark, publish the figures.  Blocking I/O."""
        self._dirty = False
        self._last_count = time.monotonic()
        objects = store.list_objects(self.prefix)
        self.used = sum(size for _, size, _ in objects)
        if self._relieve:
            self._relieve = False
            self._spill(sorted(objects, key=lambda o: o[2]), LOW_WATER * self.used)
        elif self.used > HIGH_WATER * self.limit:
            self._spill(sorted(objects, key=lambda o: o[2]), LOW_WATER * self.limit)
        store.publish_capacity(self.prefix, self.used, self.limit)
        self.spilled = store.spilled_bytes(self.prefix)

    def _spill(self, oldest_first: list[tuple[str, int, float]], target: float) -> None:
        for name, size, _ in oldest_first:
            if self.used <= target:
                break
            try:
                store.spill(name)
            except FileNotFoundError:  # freed meanwhile
                self.used -= size
                continue
            except OSError as e:
                if self._spill_error != str(e):
                    self._spill_error = str(e)
                    logger.error("cannot spill %s to %s: %s; objects stay in memory", name, store.spill_dir(), e)
                return
            self._spill_error = None
            self.used -= size
