"""The per-node shared-memory object store (the skeleton's part of it).

Layout: one POSIX shared-memory file per object under ``/dev/shm``, named
``<prefix><digest of key><random>``: each write gets a name of its own, so a stale copy of a
recomputed task can be freed without touching the live one.  A writer fills
``<name>.tmp-<pid>`` and renames it to the final name, so the rename is the seal: a reader
sees a whole object or none, even if the writer is killed mid-write (the node agent
sweeps the leftovers by prefix).  The store's owner, its node agent, holds a lock on the
store's capacity file for life, so a later agent tells a dead store from a live one
(``is_owned``) and sweeps all its files.

Names arrive in messages, so ``object_path`` and ``spill_path``, the only ways from a name
to a file, refuse any name that is not exactly an object's (``OBJECT_NAME``): a path
(``../``, ``/``, NUL) or one of the store's own files (capacity, pool, drains) never gets
through.  Whoever takes a name off the wire checks it first (``is_object_name``), to refuse
it with a reason of its own.

Object format, every part 64-byte aligned so numpy and Arrow see aligned buffers::

    MAGIC(8) | nbuffers u32 | pad u32 | pickle_len u64 | buffer_len u64 * nbuffers
    pickle bytes | buffer 0 | buffer 1 | ...

Readers ``mmap`` the file read-only and unpickle with the buffers as memoryviews into the
mapping: numpy arrays come back as read-only views, with no copy.  Unlinking a file that a
reader still maps is safe; the memory goes when the last view does.

Capacity and spilling: each node store has a limit.  The node agent (``manager.py``)
publishes the bytes in use and the limit in a small file, ``<prefix>capacity``; a writer
reads it first, waits while the store is over its limit (back-pressure: it writes the room
it needs into the same file, and the agent spills to make it), and fails with
``ObjectStoreFullError`` if the object alone is larger than the limit.  Spilling moves the
least recently used objects to ``SPILL_DIR`` on disk: the copy is sealed there before the
shared-memory file is removed, so at every moment a reader finds the object in one place or
the other (and a free that comes meanwhile leaves no copy behind: ``spill``).  Readers look
in shared memory first, then on disk, and map either without a copy (a spilled object is
read through the page cache).

Reuse of freed files: the kernel allocates and zeroes a fresh tmpfs page on its first write,
which makes a write into new pages about half as fast as into pages it already has.  So the
node agent keeps some freed files for reuse instead of unlinking them (``manager.py`` says
which and for how long).  A file may be reused only once no process maps it any more, since
a reader's numpy view may outlive the object: at free the agent renames it to
``<prefix>drain-<n>``, so no one can open it by name again, and the kernel then answers the
question, refusing a write lease (``F_SETLEASE``) while any other process has the file open
or mapped.  A file that passes goes into the pool as ``<prefix>pool-<class>-<slot>``, by
size class; a writer claims one by renaming it to its temporary name (of two writers, one
gets it) and truncates it to the object's size.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import mmap
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

from runtime import config
from runtime.comm import serialize
from runtime.objstore import arrow_ipc

MAGIC = b"RTOBJ001"
_HEAD = struct.Struct("<8sIIQ")
#: bytes in use, limit, files in the reuse pool, bytes the largest waiting writer needs
_CAPACITY = struct.Struct("<QQQQ")
_USED, _POOLED, _WANTED = 0, 2, 3  # their places, for writing one alone
ALIGN = 64
SHM_DIR = "/dev/shm"
#: where objects spill to, when set here (tests); else the ``store.spill-dir`` setting
SPILL_DIR: str | None = None
#: where the stores of other processes' settings spill, by prefix (``follow_spill_dir``)
_spill_dirs: dict[str, str] = {}
#: an object name is its node's prefix, then 20 + 8 hex digits
_NAME_TAIL = 28
#: a store's prefix (``make_prefix``), with the process id it names
STORE_PREFIX = re.compile(r"rt-([0-9]+)-[0-9a-f]{6}-")
#: an object's name (``new_name``: the prefix, then _NAME_TAIL hex digits); never a path,
#: nor one of the store's own files (its capacity file, reuse pool and drains)
OBJECT_NAME = re.compile(STORE_PREFIX.pattern + "[0-9a-f]{28}")
#: an object's name, or the name of the temporary file it is written to before its seal
_OBJECT_FILE = re.compile(OBJECT_NAME.pattern + r"(\.tmp-[0-9]+)?")


class ObjectLostError(RuntimeError):
    """A stored object is missing or damaged; the message names the key and the cause."""


class ObjectStoreUnavailableError(RuntimeError):
    """A value needs the store but this process has no node store to write to."""


class ObjectStoreFullError(MemoryError):
    """An object does not fit in the node's store, even after spilling; the message gives the sizes."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def make_prefix() -> str:
    """A store prefix that names its owner, so a later agent can sweep a dead one's leftovers."""
    return f"rt-{os.getpid()}-{os.urandom(3).hex()}-"


def new_name(prefix: str, key: str) -> str:
    """A fresh object name, under the node's prefix, for one write of ``key``'s value."""
    return prefix + hashlib.blake2b(key.encode(), digest_size=10).hexdigest() + os.urandom(4).hex()


def is_object_name(name: Any, prefix: str = "") -> bool:
    """Whether ``name`` (from a message, say) names an object, of the store with ``prefix`` if given."""
    return isinstance(name, str) and OBJECT_NAME.fullmatch(name) is not None and name.startswith(prefix)


def prefix_of(name: str) -> str:
    return name[:-_NAME_TAIL]


def object_path(name: str) -> str:
    """Where object ``name`` (or its temporary file) lives in shared memory.

    Raises ValueError for any other name, so a name from a message never becomes a path
    elsewhere (``../``, ``/``, NUL) nor names one of the store's own files.
    """
    _check(name)
    return f"{SHM_DIR}/{name}"


def _check(name: str) -> None:
    if not isinstance(name, str) or _OBJECT_FILE.fullmatch(name) is None:
        raise ValueError(f"{name!r:.80} is not the name of a store object")


def shm_path(file: str) -> str:
    """Where one of the store's own files (its reuse pool, drains) lives: named by the store, never by a message."""
    return f"{SHM_DIR}/{file}"


def spill_dir() -> str:
    """Where objects spill to; the same for every process of a node (they inherit the setting)."""
    return (
        SPILL_DIR
        or config.get("store.spill-dir")
        or os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}", "spill")
    )


def spill_path(name: str) -> str:
    """Where object ``name`` spills to; ValueError for any other name (as ``object_path``)."""
    _check(name)
    return os.path.join(_spill_dirs.get(prefix_of(name)) or spill_dir(), name)


def follow_spill_dir(prefix: str, directory: str) -> None:
    """Read the spilled objects of the store with ``prefix`` from ``directory``, its agent's
    spill directory: a driver that joined a cluster by address reads that node's store, and
    its own settings (or environment) need not name the same directory."""
    _spill_dirs[prefix] = directory


def capacity_path(prefix: str) -> str:
    return os.path.join(SHM_DIR, prefix + "capacity")


#: this process's open capacity files, by prefix (one small pread or pwrite per use)
_capacity_fds: dict[str, int] = {}


def _capacity_fd(prefix: str) -> int | None:
    fd = _capacity_fds.get(prefix)
    if fd is None:
        try:
            fd = os.open(capacity_path(prefix), os.O_RDWR)
        except FileNotFoundError:
            return None  # no agent runs this store: no limit
        _capacity_fds[prefix] = fd
    return fd


def open_capacity(prefix: str, limit: int) -> None:
    """Create the store's capacity file, for its owner (the node agent), and hold a lock on it
    for as long as this process lives: the kernel lets go when it ends, however it ends, and
    that is how ``is_owned`` tells a live store from a dead one."""
    fd = _capacity_fds.pop(prefix, None)
    if fd is not None:  # ours already (a test's second manager): let it go first
        os.close(fd)
    if is_owned(prefix):
        raise RuntimeError(f"the store {prefix!r} already has a node agent")
    path = capacity_path(prefix)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: granted at once
    os.pwrite(fd, _CAPACITY.pack(0, limit, 0, 0), 0)
    os.rename(tmp, path)  # named only once locked, so a sweeper never sees it without its owner
    _capacity_fds[prefix] = fd


def is_owned(prefix: str) -> bool:
    """Whether a live process (the store's node agent) holds the lock on its capacity file."""
    try:
        fd = os.open(capacity_path(prefix), os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError:  # another user's store: not ours to judge (nor to sweep)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _read_capacity(prefix: str) -> tuple[int, int, int, int]:
    fd = _capacity_fd(prefix)
    raw = os.pread(fd, _CAPACITY.size, 0) if fd is not None else b""
    return _CAPACITY.unpack(raw) if len(raw) == _CAPACITY.size else (0, 0, 0, 0)


def read_capacity(prefix: str) -> tuple[int, int]:
    """``(bytes in use, limit)`` of a node store, as its agent last published them; limit 0: none."""
    return _read_capacity(prefix)[:2]


def wanted(prefix: str) -> int:
    """Bytes of room a writer waits for in a node store (the largest such writer's); 0: none waits."""
    return _read_capacity(prefix)[_WANTED]


def publish_capacity(prefix: str, used: int, limit: int, pooled: int = 0) -> None:
    """Write ``(used, limit, files in the reuse pool)`` where writers read it: a hint, recounted
    by the agent, so one small pwrite (atomic for readers) is enough.  It clears the room
    wanted: a writer still waiting says so again.  Nothing is written once the store is swept."""
    fd = _capacity_fd(prefix)
    if fd is not None:
        os.pwrite(fd, _CAPACITY.pack(max(used, 0), limit, pooled, 0), 0)


def reserve(prefix: str, nbytes: int, key: str, timeout: float | None = None) -> int:
    """Wait until ``nbytes`` fit in the store; ObjectStoreFullError when they never will (after
    ``timeout`` seconds, default the ``store.write-timeout`` setting).  Returns how many files
    the store's reuse pool had.

    While it waits it publishes the room it needs, so the agent spills that much more than
    its low-water mark asks: an object that fits once others are spilled is not refused.
    """
    used, limit, pooled, wanted = _read_capacity(prefix)
    if not limit or used + nbytes <= limit:
        _publish_figure(prefix, _USED, used + nbytes) if limit else None
        return pooled
    if nbytes > limit:
        raise ObjectStoreFullError(
            f"object {key!r} is {nbytes:,} bytes, larger than the node store's limit of {limit:,} bytes; "
            "raise object_store_memory or split the value"
        )
    if timeout is None:
        timeout = config.get("store.write-timeout")
    deadline = time.monotonic() + timeout
    while used + nbytes > limit:  # back-pressure: the node agent is spilling (or emptying its pool)
        if time.monotonic() > deadline:
            raise ObjectStoreFullError(
                f"object {key!r} ({nbytes:,} bytes) waited {timeout:g}s for room in the node store: "
                f"{used:,} of {limit:,} bytes in use and spilling made no room (is the spill directory "
                f"{spill_dir()} full or unwritable? see the node agent's log)"
            )
        if wanted < nbytes:  # a larger figure stands: room for that is room for this
            _publish_figure(prefix, _WANTED, nbytes)
        time.sleep(0.005)
        used, limit, pooled, wanted = _read_capacity(prefix)
    _publish_figure(prefix, _USED, used + nbytes)
    return pooled


def publish_pooled(prefix: str, pooled: int) -> None:
    """The agent added files to the reuse pool: say how many it has, leaving the other figures be."""
    _publish_figure(prefix, _POOLED, pooled)


def _publish_figure(prefix: str, field: int, value: int) -> None:
    """Write one figure of the capacity file (an 8-byte pwrite), leaving the others as they are."""
    fd = _capacity_fd(prefix)
    if fd is not None:
        os.pwrite(fd, struct.pack("<Q", value), field * 8)


def layout(data: bytes, buffers: list[pickle.PickleBuffer]) -> tuple[list[tuple[int, memoryview | bytes]], int]:
    """An object's parts as ``(offset, bytes)`` in the format above, and its total size: what a
    writer puts into its file, or a client with no store of its own sends to a node's."""
    views = [memoryview(b).cast("B") for b in buffers]
    head = _HEAD.pack(MAGIC, len(views), 0, len(data)) + struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    parts: list[tuple[int, memoryview | bytes]] = [(0, head)]
    offset = _aligned(len(head))
    parts.append((offset, data))
    offset = _aligned(offset + len(data))
    for v in views:
        parts.append((offset, v))
        offset = _aligned(offset + v.nbytes)
    return parts, offset


def write(name: str, data: bytes, buffers: list[pickle.PickleBuffer], key: str = "") -> int:
    """Write and seal one object, after waiting for room; returns its size in bytes."""
    parts, size = layout(data, buffers)

    def fill(fd: int) -> None:
        for off, part in parts:
            pwrite_all(fd, part, off)

    return _seal(name, size, key, fill)


def write_arrow(name: str, value: Any, key: str = "") -> int:
    """Write a pyarrow Table, RecordBatch, Array or ChunkedArray as an Arrow IPC stream.

    Laid out as one buffer, so readers open the stream straight from the mapping with no
    copy, and any Arrow reader can use it.  The stream is written once, into the store.
    """
    kind, table = arrow_ipc.as_table(value)
    size = arrow_ipc.stream_size(table)
    head = _HEAD.pack(MAGIC, 1, kind, 0) + struct.pack("<Q", size)
    start = _aligned(_aligned(len(head)))  # where the single buffer goes (the pickle part is empty)

    def fill(fd: int) -> None:
        pwrite_all(fd, head, 0)
        with open(fd, "r+b", closefd=False) as f:
            f.seek(start)
            arrow_ipc.write_stream(f, table)

    return _seal(name, _aligned(start + size), key, fill)


def write_raw(name: str, size: int, fill: Callable[[int], None], key: str = "") -> int:
    """Write and seal an object of ``size`` bytes in a format of the caller's own (``fill(fd)``
    writes it; the shuffle's shard files): room, spilling and freeing work as for any object."""
    return _seal(name, size, key, fill)


def _seal(name: str, size: int, key: str, fill: Callable[[int], None]) -> int:
    """Reserve room, fill a temporary file, and rename it into place: the seal."""
    prefix = prefix_of(name)
    pooled = reserve(prefix, size, key or name)
    final = object_path(name)
    tmp = f"{final}.tmp-{os.getpid()}"
    fd = create(prefix, size, tmp, pooled)
    try:
        os.ftruncate(fd, max(size, 1))
        fill(fd)
        os.rename(tmp, final)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return size


# -- reuse of freed files (see the module's docstring) ------------------------------------

#: smaller objects are freed at once: their pages cost little to allocate
POOL_MIN = 256 * 1024
#: files kept per size class
POOL_SLOTS = 8
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)


def size_class(nbytes: int) -> int:
    """Size classes eight to a power of two: class ``(e << 3) + m - 8`` holds sizes from ``m << e``
    up to ``(m + 1) << e``, for m in 8..15."""
    e = max(nbytes.bit_length() - 4, 0)
    return (e << 3) + (nbytes >> e) - 8


def pool_name(prefix: str, cls: int, slot: int) -> str:
    return f"{prefix}pool-{cls}-{slot}"


def create(prefix: str, size: int, tmp: str, pooled: int) -> int:
    """Open the temporary file ``tmp`` for writing about ``size`` bytes (the caller truncates it
    to size): a file from the reuse pool when ``reserve`` said it has some, else a new one."""
    fd = _claim(prefix, size, tmp) if pooled else None
    return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600) if fd is None else fd


def _claim(prefix: str, size: int, tmp: str) -> int | None:
    """A file from the node's reuse pool of about ``size`` bytes, renamed to ``tmp`` and open for
    writing (the caller truncates it to size); None when the pool has none."""
    if size < POOL_MIN:
        return None
    first = size_class(size)
    # Its own class may be up to an eighth short (those pages are new), the next up to a
    # quarter long (truncated away).
    for cls in (first, first + 1):
        for slot in range(POOL_SLOTS):
            try:
                os.rename(shm_path(pool_name(prefix, cls, slot)), tmp)
            except FileNotFoundError:  # empty slot, or another writer was first
                continue
            return os.open(tmp, os.O_RDWR)
    # None of this size: say so to the next writers, who would look in vain (the agent counts
    # again when it next adds a file; a file it added meanwhile just waits for that).
    _publish_figure(prefix, _POOLED, 0)
    return None


def retire(name: str, drain: str) -> bool:
    """Free ``name``, keeping its shared-memory file as ``drain`` (``StoreManager.drain`` decides
    its fate); False when it had none (it was spilled, or freed already)."""
    try:
        os.rename(object_path(name), shm_path(drain))
        return True
    except FileNotFoundError:
        return False
    finally:  # after the shared-memory file, as ``free`` does
        _unlink(spill_path(name))


def unmapped(fd: int) -> bool:
    """Whether no other process has the file of ``fd`` (open read-only) open or mapped.

    A write lease is granted only then; it is released at once (the agent ignores the SIGIO a
    lease break would send it, and no one else knows a drain's name to open it anyway).
    """
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)
    except BlockingIOError:  # EAGAIN: still open or mapped elsewhere
        return False
    try:
        return fcntl.fcntl(fd, _F_GETLEASE) == fcntl.F_WRLCK  # no opener raced the grant
    finally:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)


def enter_pool(prefix: str, drain: str, size: int) -> bool:
    """Move an unmapped drain file into a free slot of its size class; False when the class is full."""
    cls = size_class(size)
    for slot in range(POOL_SLOTS):
        try:
            os.link(shm_path(drain), shm_path(pool_name(prefix, cls, slot)))
        except FileExistsError:
            continue
        except OSError:  # no hard links here (EPERM, EMLINK): no reuse
            return False
        discard(drain)
        return True
    return False


def pwrite_all(fd: int, part: memoryview | bytes, offset: int) -> None:
    view = memoryview(part)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _open(name: str, key: str) -> tuple[int, str]:
    """Open an object where it is: shared memory, else the spill directory."""
    for where in (object_path, spill_path):  # the spill path only when needed: it reads a setting
        path = where(name)
        try:
            return os.open(path, os.O_RDONLY), path
        except FileNotFoundError:
            continue
    raise ObjectLostError(f"object {key!r} is not in this node's store (neither {object_path(name)} nor spilled)")


def find(name: str) -> str | None:
    """The path of a sealed object, in shared memory or spilled; None if it is in neither."""
    for path in (object_path(name), spill_path(name)):
        if os.path.exists(path):
            return path
    return None


def local_name(prefix: str, name: str) -> str:
    """The name a copy of another node's object ``name`` takes in the store with ``prefix``."""
    return prefix + name[-_NAME_TAIL:]


#: Mappings this process made, by object name, with the file's identity: reading an object
#: again reuses its mapping, whose pages are already faulted in (a fresh map of 400 MB costs
#: ~100,000 page faults).  ``prune_mappings`` drops those whose file is gone (freed, spilled),
#: so a freed object's memory is not held for long; the oldest go past MAX_MAPPINGS.
_mappings: dict[str, tuple[tuple[int, int, int], mmap.mmap]] = {}
MAX_MAPPINGS = 64
#: a new mapping first prunes the others, at most this often (seconds)
PRUNE_EVERY = 0.01
_pruned = 0.0


async def prune_mappings_forever(interval: float = 0.2) -> None:
    """Run ``prune_mappings`` every ``interval`` seconds (a task of a process's event loop): a
    freed file goes back to the pool, or its memory to the system, once no one maps it."""
    while True:
        await asyncio.sleep(interval)
        prune_mappings()


def forget_mapping(name: str) -> None:
    """This process is done with ``name``: let its mapping go (views still in use keep it alive)."""
    _mappings.pop(name, None)


def forget_mappings() -> None:
    """Let every cached mapping go (memory pressure): the next read of each maps it afresh."""
    _mappings.clear()


def prune_mappings() -> None:
    """Forget mappings of objects whose file is gone or replaced; cheap, call a few times a second."""
    global _pruned
    _pruned = time.monotonic()
    for name, (ident, _) in list(_mappings.items()):
        try:
            st = os.stat(object_path(name))
            if (st.st_dev, st.st_ino, st.st_size) == ident:
                continue
        except FileNotFoundError:
            pass
        _mappings.pop(name, None)


def _map(name: str, key: str) -> tuple[mmap.mmap, str, int]:
    fd, path = _open(name, key)
    try:
        st = os.fstat(fd)
        if st.st_size < _HEAD.size:
            raise ObjectLostError(f"object {key!r} is truncated: {st.st_size} bytes in {path}")
        ident = (st.st_dev, st.st_ino, st.st_size)
        cached = _mappings.get(name)
        if cached is not None and cached[0] == ident:
            mm = cached[1]
        else:
            mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
            if time.monotonic() - _pruned > PRUNE_EVERY:  # a reader of many objects lets freed ones go soon
                prune_mappings()
            _mappings[name] = (ident, mm)
            if len(_mappings) > MAX_MAPPINGS:
                del _mappings[next(iter(_mappings))]
        os.utime(fd)  # its last use, for least-recently-used spilling
    finally:
        os.close(fd)
    return mm, path, st.st_size


def map_raw(name: str, key: str) -> memoryview:
    """A read-only view of a sealed object's bytes, whatever their format (``write_raw``)."""
    return memoryview(_map(name, key)[0])


def read(name: str, key: str) -> Any:
    """Map a sealed object and unpickle it with zero-copy buffers (``key`` names it in errors)."""
    mm, path, size = _map(name, key)
    return loads_object(memoryview(mm), key, path)


def loads_object(view: memoryview, key: str, where: str) -> Any:
    """The value in an object's bytes (format above), its buffers views into ``view``; ``where``
    names the object's file or source in errors."""
    size = view.nbytes
    if size < _HEAD.size:
        raise ObjectLostError(f"object {key!r} is truncated: {size} bytes in {where}")
    magic, nbuf, kind, plen = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise ObjectLostError(f"object {key!r} is corrupt: bad magic {bytes(magic)!r} in {where}")
    if _HEAD.size + 8 * nbuf > size:
        raise ObjectLostError(f"object {key!r} is corrupt: header lists {nbuf} buffers in {size} bytes ({where})")
    lens = struct.unpack_from(f"<{nbuf}Q", view, _HEAD.size)
    offset = _aligned(_HEAD.size + 8 * nbuf)
    data = view[offset : offset + plen]
    offset = _aligned(offset + plen)
    bufs = []
    for n in lens:
        bufs.append(view[offset : offset + n])
        offset = _aligned(offset + n)
    if offset > _aligned(size):
        raise ObjectLostError(f"object {key!r} is truncated: needs {offset} bytes, {where} has {size}")
    try:
        if kind:
            return arrow_ipc.read_stream(kind, bufs[0])
        return serialize.loads(data, buffers=bufs)
    except Exception as e:
        raise ObjectLostError(
            f"object {key!r} is corrupt: it does not unpickle ({type(e).__name__}: {e}) ({where})"
        ) from e


def free(name: str) -> None:
    """Remove an object (or the temporary file of a write that failed), in memory or spilled.

    The shared-memory file goes first, then the spilled one: ``spill`` relies on that order.
    """
    _unlink(object_path(name))
    _unlink(spill_path(name))


def discard(file: str) -> None:
    """Remove one of the store's own files in shared memory (a drain, a pool file)."""
    _unlink(shm_path(file))


def spill(name: str) -> int:
    """Move one object from shared memory to the spill directory; returns the bytes freed.

    The copy is sealed on disk before the shared-memory file goes, so readers always find it.
    Raises OSError (disk full, unwritable directory) with the object left where it was, and
    FileNotFoundError when it was freed meanwhile (by another thread), leaving no copy.
    """
    src = object_path(name)
    dst = spill_path(name)
    tmp = f"{dst}.tmp-{os.getpid()}"
    os.makedirs(spill_dir(), mode=0o700, exist_ok=True)
    try:
        shutil.copyfile(src, tmp)
        os.rename(tmp, dst)
    except BaseException:
        _unlink(tmp)
        raise
    size = os.stat(dst).st_size
    try:
        os.unlink(src)
    except FileNotFoundError:
        # Freed since the copy began.  A free removes the shared-memory file, then the
        # spilled one: that second step may have run before our copy landed, so remove it
        # here.  (Had the free come after this unlink, its second step removes the copy.)
        _unlink(dst)
        raise
    return size


def list_objects(prefix: str) -> list[tuple[str, int, float]]:
    """``(name, bytes, last used)`` of every sealed object in shared memory under ``prefix``."""
    return list_files(prefix)[0]


def list_files(prefix: str) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]], int]:
    """A store's files in shared memory: its objects as ``(name, bytes, last used)``, its reuse
    pool as ``(name, bytes, when it entered)``, and the bytes of the rest, in use but not to
    spill: drains, and objects being written (a count that left them out would hand the room
    their writers reserved to the next writer)."""
    objects, pool, busy = [], [], 0
    pool_prefix, drain_prefix = prefix + "pool-", prefix + "drain-"
    with os.scandir(SHM_DIR) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # freed or claimed meanwhile
                continue
            if len(name) == len(prefix) + _NAME_TAIL:
                objects.append((name, st.st_size, st.st_mtime))
            elif name.startswith(pool_prefix):
                pool.append((name, st.st_size, st.st_ctime))  # a link into the pool sets ctime
            elif name.startswith(drain_prefix) or _OBJECT_FILE.fullmatch(name):
                busy += st.st_size
    return objects, pool, busy


def spilled_bytes(prefix: str) -> int:
    """Bytes of the objects under ``prefix`` that are spilled to disk."""
    total = 0
    try:
        with os.scandir(spill_dir()) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and len(entry.name) == len(prefix) + _NAME_TAIL:
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:  # read back or freed meanwhile
                        pass
    except OSError:  # nothing spilled yet, or no usable spill directory
        pass
    return total


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def store_prefixes() -> set[tuple[str, int]]:
    """The prefixes of the stores with files in shared memory or in the spill directory, each
    with the process id it names (a dead store's files in memory may be gone, swept by an agent
    that spills elsewhere, while its spilled ones are left)."""
    entries = os.listdir(SHM_DIR)
    try:
        entries += os.listdir(spill_dir())
    except OSError:  # nothing spilled yet, or no usable spill directory
        pass
    return {(m[0], int(m[1])) for entry in entries if (m := STORE_PREFIX.match(entry))}


def sweep(prefix: str) -> int:
    """Remove every file of the store with this prefix, in memory and spilled (objects, temp
    files, pool, drains), then its capacity file; returns how many there were besides."""
    fd = _capacity_fds.pop(prefix, None)
    if fd is not None:
        os.close(fd)
    capacity = capacity_path(prefix)
    n = 0
    for directory in (SHM_DIR, spill_dir()):
        try:
            entries = os.listdir(directory)
        except OSError:  # no spill directory (yet), or not a directory
            continue
        for entry in entries:
            path = os.path.join(directory, entry)
            if entry.startswith(prefix) and path != capacity:
                _unlink(path)
                n += 1
    _unlink(capacity)  # last: while files are left, the store is still found
    return n
