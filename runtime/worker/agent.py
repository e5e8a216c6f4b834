"""The node agent: one per node; owns the node's object store and runs its workers.

It starts ``num_workers`` worker processes, restarts one that dies (with backoff), frees
store objects when the scheduler says they are released, and on the way out stops its
workers and removes every object of its store.  It leaves when its parent's pipe closes
(the driver of an embedded cluster is gone, even by SIGKILL), when the scheduler goes
away, or on SIGTERM.

Liveness runs both ways over the one connection to the scheduler: every
``heartbeat_interval`` seconds the agent sends ``heartbeat`` and the scheduler answers
``heartbeat-ack``.  A scheduler that hears nothing from an agent for ``heartbeat_timeout``
seconds removes its node (``scheduler/liveness.py``); an agent that hears nothing from the
scheduler for as long stops, with its workers, instead of waiting forever on a frozen or
unreachable scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys

import psutil

from runtime import config, procutil
from runtime.comm.core import Comm, connect, listen
from runtime.objstore import store
from runtime.objstore.manager import StoreManager, store_limit
from runtime.objstore.transfer import ObjectServer
from runtime.scheduler.liveness import heartbeat_settings
from runtime.worker.running import read_running

logger = logging.getLogger("runtime.agent")

RESTART_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0)


def default_node_id() -> str:
    """A node id unique across hosts and restarts: host name, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def sweep_dead_stores() -> int:
    """Remove store objects left by owners whose process is gone (a crash, a power cut)."""
    dead = set()
    for entry in os.listdir(store.SHM_DIR):
        parts = entry.split("-", 3)
        if len(parts) == 4 and parts[0] == "rt" and parts[1].isdigit() and not psutil.pid_exists(int(parts[1])):
            dead.add(f"rt-{parts[1]}-{parts[2]}-")
    return sum(store.sweep(prefix) for prefix in dead)


def _last_lines(path: str, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


class NodeAgent:
    def __init__(
        self, scheduler: str, node: str, prefix: str, num_workers: int, log_dir: str,
        resources: dict[str, float] | None = None, object_store_memory: int | None = None,
        host: str = "127.0.0.1", threads_per_worker: int = 1, memory_limit: int | None = None,
    ):  # fmt: skip
        self.scheduler_address = scheduler
        self.node = node
        self.prefix = prefix
        self.num_workers = num_workers
        #: executor threads of each worker
        self.threads_per_worker = threads_per_worker
        self.log_dir = log_dir
        #: abstract resources each worker offers
        self.resources = resources or {}
        #: bytes each worker may use: the limit given for the node, or its memory, shared out
        total = memory_limit or psutil.virtual_memory().total
        self.memory_limit = total // max(1, num_workers)
        #: keeps the node's store under its limit by spilling
        self.store = StoreManager(prefix, store_limit(object_store_memory))
        #: seconds between heartbeats, and of silence before the scheduler counts as gone
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_settings()
        #: serves this store to other nodes and fetches from theirs (a node silent that long is gone)
        self.objects = ObjectServer(prefix, node, self.heartbeat_timeout)
        #: the interface the object server listens on (loopback unless told otherwise)
        self.host = host
        self.address = ""
        self._server: asyncio.AbstractServer | None = None
        self.comm: Comm | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        #: the store recount running in a thread, if any
        self._maintaining: asyncio.Future | None = None
        self.closed = asyncio.Event()

    async def run(self) -> None:
        swept = sweep_dead_stores()
        if swept:
            logger.info("removed %d store objects left by dead clusters", swept)
        os.makedirs(self.log_dir, exist_ok=True)
        self._server, self.address = await listen(f"tcp://{self.host}:0", self.objects.serve)
        try:
            self.comm = await connect(self.scheduler_address, timeout=self.heartbeat_timeout)
        except (OSError, ValueError) as e:
            logger.error("cannot join the scheduler: %s; node agent %s stops", e, self.node)
            await self.stop()
            return
        if self.host in ("0.0.0.0", "::"):  # advertise the interface that reaches the scheduler
            local = self.comm.writer.get_extra_info("sockname")
            if isinstance(local, tuple):
                self.address = f"tcp://{local[0]}:{self.address.rpartition(':')[2]}"
        self.comm.send(
            {
                "op": "register-node",
                "node": self.node,
                "prefix": self.prefix,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "address": self.address,
                "nworkers": self.num_workers,
                "nthreads": self.threads_per_worker,
                "memory_limit": self.memory_limit * self.num_workers,
            }
        )
        supervisors = [asyncio.ensure_future(self._supervise(i)) for i in range(self.num_workers)]
        supervisors.append(asyncio.ensure_future(self._maintain_store()))
        supervisors.append(asyncio.ensure_future(self._heartbeat()))
        try:
            while True:
                try:
                    msgs = await asyncio.wait_for(self.comm.read(), self.heartbeat_timeout)
                except TimeoutError:
                    logger.error(
                        "heard nothing from the scheduler at %s for %gs (frozen, unreachable, or this node was "
                        "removed while it was frozen itself); node agent %s stops",
                        self.scheduler_address, self.heartbeat_timeout, self.node,
                    )  # fmt: skip
                    return
                for msg in msgs:
                    op = msg["op"]
                    if op == "free-objects":
                        for name in msg["names"]:
                            store.free(name)
                        self.store.freed()
                    elif op == "close":
                        return
                    elif op not in ("registered", "heartbeat-ack"):
                        logger.warning("ignoring unknown op %r", op)
        except ConnectionError:
            logger.info("scheduler connection closed; node agent %s stops", self.node)
        finally:
            for s in supervisors:
                s.cancel()
            await self.stop()

    async def _heartbeat(self) -> None:
        """Tell the scheduler every ``heartbeat_interval`` seconds that this node is alive."""
        while not self._stopping and self.comm is not None:
            self.comm.send({"op": "heartbeat", "node": self.node})
            await asyncio.sleep(self.heartbeat_interval)

    async def _maintain_store(self) -> None:
        """Every few milliseconds: recount the store when needed and spill (in a thread: disk I/O)."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if self.store.due():
                    self._maintaining = loop.run_in_executor(None, self.store.maintain)
                    await asyncio.shield(self._maintaining)  # cancelling us must not hide the thread's work
            except Exception:
                logger.exception("store maintenance failed; trying again")
            await asyncio.sleep(0.01)

    async def _supervise(self, index: int) -> None:
        """Keep worker ``index`` running; restart it when it dies, with backoff."""
        failures = 0
        while not self._stopping:
            log = open(os.path.join(self.log_dir, f"worker-{index}.log"), "ab")
            running_file = os.path.join(self.log_dir, f"worker-{index}.running")
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "runtime.worker", "--scheduler", self.scheduler_address,
                    "--node", self.node, "--prefix", self.prefix, "--name", f"{self.node}/w{index}",
                    "--agent", self.address, "--running-file", running_file,
                    "--resources", json.dumps(self.resources), "--memory-limit", str(self.memory_limit),
                    "--nthreads", str(self.threads_per_worker),
                    "--watch-parent", stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log,
                )  # fmt: skip
            finally:
                log.close()
            self.procs[index] = proc
            started = asyncio.get_running_loop().time()
            code = await proc.wait()
            self.procs.pop(index, None)
            if self._stopping:
                return
            cause = procutil.describe_exit(code)
            logger.warning("worker %d (pid %d) died: %s; restarting", index, proc.pid, cause)
            tail = _last_lines(os.path.join(self.log_dir, f"worker-{index}.log"), 5)
            if tail:
                cause += "; its log ended with:\n" + "\n".join(f"    {line}" for line in tail)
            if self.comm is not None:  # the scheduler names the cause, and blames only what was running
                address = f"{self.node}/w{index}-{proc.pid}"
                executing = read_running(running_file)
                self.comm.send({"op": "worker-died", "address": address, "cause": cause, "executing": executing})
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > 10 else failures + 1
            await asyncio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        procs = list(self.procs.values())
        for p in procs:
            if p.returncode is None:
                p.terminate()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout=3)
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        await self.objects.cancel_transfers()
        if self._maintaining is not None:  # a recount in its thread could write the store's files again
            await asyncio.wait([self._maintaining], timeout=10)
        n = store.sweep(self.prefix)
        logger.info("node agent %s stopped %d workers and freed %d objects", self.node, len(procs), n)
        if self.comm is not None:
            self.comm.close()
        self.closed.set()


async def _main(args: argparse.Namespace) -> None:
    agent = NodeAgent(
        args.scheduler, args.node or default_node_id(), args.prefix or store.make_prefix(), args.num_workers,
        args.log_dir, json.loads(args.resources), args.object_store_memory, args.host, args.threads_per_worker,
        args.memory_limit,
    )  # fmt: skip
    await procutil.serve_until_closed(agent.run(), agent.stop, agent.closed, args.watch_parent)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker.agent")
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--node", default="", help="this node's id (default: host name, pid and a random part)")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--num-workers", type=int, default=config.get("num-workers") or os.cpu_count() or 1)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--memory-limit", type=int, default=0, help="bytes for all workers of this node (0: all)")
    parser.add_argument("--host", default="127.0.0.1", help="interface the object server listens on")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--resources", default="{}", help="abstract resources of each worker, as JSON")
    parser.add_argument(
        "--object-store-memory", type=int, default=config.get("store.memory"),
        help="bytes of shared memory for the node's object store (default: 30%% of memory)",
    )  # fmt: skip
    parser.add_argument("--watch-parent", action="store_true")
    args = parser.parse_args()
    procutil.run_process("agent", _main(args))


if __name__ == "__main__":
    main()
