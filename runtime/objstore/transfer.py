"""Moving stored objects between nodes: each node agent serves its store and fetches for its node.

::

    worker on node B ──fetch(name, source)──► agent B ──get-object(name)──► agent A
          ▲                                     │  (one transfer per object,            │
          └──── fetched(local name) ◄───────────┘   concurrent asks wait for it) ◄─────┘
                                                       header frame, then raw bytes

An object crosses the network once per node: agent B writes the copy into its own store
under a name derived from the original (``store.local_name``), so every later ask on node
B, from any worker or driver, finds it there.  The copy is sealed by rename like any
object.  Readers then map it without a copy.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os

from runtime.comm.core import Comm, connect, request_sync
from runtime.objstore import store
from runtime.objstore.store import OBJECT_NAME

logger = logging.getLogger("runtime.transfer")

CHUNK = 4 * 2**20


class ObjectServer:
    def __init__(self, prefix: str, node: str, stall_timeout: float = 10.0):
        #: this node's store prefix and id
        self.prefix = prefix
        self.node = node
        #: seconds a source may send nothing before the transfer is given up (a frozen node)
        self.stall_timeout = stall_timeout
        self._inflight: dict[str, asyncio.Future[str]] = {}

    async def serve(self, comm: Comm) -> None:
        """One connection: local workers ask to ``fetch``, other agents to ``get-object``.

        A request that is not one of these, or names something that is not an object of a
        store (a path, say), drops the connection with a logged reason.
        """
        while True:
            for msg in await comm.read():
                op = msg["op"]
                name = msg.get("name")
                if not isinstance(name, str) or not OBJECT_NAME.fullmatch(name):
                    logger.warning("dropping connection from %s: %r names no store object: %.80r", comm.peer, op, name)
                    return
                if op == "fetch" and isinstance(msg.get("source"), str):
                    try:
                        local = await self.fetch(name, msg["source"])
                        comm.send({"op": "fetched", "name": local})
                    except Exception as e:
                        comm.send({"op": "fetch-failed", "error": f"{type(e).__name__}: {e}"})
                elif op == "get-object" and name.startswith(self.prefix):
                    await self._send_object(comm, name)
                else:
                    logger.warning("dropping connection from %s: unknown or malformed %r request", comm.peer, op)
                    return

    async def _send_object(self, comm: Comm, name: str) -> None:
        path = store.find(name)
        if path is None:
            comm.send({"op": "object-missing", "error": f"{name} is not in node {self.node}'s store"})
            return
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            comm.send({"op": "object", "size": size})
            await comm.drain()
            with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
                view = memoryview(mm)
                for start in range(0, size, CHUNK):
                    comm.writer.write(view[start : start + CHUNK])
                    await comm.writer.drain()
                view.release()

    async def fetch(self, name: str, source: str) -> str:
        """A copy of another node's object ``name`` in this node's store; returns its local name."""
        local = store.local_name(self.prefix, name)
        if store.find(local) is not None:
            return local
        pending = self._inflight.get(local)
        if pending is None:
            pending = self._inflight[local] = asyncio.ensure_future(self._transfer(name, source, local))
            pending.add_done_callback(lambda _: self._inflight.pop(local, None))
        return await asyncio.shield(pending)

    async def cancel_transfers(self) -> None:
        """Stop every transfer in flight (and remove its partial file): the node is stopping."""
        pending = list(self._inflight.values())
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)

    async def _transfer(self, name: str, source: str, local: str) -> str:
        comm = await connect(source, timeout=10)
        try:
            comm.send({"op": "get-object", "name": name})
            try:
                reply = (await asyncio.wait_for(comm.read(), self.stall_timeout))[0]
            except TimeoutError:
                raise store.ObjectLostError(f"{source} sent nothing for {self.stall_timeout:g}s") from None
            if reply["op"] != "object":
                raise store.ObjectLostError(reply.get("error", f"{source} answered {reply['op']!r}"))
            size = reply["size"]
            loop = asyncio.get_running_loop()
            pooled = await loop.run_in_executor(None, store.reserve, self.prefix, size, name)
            path = store.object_path(local)
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
                        raise store.ObjectLostError(f"{source} stalled {offset} bytes into {name}") from None
                    store.pwrite_all(fd, chunk, offset)
                    offset += len(chunk)
                os.rename(tmp, path)
            except BaseException:
                os.close(fd)
                store.free(os.path.basename(tmp))
                raise
            os.close(fd)
        finally:
            comm.close()
        logger.info("fetched %s (%d bytes) from %s as %s", name, size, source, local)
        return local


def fetch_sync(agent: str, node: str, located: list, source: str | None, key: str) -> list:
    """From a thread: have this node's agent copy a value stored on another node; its local wire form.

    ``located`` is the value's ``[node, nbytes, name]`` there and ``source`` that node's agent.
    """
    if not agent or not source:
        raise store.ObjectStoreUnavailableError(
            f"object {key!r} is on node {located[0]!r} and this process on node {node!r} "
            "knows no node agent to fetch it through"
        )
    reply = request_sync(agent, {"op": "fetch", "name": located[2], "source": source})
    if reply["op"] != "fetched":
        raise store.ObjectLostError(f"cannot fetch {key!r} from node {located[0]!r}: {reply.get('error')}")
    return [node, located[1], reply["name"]]
