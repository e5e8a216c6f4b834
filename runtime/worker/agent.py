"""The node agent: one per node; owns the node's object store and runs its workers.

It starts ``num_workers`` worker processes, restarts one that dies (with backoff), frees
store objects when the scheduler says they are released, and on the way out stops its
workers and removes every object of its store.  As each worker's nanny it watches the
worker's memory (``memory.py``): past the spill threshold it spills the store, past the
terminate threshold it kills the worker and reports "memory limit reached".  On the
scheduler's request it starts more workers, stops given ones (``stop-workers``: retired, not
restarted) and copies objects from other nodes into its store (``acquire-replicas``: a node
being retired hands its unique data on).

Liveness runs both ways over the one connection to the scheduler: every
``heartbeat_interval`` seconds the agent sends ``heartbeat`` (with its store's figures) and
the scheduler answers ``heartbeat-ack``.  A scheduler that hears nothing from an agent for
``heartbeat_timeout`` seconds removes its node (``scheduler/liveness.py``); an agent that
hears nothing from the scheduler for as long stops, with its workers, instead of waiting
forever on a frozen or unreachable scheduler.

It leaves when its parent's pipe closes (the driver of an embedded cluster is gone, even by
SIGKILL), when the scheduler goes away, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import psutil

from runtime import config, procutil
from runtime.comm import messages as m
from runtime.comm.core import Comm, connect, listen
from runtime.objstore import store
from runtime.objstore.manager import StoreManager, read_closes, store_limit, watch_closes
from runtime.objstore.transfer import ObjectServer
from runtime.scheduler.liveness import heartbeat_settings
from runtime.worker import memory
from runtime.worker.forkserver import SpawnLauncher, WorkerProcess, make_launcher
from runtime.worker.running import read_running

logger = logging.getLogger("runtime.agent")

RESTART_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0)


def default_node_id() -> str:
    """A node id unique across hosts and restarts: host name, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def sweep_dead_stores() -> int:
    """Remove the files of stores whose owner is gone (a crash, SIGKILL, a power cut).

    A store is dead when no process holds the lock on its capacity file (its node agent
    holds it for life) and the process its prefix names has ended.  Both: a store written
    without an agent (or by an older runtime) has no lock, and an embedded cluster's prefix
    names its driver, which may end before its agents do.  A zombie has ended: a killed agent
    that PID 1 adopted stays one until PID 1 reaps it, which can take seconds in a container,
    and its store was taken for live.
    """
    dead = [
        prefix for prefix, pid in store.store_prefixes() if not store.is_owned(prefix) and not procutil.running(pid)
    ]
    return sum(store.sweep(prefix) for prefix in dead)


class NodeAgent:
    def __init__(
        self, scheduler: str, node: str, prefix: str, num_workers: int, log_dir: str,
        resources: dict[str, float] | None = None, object_store_memory: int | None = None,
        host: str = "127.0.0.1", threads_per_worker: int = 1, memory_limit: str | int | float | None = None,
        thresholds: memory.Thresholds | None = None, forkserver: socket.socket | None = None,
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
        #: bytes of its own memory each worker may use (default: its share of the machine's)
        self.memory_limit = memory.memory_limit(memory_limit, num_workers)
        #: fractions of that limit at which workers spill, pause and are restarted
        self.thresholds = thresholds or memory.Thresholds.from_args()
        #: keeps the node's store under its limit by spilling
        self.store = StoreManager(prefix, store_limit(object_store_memory))
        #: seconds between heartbeats, and of silence before the scheduler counts as gone
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_settings()
        #: serves this store to other nodes and fetches from theirs (a node silent that long is gone)
        self.objects = ObjectServer(prefix, node, self.heartbeat_timeout, self._copied)
        #: the interface the object server listens on (loopback unless told otherwise)
        self.host = host
        self.address = ""
        self._server: asyncio.AbstractServer | None = None
        self.comm: Comm | None = None
        #: starts worker processes: forked from a pre-imported template (``forkserver``: the socket
        #: of one our starter made, else we start it), or spawned (``forkserver.py``)
        self.launcher = make_launcher(None, scheduler, node, forkserver)
        self.procs: dict[int, WorkerProcess] = {}
        #: the task keeping each worker slot running, by index
        self._supervisors: dict[int, asyncio.Task] = {}
        #: slots being retired: their worker is stopped, not restarted
        self._retiring: set[int] = set()
        #: why the nanny killed a worker (memory), by slot
        self._kill_causes: dict[int, str] = {}
        self._stopping = False
        #: the store recount running in a thread, if any
        self._maintaining: asyncio.Future | None = None
        self.closed = asyncio.Event()

    async def run(self) -> None:
        if not isinstance(self.launcher, SpawnLauncher):  # it imports while we join the scheduler
            try:
                await self.launcher.begin()
            except OSError as e:
                logger.warning("cannot start the worker fork server (%s); spawning workers instead", e)
                self.launcher = SpawnLauncher()
        swept = sweep_dead_stores()
        if swept:
            logger.info("removed %d store objects left by dead clusters", swept)
        os.makedirs(self.log_dir, exist_ok=True)
        self._server, self.address = await listen(f"tcp://{self.host}:0", self.objects.serve, m.TO_OBJECT_SERVER)
        try:
            self.comm = await connect(self.scheduler_address, m.TO_AGENT, timeout=self.heartbeat_timeout)
        except (OSError, ValueError) as e:
            logger.error("cannot join the scheduler: %s; node agent %s stops", e, self.node)
            await self.stop()
            return
        if self.host in ("0.0.0.0", "::"):  # advertise the interface that reaches the scheduler
            local = self.comm.writer.get_extra_info("sockname")
            if isinstance(local, tuple):
                self.address = f"tcp://{local[0]}:{self.address.rpartition(':')[2]}"
        self.comm.send(
            m.RegisterNode(
                self.node, self.prefix, socket.gethostname(), os.getpid(), self.address, self.num_workers,
                self.threads_per_worker, self.memory_limit * self.num_workers, store.spill_dir(),
            )
        )  # fmt: skip
        self.start_workers(self.num_workers)
        background = [
            asyncio.ensure_future(c) for c in (self._maintain_store(), self._watch_memory(), self._heartbeat())
        ]
        closes = watch_closes(store.SHM_DIR)
        if closes is not None:
            asyncio.get_running_loop().add_reader(closes, self._closed_files, closes)
        handlers = self._handlers()
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
                    if type(msg) is m.Close:
                        return
                    handlers[type(msg)](msg)
        except ConnectionError:
            logger.info("scheduler connection closed; node agent %s stops", self.node)
        finally:
            if closes is not None:
                asyncio.get_running_loop().remove_reader(closes)
                os.close(closes)
            for task in (*background, *self._supervisors.values()):
                task.cancel()
            await self.stop()

    def _closed_files(self, fd: int) -> None:
        """Files in shared memory lost their last descriptor or mapping: maybe a drain's reader let go."""
        self.store.drain(read_closes(fd))

    async def _heartbeat(self) -> None:
        """Tell the scheduler every ``heartbeat_interval`` seconds that this node is alive, and
        how full its store is."""
        while not self._stopping and self.comm is not None:
            store = self.store
            self.comm.send(m.Heartbeat(self.node, store.used, store.spilled, store.limit, store.pool_bytes))
            await asyncio.sleep(self.heartbeat_interval)

    def start_workers(self, n: int) -> None:
        """Start ``n`` more worker slots, each kept running by its own supervisor."""
        index = max(self._supervisors, default=-1) + 1
        for i in range(index, index + n):
            self._supervisors[i] = asyncio.ensure_future(self._supervise(i))

    def stop_workers(self, addresses: list[str]) -> None:
        """Retire these workers: stop each (SIGTERM: it finishes its loop) and do not restart it."""
        wanted = set(addresses)
        for index, proc in self.procs.items():
            if self._address(index, proc.pid) in wanted and proc.returncode is None:
                self._retiring.add(index)
                proc.terminate()

    def _address(self, index: int, pid: int) -> str:
        return f"{self.node}/w{index}-{pid}"

    def _handlers(self) -> dict[type, Callable[[Any], Any]]:
        """What to do with each message from the scheduler (``Close`` ends the agent's loop)."""
        return {
            m.FreeObjects: lambda msg: self.store.free(msg.names),
            m.StartWorkers: lambda msg: self.start_workers(msg.n),
            m.StopWorkers: lambda msg: self.stop_workers(msg.addresses),
            m.AcquireReplicas: lambda msg: asyncio.ensure_future(self._acquire(msg.objects)),
            m.Registered: lambda msg: None,
            m.HeartbeatAck: lambda msg: None,
        }

    async def _acquire(self, objects: tuple[tuple[str, m.StoreRef, str], ...]) -> None:
        """Copy ``(key, where it is, its agent's address)`` objects here (each copy is reported)."""
        for key, located, source in objects:
            try:
                await asyncio.wait_for(self.objects.fetch(key, located, source), 120)
            except Exception as e:
                logger.error("could not copy %s from node %s: %s: %s", key, located.node, type(e).__name__, e)

    def _copied(self, key: str, name: str, located: m.StoreRef) -> None:
        """A copy of another node's object was made here: the scheduler records it (and frees it
        with the value), whether or not whoever asked for it is still there to say so."""
        if self.comm is not None:
            self.comm.send(m.AddReplica(key, self.node, name, located))

    async def _watch_memory(self) -> None:
        """The nanny's watch: spill the store when a worker passes the spill threshold, and kill
        (and so restart) one that passes the terminate threshold."""
        limit, th = self.memory_limit, self.thresholds
        watched: dict[int, psutil.Process] = {}
        spilling: set[int] = set()
        interval = config.get("worker.memory.monitor-interval")
        while not self._stopping:
            for index, proc in list(self.procs.items()):
                try:
                    p = watched.get(index)
                    if p is None or p.pid != proc.pid:
                        p = watched[index] = psutil.Process(proc.pid)
                    own, _ = memory.process_memory(p)
                except psutil.Error:  # it just exited: its supervisor sees to it
                    continue
                if memory.over(own, limit, th.terminate) and proc.returncode is None and index not in self._kill_causes:
                    cause = f"memory limit reached: {memory.format_bytes(own)} of {memory.format_bytes(limit)}"
                    logger.warning("worker %d (pid %d): %s; killing it", index, proc.pid, cause)
                    self._kill_causes[index] = cause
                    proc.kill()
                elif memory.over(own, limit, th.spill):
                    if index not in spilling:  # once per crossing, not every sample
                        spilling.add(index)
                        self.store.relieve()
                else:
                    spilling.discard(index)
            await asyncio.sleep(interval)

    async def _maintain_store(self) -> None:
        """Every few milliseconds: recount the store when needed and spill (in a thread: disk I/O)."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                self.store.retry_drains()
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
            args = [
                "--scheduler", self.scheduler_address, "--node", self.node, "--prefix", self.prefix,
                "--name", f"{self.node}/w{index}", "--agent", self.address, "--running-file", running_file,
                "--resources", json.dumps(self.resources), "--memory-limit", str(self.memory_limit),
                "--nthreads", str(self.threads_per_worker), *self.thresholds.to_args()[:4], "--watch-parent",
            ]  # fmt: skip
            try:
                proc = await self.launcher.start(args, log.fileno())
            except RuntimeError as e:  # its fork server died meanwhile: this one is spawned
                logger.warning("worker %d: %s; spawning it instead", index, e)
                proc = await SpawnLauncher().start(args, log.fileno())
            finally:
                log.close()
            self.procs[index] = proc
            started = asyncio.get_running_loop().time()
            code = await proc.wait()
            self.procs.pop(index, None)
            if self._stopping or index in self._retiring:
                self._retiring.discard(index)
                self._supervisors.pop(index, None)
                logger.info("worker %d (pid %d) retired: %s", index, proc.pid, procutil.describe_exit(code))
                return
            cause = self._kill_causes.pop(index, None) or procutil.describe_exit(code)
            logger.warning("worker %d (pid %d) died: %s; restarting", index, proc.pid, cause)
            tail = procutil.last_lines(os.path.join(self.log_dir, f"worker-{index}.log"), 5)
            if tail:
                cause += "; its log ended with:\n" + "\n".join(f"    {line}" for line in tail)
            if self.comm is not None:  # the scheduler names the cause, and blames only what was running
                address = self._address(index, proc.pid)
                executing = read_running(running_file)
                self.comm.send(m.WorkerDied(address, cause, tuple(executing)))
            lived = asyncio.get_running_loop().time() - started
            failures = 0 if lived > 10 else failures + 1
            await asyncio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.launcher.closing = True
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
        await self.launcher.close()
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
        thresholds=memory.Thresholds.from_args(
            args.memory_spill_fraction, args.memory_pause_fraction, args.memory_terminate_fraction
        ),
        forkserver=socket.socket(fileno=args.forkserver_fd) if args.forkserver_fd is not None else None,
    )  # fmt: skip
    await procutil.serve_until_closed(agent.run(), agent.stop, agent.closed, args.watch_parent)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker.agent")
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--node", default="", help="this node's id (default: host name, pid and a random part)")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--num-workers", type=int, default=config.get("num-workers") or os.cpu_count() or 1)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1", help="interface the object server listens on")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--resources", default="{}", help="abstract resources of each worker, as JSON")
    parser.add_argument(
        "--object-store-memory", type=int, default=config.get("store.memory"),
        help="bytes of shared memory for the node's object store (default: 30%% of memory)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-limit", default=None,
        help="each worker's memory limit: bytes ('2GB'), a fraction of this machine's memory, 0 for none "
        "(default: the machine's memory shared out between the workers)",
    )  # fmt: skip
    for name in ("spill", "pause", "terminate"):
        parser.add_argument(
            f"--memory-{name}-fraction", default=None,  # read as the worker.memory.* setting is (memory._fraction)
            help=f"fraction of the memory limit at which a worker {name}s (default: the worker.memory.{name} "
            "setting; 0: never)",
        )  # fmt: skip
    parser.add_argument(
        "--forkserver-fd", type=int, default=None,
        help="the socket of a worker fork server started beside the agent (LocalCluster does), to fork workers from",
    )  # fmt: skip
    parser.add_argument("--watch-parent", action="store_true")
    args = parser.parse_args()
    if args.prefix and not store.STORE_PREFIX.fullmatch(args.prefix):
        parser.error(f"--prefix {args.prefix!r} is not a store prefix (rt-<pid>-<6 hex digits>-)")
    # A reader opening a freed file while the store tests it for reuse breaks the agent's lease,
    # which signals SIGIO; its default would end the agent (store.unmapped).
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    procutil.run_process("agent", _main(args))


if __name__ == "__main__":
    main()
