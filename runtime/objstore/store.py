"""The per-node shared-memory object store (the skeleton's part of it).

Layout: one POSIX shared-memory file per object under ``/dev/shm``, named
``rt-<cluster>-<digest of key><attempt>``: each write gets a name of its own, so a stale
copy of a recomputed task can be freed without touching the live one.  A writer fills
``<name>.tmp-<pid>`` and renames it to the final name, so the rename is the seal: a reader
sees a whole object or none, even if the writer is killed mid-write (the node agent
sweeps the leftovers by prefix).

Object format, every part 64-byte aligned so numpy and Arrow see aligned buffers::

    MAGIC(8) | nbuffers u32 | pad u32 | pickle_len u64 | buffer_len u64 * nbuffers
    pickle bytes | buffer 0 | buffer 1 | ...

Readers ``mmap`` the file read-only and unpickle with the buffers as memoryviews into the
mapping: numpy arrays come back as read-only views, with no copy.  Unlinking a file that a
reader still maps is safe; the memory goes when the last view does.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from runtime.comm import serialize

MAGIC = b"RTOBJ001"
_HEAD = struct.Struct("<8sIIQ")
ALIGN = 64
SHM_DIR = "/dev/shm"


class ObjectLostError(RuntimeError):
    """A stored object is missing or damaged; the message names the key and the cause."""


class ObjectStoreUnavailableError(RuntimeError):
    """A value needs the store but this process has no node store to write to."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


@dataclass(frozen=True, slots=True)
class StoreRef:
    """Where a stored value lives: the node whose store holds it, its size, its object name."""

    node: str
    nbytes: int
    name: str

    def to_wire(self) -> list:
        return [self.node, self.nbytes, self.name]


def new_name(prefix: str, key: str) -> str:
    """A fresh object name, under the node's prefix, for one write of ``key``'s value."""
    return prefix + hashlib.blake2b(key.encode(), digest_size=10).hexdigest() + os.urandom(4).hex()


def object_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def write(name: str, data: bytes, buffers: list[pickle.PickleBuffer]) -> int:
    """Write and seal one object; returns its size in bytes."""
    views = [memoryview(b).cast("B") for b in buffers]
    head = _HEAD.pack(MAGIC, len(views), 0, len(data)) + struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    parts: list[tuple[int, memoryview | bytes]] = []
    offset = _aligned(len(head))
    parts.append((0, head))
    parts.append((offset, data))
    offset = _aligned(offset + len(data))
    for v in views:
        parts.append((offset, v))
        offset = _aligned(offset + v.nbytes)
    final = object_path(name)
    tmp = f"{final}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(offset, 1))
        for off, part in parts:
            _pwrite_all(fd, part, off)
        os.rename(tmp, final)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return offset


def _pwrite_all(fd: int, part: memoryview | bytes, offset: int) -> None:
    view = memoryview(part)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def read(name: str, key: str) -> Any:
    """Map a sealed object and unpickle it with zero-copy buffers (``key`` names it in errors)."""
    path = object_path(name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ObjectLostError(f"object {key!r} is not in this node's store ({path} is gone)") from None
    try:
        size = os.fstat(fd).st_size
        if size < _HEAD.size:
            raise ObjectLostError(f"object {key!r} is truncated: {size} bytes in {path}")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mm)
    magic, nbuf, _, plen = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise ObjectLostError(f"object {key!r} is corrupt: bad magic {bytes(magic)!r} in {path}")
    lens = struct.unpack_from(f"<{nbuf}Q", view, _HEAD.size)
    offset = _aligned(_HEAD.size + 8 * nbuf)
    data = view[offset : offset + plen]
    offset = _aligned(offset + plen)
    bufs = []
    for n in lens:
        bufs.append(view[offset : offset + n])
        offset = _aligned(offset + n)
    if offset > _aligned(size):
        raise ObjectLostError(f"object {key!r} is truncated: needs {offset} bytes, {path} has {size}")
    return serialize.loads(data, buffers=bufs)


def free(name: str) -> None:
    _unlink(object_path(name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sweep(prefix: str) -> int:
    """Remove every object (and half-written temp file) with this prefix; returns the count."""
    n = 0
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(prefix):
            _unlink(os.path.join(SHM_DIR, entry))
            n += 1
    return n
