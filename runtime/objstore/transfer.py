"""Moving stored objects between nodes, and to and from clients on hosts without a node.

Each node agent serves its store (``ObjectServer``).  A worker or driver on a node that needs
an object of another node asks its own agent, which copies it once::

    worker on node B ──fetch(key, ref, source)──► agent B ──get-object(name)──► agent A
          ▲                                         │  (one transfer per object,        │
          └──── fetched(local name) ◄───────────────┘   concurrent asks wait for it) ◄──┘
                                                           header frame, then raw bytes

An object crosses the network once per node: agent B writes the copy into its own store
under a name derived from the original (``store.local_name``) and tells the scheduler
(``add-replica``) itself, so a copy is recorded, and freed with the value, even if the
worker that asked dies meanwhile.  Every later ask on node B finds the copy there.

A client on a host with no node (or told not to attach to one: the ``client.attach-store``
setting) has no store to copy into: it reads an object straight from its holder's agent
(``get-object``) into memory of its own (``read_remote``), and puts a large value into a
node's store by sending it to that node's agent (``put-object``, ``write_remote``).  Both
stream the object's bytes: no copy is made on the way beyond the socket's own.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import pickle
from collections.abc import Callable
from typing import Any

from runtime import config
from runtime.comm import auth, codec
from runtime.comm import messages as m
from runtime.comm.core import Comm, connect, parse_address, read_frame, request_sync
from runtime.objstore import store

logger = logging.getLogger("runtime.transfer")

CHUNK = 4 * 2**20

#: ``(key, local name, where the original is)``: a copy was made in this store
CopyMade = Callable[[str, str, m.StoreRef], None]


class ObjectServer:
    def __init__(self, prefix: str, node: str, stall_timeout: float = 10.0, copied: CopyMade | None = None):
        #: this node's store prefix and id
        self.prefix = prefix
        self.node = node
        #: seconds a peer may send nothing before a transfer is given up (a frozen node)
        self.stall_timeout = stall_timeout
        #: told of every copy made here (the agent tells the scheduler)
        self.copied = copied
        self._inflight: dict[str, asyncio.Future[str]] = {}

    async def serve(self, comm: Comm) -> None:
        """One connection: local workers and clients ask to ``fetch``, other agents and clients
        with no store to ``get-object``, clients with no store to ``put-object``.

        A request that is not one of these, or names something that is not an object of a
        store (a path, say: ``messages.ObjectName`` checks it as it decodes), drops the
        connection with a logged reason.
        """
        while True:
            try:
                msgs = await comm.read()
            except codec.ProtocolError as e:
                logger.warning("dropping connection from %s: %s", comm.peer, e)
                return
            for msg in msgs:
                if type(msg) is m.GetObject:
                    if not msg.name.startswith(self.prefix):
                        logger.warning(
                            "dropping connection from %s: %s is not of node %s", comm.peer, msg.name, self.node
                        )
                        return
                    if not await self._send_object(comm, msg.name, msg.offset, msg.length):
                        return
                elif type(msg) is m.Fetch:
                    if msg.source is None:
                        comm.send(m.FetchFailed(f"no source agent given for {msg.key!r}"))
                        continue
                    try:
                        comm.send(m.Fetched(await self.fetch(msg.key, msg.located, msg.source)))
                    except Exception as e:
                        comm.send(m.FetchFailed(f"{type(e).__name__}: {e}"))
                elif not await self._take_object(comm, msg.key, msg.size):  # PutObject
                    return

    async def _send_object(self, comm: Comm, name: str, offset: int = 0, length: int = -1) -> bool:
        """Stream one object of this store, or ``length`` bytes of it from ``offset``, to the
        peer; False if the peer went away meanwhile."""
        path = store.find(name)
        if path is None:
            comm.send(m.ObjectMissing(f"{name} is not in node {self.node}'s store"))
            return True
        with open(path, "rb") as f:
            whole = os.fstat(f.fileno()).st_size
            end = whole if length < 0 else offset + length
            if not 0 <= offset <= end <= whole:
                comm.send(m.ObjectMissing(f"{name} has {whole} bytes, not {offset}..{end}"))
                return True
            # Not closed here: the transport may still hold a slice of it when the peer is gone,
            # and closing a mapping with views raises; it goes with its last view.
            view = memoryview(mmap.mmap(f.fileno(), whole, prot=mmap.PROT_READ))[offset:end] if whole else b""
        size = end - offset
        comm.send(m.Object(size))
        sent = 0
        try:
            await comm.drain()
            while sent < size:
                comm.writer.write(view[sent : sent + CHUNK])
                sent = min(sent + CHUNK, size)
                await comm.writer.drain()
        except (ConnectionError, OSError) as e:  # the reader stopped reading: its own error path runs
            logger.info("%s went away %d of %d bytes into %s: %s", comm.peer, sent, size, name, e)
            return False
        return True

    async def _take_object(self, comm: Comm, key: str, size: int) -> bool:
        """A client with no store puts an object into this one: room is reserved, then it streams
        the bytes; the reply names the object.  False (connection dropped) if it stops midway."""
        loop = asyncio.get_running_loop()
        if size < 1:
            comm.send(m.PutFailed(f"an object of {size} bytes is no object"))
            return True
        try:
            pooled = await loop.run_in_executor(None, store.reserve, self.prefix, size, key)
        except store.ObjectStoreFullError as e:
            comm.send(m.PutFailed(str(e)))
            return True
        comm.send(m.Ready())
        name = store.new_name(self.prefix, key)
        try:
            await self._receive(comm, name, size, pooled)
        except store.ObjectLostError as e:
            logger.info("put of %r from %s failed: %s", key, comm.peer, e)
            return False
        comm.send(m.Stored(name))
        return True

    async def fetch(self, key: str, located: m.StoreRef, source: str) -> str:
        """A copy of another node's object in this node's store; returns its local name.

        ``located`` says where it is and ``source`` is that node's agent."""
        local = store.local_name(self.prefix, located.name)
        if store.find(local) is not None:
            return local
        pending = self._inflight.get(local)
        if pending is None:
            pending = self._inflight[local] = asyncio.ensure_future(self._transfer(key, located, source, local))
            pending.add_done_callback(lambda _: self._inflight.pop(local, None))
        return await asyncio.shield(pending)

    async def cancel_transfers(self) -> None:
        """Stop every transfer in flight (and remove its partial file): the node is stopping."""
        pending = list(self._inflight.values())
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)

    async def _transfer(self, key: str, located: m.StoreRef, source: str, local: str) -> str:
        name = located.name
        comm = await connect(source, m.FROM_OBJECT_SERVER, timeout=10)
        try:
            comm.send(m.GetObject(name))
            try:
                reply = (await asyncio.wait_for(comm.read(), self.stall_timeout))[0]
            except TimeoutError:
                raise store.ObjectLostError(f"{source} sent nothing for {self.stall_timeout:g}s") from None
            if type(reply) is not m.Object:
                raise store.ObjectLostError(getattr(reply, "error", f"{source} answered {m.op_of(type(reply))!r}"))
            size = reply.size
            loop = asyncio.get_running_loop()
            pooled = await loop.run_in_executor(None, store.reserve, self.prefix, size, name)
            await self._receive(comm, local, size, pooled)
        finally:
            comm.close()
        logger.info("fetched %s (%d bytes) from %s as %s", name, size, source, local)
        if self.copied is not None:
            self.copied(key, local, located)
        return local

    async def _receive(self, comm: Comm, name: str, size: int, pooled: int) -> None:
        """Write ``size`` bytes streamed by the peer into this store as object ``name`` (room
        reserved); ObjectLostError, with the partial file removed, if the peer stops or stalls."""
        path = store.object_path(name)
        tmp = f"{path}.tmp-{os.getpid()}"
        fd = store.create(self.prefix, size, tmp, pooled)
        try:
            os.ftruncate(fd, size)
            offset = 0
            while offset < size:
                reading = comm.reader.readexactly(min(CHUNK, size - offset))
                try:
                    chunk = await asyncio.wait_for(reading, self.stall_timeout)
                except TimeoutError:
                    raise store.ObjectLostError(f"{comm.peer} stalled {offset} bytes into {name}") from None
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    raise store.ObjectLostError(f"{comm.peer} went away {offset} bytes into {name}: {e}") from None
                store.pwrite_all(fd, chunk, offset)
                offset += len(chunk)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            store.free(os.path.basename(tmp))
            raise
        os.close(fd)


# -- from threads: workers, drivers --------------------------------------------------------


def fetch_sync(agent: str, node: str, key: str, located: m.StoreRef, source: str | None) -> m.StoreRef:
    """Have this node's agent copy a value stored on another node (``located``, whose agent is
    ``source``); where the copy is."""
    if not agent or not source:
        raise store.ObjectStoreUnavailableError(
            f"object {key!r} is on node {located.node!r} and this process on node {node!r} "
            "knows no node agent to fetch it through"
        )
    reply = request_sync(agent, m.Fetch(key, located, source), m.FROM_OBJECT_SERVER)
    if type(reply) is not m.Fetched:
        raise store.ObjectLostError(
            f"cannot fetch {key!r} from node {located.node!r}: {getattr(reply, 'error', reply)}"
        )
    return m.StoreRef(node, located.nbytes, reply.name)


def read_remote(source: str, key: str, located: m.StoreRef) -> Any:
    """A stored value read straight from its holder's agent at ``source`` into this process's
    memory (a client with no store on its host).  ObjectLostError names the key and node when
    the holder does not have it, goes away or stalls."""
    where = f"node {located.node!r} at {source}"
    stall = config.get("heartbeat.timeout")
    scheme, host, port = parse_address(source)
    try:
        with auth.open_sync(scheme, host, port, stall) as sock:
            sock.sendall(codec.encode([m.GetObject(located.name)]))
            reply = read_frame(sock, source, m.FROM_OBJECT_SERVER)[0]
            if type(reply) is not m.Object:
                raise store.ObjectLostError(f"object {key!r} is not on {where}: {getattr(reply, 'error', reply)}")
            # Page-aligned anonymous memory, filled straight from the socket: numpy and Arrow
            # buffers come back aligned, as from the store.
            buf = mmap.mmap(-1, max(reply.size, 1))
            view = memoryview(buf)[: reply.size]
            auth.recv_into_all(sock, view, source)
    except OSError as e:  # refused, reset, timed out: the holder is gone or frozen
        raise store.ObjectLostError(f"cannot read {key!r} from {where}: {type(e).__name__}: {e}") from None
    return store.loads_object(view.toreadonly(), key, where)


def read_ranges(source: str, ranges: list[tuple[str, int, int]], what: str) -> list[memoryview]:
    """Byte ranges ``(name, offset, length)`` of objects read straight from their holder's agent
    at ``source``, on one connection, each into memory of this process (the shuffle's shards of
    another node: each crosses the network once, and only the ranges asked for).
    ObjectLostError, naming ``what``, when the holder does not have it, goes away or stalls."""
    stall = config.get("heartbeat.timeout")
    scheme, host, port = parse_address(source)
    out = []
    try:
        with auth.open_sync(scheme, host, port, stall) as sock:
            sock.sendall(codec.encode([m.GetObject(name, offset, length) for name, offset, length in ranges]))
            for _ in ranges:
                reply = read_frame(sock, source, m.FROM_OBJECT_SERVER)[0]
                if type(reply) is not m.Object:
                    raise store.ObjectLostError(f"{what} is not at {source}: {getattr(reply, 'error', reply)}")
                buf = mmap.mmap(-1, max(reply.size, 1))  # page-aligned, as Arrow likes its buffers
                view = memoryview(buf)[: reply.size]
                auth.recv_into_all(sock, view, source)
                out.append(view.toreadonly())
    except OSError as e:
        raise store.ObjectLostError(f"cannot read {what} from {source}: {type(e).__name__}: {e}") from None
    return out


def write_remote(agent: str, node: str, key: str, data: bytes, buffers: list[pickle.PickleBuffer]) -> m.StoreRef:
    """Put a value into the store of ``node`` through its agent at ``agent``: the pickle and its
    buffers are sent as they are, in the store's format.  Returns the value's wire form."""
    parts, size = store.layout(data, buffers)
    scheme, host, port = parse_address(agent)
    stall = config.get("heartbeat.timeout")
    try:
        with auth.open_sync(scheme, host, port, stall) as sock:
            sock.sendall(codec.encode([m.PutObject(key, size)]))
            sock.settimeout(config.get("store.write-timeout") + stall)  # the node may spill to make room
            reply = read_frame(sock, agent, m.FROM_OBJECT_SERVER)[0]
            if type(reply) is not m.Ready:
                raise store.ObjectStoreFullError(
                    f"node {node!r} cannot store {key!r}: {getattr(reply, 'error', reply)}"
                )
            sock.settimeout(stall)
            sent = 0
            for offset, part in parts:
                if offset > sent:
                    sock.sendall(bytes(offset - sent))  # alignment padding
                sock.sendall(part)
                sent = offset + memoryview(part).nbytes
            if size > sent:
                sock.sendall(bytes(size - sent))
            reply = read_frame(sock, agent, m.FROM_OBJECT_SERVER)[0]
    except OSError as e:
        raise store.ObjectStoreUnavailableError(
            f"cannot put {key!r} into the store of node {node!r} at {agent}: {type(e).__name__}: {e}"
        ) from None
    if type(reply) is not m.Stored:
        raise store.ObjectStoreUnavailableError(f"node {node!r} did not store {key!r}: {reply}")
    return m.StoreRef(node, size, reply.name)
