"""The node agent's side of the store: keep it under its limit by spilling to disk.

Writers reserve room themselves (``store.reserve``) against the figures the agent
publishes; the agent recounts what is really in shared memory, publishes that, and when
use passes the high-water mark (80% of the limit) spills the least recently used objects
until it is back under the low-water mark (60%).  So spilling starts before the store is
full, and a writer only waits (back-pressure) when writes outrun the spiller.  A writer
that waits publishes the room it needs, and the agent spills far enough to make it, below
the high-water mark too: 300 MB stored in 1 GB make room for an 800 MB object.

The agent also keeps the reuse pool (``store.py`` says why and how a file gets there): a
freed object's file waits as a drain until no process maps it, then joins the pool if the
pool has room.  The pool holds at most ``store.reuse-fraction`` of the limit, gives back
files no writer claimed for POOL_IDLE seconds, and is emptied first, before anything is
spilled, when the store passes its high-water mark.  Its files count as used memory.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Collection

import psutil

from runtime import config
from runtime.objstore import store

logger = logging.getLogger("runtime.store")

HIGH_WATER = 0.8
LOW_WATER = 0.6
#: the default limit, as a fraction of the machine's memory (Ray's default too)
DEFAULT_FRACTION = 0.3
#: recount at least this often, even when nothing asks for it
RECOUNT_INTERVAL = 1.0
#: seconds a pool file waits for a writer before it is freed (an idle node gives memory back)
POOL_IDLE = 10.0
#: seconds a freed object's file may stay mapped by a reader before it is given up on for reuse
DRAIN_PATIENCE = 10.0
#: at most this many drains wait at once (each holds a file descriptor)
MAX_DRAINING = 256
#: seconds between tries of every drain (a try at a reader's last close is at once)
DRAIN_RETRY = 0.1


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


_IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE


def watch_closes(directory: str) -> int | None:
    """An inotify descriptor that turns readable when a file in ``directory`` loses its last open
    descriptor or mapping (the moment a drain may join the pool); None where inotify is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, directory.encode(), _IN_CLOSE) < 0:
        os.close(fd)
        return None
    return fd


def read_closes(fd: int) -> set[str]:
    """The names of the files whose last close ``watch_closes``'s descriptor reported since."""
    names = set()
    try:
        while data := os.read(fd, 65536):
            offset = 0
            while offset < len(data):  # struct inotify_event: wd, mask, cookie, len, name[len]
                length = struct.unpack_from("I", data, offset + 12)[0]
                names.add(data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode(errors="replace"))
                offset += 16 + length
    except BlockingIOError:
        pass
    return names


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
        #: bytes the reuse pool may hold (0: freed objects are unlinked at once)
        self.pool_limit = int(config.get("store.reuse-fraction") * limit)
        #: files and bytes in the reuse pool, at the last count and since
        self.pooled = self.pool_bytes = 0
        #: files and bytes put into the pool so far (a recount adds those entered while it ran)
        self._entered = (0, 0)
        #: the event loop thread fills the pool while a recount in a thread counts it
        self._pool_lock = threading.Lock()
        #: freed objects' files waiting until no process maps them: name -> (read-only fd, since)
        self._draining: dict[str, tuple[int, float]] = {}
        self._drains = itertools.count()
        self._last_retry = 0.0
        store.open_capacity(prefix, limit)

    def free(self, names: list[str]) -> None:
        """Free objects: with the pool on, each file waits as a drain to be reused (event loop thread)."""
        self._dirty = True
        drains = []
        for name in names:
            if not store.is_object_name(name, self.prefix):
                logger.warning("refusing to free %.80r: not an object of this node's store (%s)", name, self.prefix)
                continue
            if not self.pool_limit or len(self._draining) >= MAX_DRAINING:
                store.free(name)
                continue
            drain = f"{self.prefix}drain-{next(self._drains)}"
            try:
                if store.retire(name, drain):
                    self._draining[drain] = (os.open(store.shm_path(drain), os.O_RDONLY), time.monotonic())
                    drains.append(drain)
            except OSError:  # reuse is an optimisation: whatever fails, the file is just freed
                store.free(name)
                store.discard(drain)
        self.drain(drains)

    def retry_drains(self) -> None:
        """Try every drain again, at most every DRAIN_RETRY seconds (in case a close went unseen)."""
        if self._draining and time.monotonic() - self._last_retry > DRAIN_RETRY:
            self._last_retry = time.monotonic()
            self.drain(list(self._draining))

    def drain(self, names: Collection[str]) -> None:
        """Put those of these drains no process maps any more into the pool, or free them (event
        loop thread); names that are not drains are ignored."""
        now = time.monotonic()
        for drain in names:
            if drain not in self._draining:
                continue
            fd, since = self._draining[drain]
            try:
                ready = store.unmapped(fd)
            except OSError as e:  # no leases on this system (EINVAL, EPERM): no reuse either
                logger.warning("file leases are refused here (%s): freed objects are not reused", e)
                self.pool_limit, ready = 0, False
            if not ready and self.pool_limit and now - since < DRAIN_PATIENCE:
                continue
            del self._draining[drain]
            size = os.fstat(fd).st_size
            os.close(fd)
            if ready and size >= store.POOL_MIN and self.pool_bytes + size <= self.pool_limit:
                if store.enter_pool(self.prefix, drain, size):
                    with self._pool_lock:
                        self.pooled += 1
                        self.pool_bytes += size
                        self._entered = (self._entered[0] + 1, self._entered[1] + size)
                        store.publish_pooled(self.prefix, self.pooled)  # not "used": writers have reserved since
                    continue
            store.discard(drain)

    def relieve(self) -> None:
        """A worker passed its spill threshold: at the next count, spill the least recently
        used objects until the store holds LOW_WATER of what it holds now."""
        self._relieve = True

    def due(self) -> bool:
        """Whether ``maintain`` has work: frees to count, writers past the high-water mark or
        waiting for room, or a second since the last count.  Cheap enough to ask every few
        milliseconds."""
        if self._dirty or self._relieve or time.monotonic() - self._last_count > RECOUNT_INTERVAL:
            return True
        return store.read_capacity(self.prefix)[0] > HIGH_WATER * self.limit or store.wanted(self.prefix) > 0

    def maintain(self) -> None:
        """Recount, trim the pool, spill if over the high-water mark or a writer waits for room,
        publish the figures.  Blocking I/O."""
        self._dirty = False
        self._last_count = time.monotonic()
        with self._pool_lock:
            entered_before = self._entered
        # Spilling starts past the high-water mark and goes down to the low-water mark, or as
        # far as a writer waiting for room needs: it would wait in vain for the high water.
        wanted = store.wanted(self.prefix)
        start = min(HIGH_WATER * self.limit, self.limit - wanted)
        target = min(LOW_WATER * self.limit, self.limit - wanted)
        objects, pool, busy = store.list_files(self.prefix)
        in_objects = sum(size for _, size, _ in objects)
        # The pool gives way first: all of it when the store must make room, else the files
        # idle too long or past the pool's share (the newest are kept).
        make_room = self._relieve or in_objects + busy + sum(f[1] for f in pool) > start
        now = time.time()
        kept = kept_bytes = 0
        for name, size, entered in sorted(pool, key=lambda f: f[2], reverse=True):
            if make_room or now - entered > POOL_IDLE or kept_bytes + size > self.pool_limit:
                store.discard(name)
            else:
                kept, kept_bytes = kept + 1, kept_bytes + size
        with self._pool_lock:  # and those entered meanwhile, or writers would skip them for a stale count
            self.pooled = kept + self._entered[0] - entered_before[0]
            self.pool_bytes = kept_bytes + self._entered[1] - entered_before[1]
        self.used = in_objects + self.pool_bytes + busy
        if self._relieve:
            self._relieve = False
            self._spill(sorted(objects, key=lambda o: o[2]), min(LOW_WATER * self.used, target))
        elif self.used > start:
            self._spill(sorted(objects, key=lambda o: o[2]), target)
        with self._pool_lock:
            store.publish_capacity(self.prefix, self.used, self.limit, self.pooled)
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
