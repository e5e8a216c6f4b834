"""``LocalCluster``: a scheduler, a node agent and its workers as processes on this machine.

With ``n_nodes`` > 1, several node agents, each with its own store and share of the
workers, stand in for several hosts: objects move between their stores over TCP.

The driver starts the scheduler and the node agent side by side (the agent starts the
workers), each with ``stdin`` a pipe whose write end only the driver holds.  If the driver
exits without ``close()``, even by SIGKILL, both read EOF and shut down; the agent stops
its workers and empties its store.  They talk over a Unix socket in a private session
directory, so nothing listens on the network.

``scale(n)`` and ``adapt(minimum, maximum)`` change the number of workers while it runs:
the node agents start more on request, and workers go by graceful retirement (the
scheduler's ``workers_to_close`` picks idle ones), as Dask's adaptive deployments do.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import IO, Any

from runtime import config, procutil
from runtime.client.client import ClusterClient
from runtime.objstore.store import make_prefix
from runtime.worker import forkserver, memory

logger = logging.getLogger("runtime.cluster")


def _session_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}")


class LocalCluster:
    def __init__(
        self,
        n_workers: int | None = None,
        *,
        n_nodes: int = 1,
        resources: dict[str, float] | None = None,
        object_store_memory: int | None = None,
        validate: bool | None = None,
        memory_limit: str | int | float | None = None,
        memory_spill_fraction: float | bool | None = None,
        memory_pause_fraction: float | bool | None = None,
        memory_terminate_fraction: float | bool | None = None,
        amm_interval: float | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        dashboard_address: str | None = "",
        silence_logs: Any = None,
    ):
        """``n_workers`` worker processes (default: one per CPU) of ``threads_per_worker``
        executor threads each.  ``processes=False`` (Dask's threads-in-one-process cluster)
        is accepted, but workers are processes all the same: they need the shared store.
        ``dashboard_address`` (Dask's): where the scheduler serves its dashboard (``":0"``: any
        free port; None: none; default: the ``scheduler.dashboard.address`` setting).
        ``silence_logs`` (Dask's) is accepted: the cluster's processes log to its session's files."""
        if dashboard_address:
            config.dashboard_address(dashboard_address)  # a ValueError naming it if it is bad
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 0):
            raise ValueError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
        if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be a whole number >= 1, not {threads_per_worker!r}")
        if not isinstance(processes, bool):
            raise ValueError(f"processes must be True or False, not {processes!r}")
        if not processes:
            logger.info("LocalCluster(processes=False): workers still run as processes (they map the shared store)")
        self.threads_per_worker = threads_per_worker
        if not isinstance(n_nodes, int) or n_nodes < 1:
            raise ValueError(f"n_nodes must be a whole number >= 1, not {n_nodes!r}")
        if n_workers is None:
            n_workers = config.get("num-workers") or os.cpu_count() or 1
        self.n_workers = n_workers
        #: each worker's memory limit in bytes (0: none), and the fractions of it that act
        self.memory_limit = memory.memory_limit(memory_limit, max(1, self.n_workers // n_nodes))
        self.thresholds = memory.Thresholds.from_args(
            memory_spill_fraction, memory_pause_fraction, memory_terminate_fraction
        )
        self.cluster_id = os.urandom(4).hex()
        #: sockets and logs of this cluster; removed by close()
        self.session_dir = os.path.join(_session_root(), f"session-{self.cluster_id}")
        os.makedirs(os.path.join(self.session_dir, "logs"), mode=0o700)
        self.scheduler_address = f"unix://{self.session_dir}/scheduler.sock"
        #: node ids and store prefixes; node 0 is the driver's own
        self.nodes = [f"node-{self.cluster_id}-{i}" for i in range(n_nodes)]
        self.prefixes = [make_prefix() for _ in range(n_nodes)]
        self.node, self.prefix = self.nodes[0], self.prefixes[0]
        if validate is None:
            validate = config.get("scheduler.validate")
        self._logs: list[IO[bytes]] = []
        #: each process's log file, by pid
        self._log_paths: dict[int, str] = {}
        sched_cmd = [sys.executable, "-m", "runtime.scheduler", "--address", self.scheduler_address, "--watch-parent"]
        if validate:
            sched_cmd.append("--validate")
        if amm_interval is not None:  # else the scheduler.amm-interval setting
            sched_cmd += ["--amm-interval", str(amm_interval)]
        if dashboard_address != "":  # else the scheduler.dashboard.address setting
            sched_cmd += ["--dashboard-address", dashboard_address or "off"]
        # Bound here, and listening before the scheduler has even started: the agent and the
        # client connect at once and their first messages wait in the socket until it is ready
        # (no retrying, so no retry interval lost), while all of them start side by side.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with listener:
            listener.bind(self.scheduler_address.removeprefix("unix://"))
            listener.listen(128)
            sched_cmd += ["--listen-fd", str(listener.fileno())]
            self.scheduler_proc = self._spawn(sched_cmd, "scheduler.log", listener.fileno())
        # Several nodes on one machine stand in for several hosts: each has its own agent,
        # store and workers; the workers are shared out between them.
        self.agent_procs = []
        #: how many workers each node's agent keeps running (scale and adapt change it)
        self.slots: dict[str, int] = {}
        #: a connection to the scheduler for scaling, made on first use
        self._control: ClusterClient | None = None
        self._scale_lock = threading.Lock()
        self._adapt_thread: threading.Thread | None = None
        self._adapt_stop = threading.Event()
        #: each node's worker fork server, started beside its agent (``worker/forkserver.py``)
        self.template_procs: list[subprocess.Popen] = []
        for i, (node, prefix) in enumerate(zip(self.nodes, self.prefixes, strict=True)):
            workers = self.slots[node] = self.n_workers // n_nodes + (i < self.n_workers % n_nodes)
            log_dir = os.path.join(self.session_dir, "logs", f"node-{i}" if n_nodes > 1 else "")
            suffix = f"-{i}" if n_nodes > 1 else ""
            template: list[str] = []
            if forkserver.uses_forkserver():  # it imports while the scheduler and the agent start
                ours, theirs = forkserver.template_socket()
                with ours, theirs:
                    cmd = forkserver.template_command(theirs.fileno(), self.scheduler_address, node)
                    self.template_procs.append(self._spawn(cmd, f"forkserver{suffix}.log", theirs.fileno()))
                    agent_fd = os.dup(ours.fileno())  # closed below, once the agent has its copy
                template = ["--forkserver-fd", str(agent_fd)]
            cmd = [
                sys.executable, "-m", "runtime.worker.agent", "--scheduler", self.scheduler_address,
                "--node", node, "--prefix", prefix, "--num-workers", str(workers),
                "--log-dir", log_dir, "--watch-parent", "--resources", json.dumps(resources or {}),
                *(["--object-store-memory", str(object_store_memory)] if object_store_memory else []),
                "--memory-limit", str(self.memory_limit), *self.thresholds.to_args(),
                "--threads-per-worker", str(threads_per_worker), *template,
            ]  # fmt: skip
            try:
                self.agent_procs.append(self._spawn(cmd, f"agent{suffix}.log", agent_fd if template else None))
            finally:
                if template:
                    os.close(agent_fd)

    def _spawn(self, cmd: list[str], log_name: str, pass_fd: int | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.session_dir, "logs", log_name), "ab")
        self._logs.append(log)
        # The driver's config.set() values hold in every process of its cluster, except the
        # choice of a local scheduler: a task's own .remote() calls go to this cluster.
        inherited = {**json.loads(config.serialize()), "scheduler": "distributed"}
        env = {**os.environ, config.INHERIT_VARIABLE: json.dumps(inherited)}
        fds = () if pass_fd is None else (pass_fd,)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, env=env, pass_fds=fds
        )
        self._log_paths[proc.pid] = log.name
        return proc

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [self.scheduler_proc, *self.agent_procs, *self.template_procs]

    def startup_failure(self) -> str | None:
        """Which of the cluster's processes has already exited, how, and the end of its log: why
        a client could not join it (None: all run)."""
        names = ["scheduler", *(f"node agent {i}" for i in range(len(self.agent_procs)))]
        for name, proc in zip(names, (self.scheduler_proc, *self.agent_procs), strict=True):
            try:  # its socket closing (what the client saw) may come a moment before its exit
                code = proc.wait(0.5) if proc is self.scheduler_proc else proc.poll()
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                tail = "\n".join(f"    {line}" for line in procutil.last_lines(self._log_paths[proc.pid], 8))
                return f"its {name} exited ({procutil.describe_exit(code)}); its log ended with:\n{tail}"
        return None

    def _client(self) -> ClusterClient:
        if self._control is None:
            self._control = ClusterClient(self.scheduler_address, node=self.node, prefix=self.prefix)
        return self._control

    def scale(self, n: int, timeout: float = 60.0) -> None:
        """Run ``n`` workers: ask node agents for more, or retire idle ones gracefully.

        Scaling down retires only workers that run nothing (``workers_to_close``), so it may
        retire fewer than asked for now; ``adapt`` asks again.  Like Dask's, it ends an
        ``adapt`` in progress: the count is the caller's from now on.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"scale() takes a whole number of workers >= 0, not {n!r}")
        self._stop_adapting()
        self._scale(n, timeout)

    def _scale(self, n: int, timeout: float) -> None:
        with self._scale_lock:
            client = self._client()
            for node, proc in zip(self.nodes, self.agent_procs, strict=True):
                if proc.poll() is not None:  # its agent left (retired, or died)
                    self.slots.pop(node, None)
            have = sum(self.slots.values())
            if n > have:
                if not self.slots:
                    raise RuntimeError("cannot scale up: no node agent of this cluster is running")
                more: dict[str, int] = {}
                for _ in range(n - have):
                    node = min(self.slots, key=lambda nd: self.slots[nd] + more.get(nd, 0))
                    more[node] = more.get(node, 0) + 1
                for node, k in more.items():
                    answer = client.request("start-workers", node=node, n=k)
                    if "error" in answer:
                        raise RuntimeError(f"cannot start workers on {node}: {answer['error']}")
                    self.slots[node] += k
                logger.info("scaled up from %d to %d workers", have, n)
            elif n < have:
                registered = len(client.request("identity")["workers"])
                going = client.request("workers-to-close", n=max(0, registered - (have - n)))
                if going:
                    for address in client.retire_workers(going, timeout=timeout)["workers"]:
                        self.slots[address.rsplit("/", 1)[0]] -= 1
                    logger.info("scaled down from %d to %d workers", have, sum(self.slots.values()))

    def adapt(
        self, minimum: int = 0, maximum: int | float = math.inf, *, interval: float = 1.0,
        target_duration: float = 5.0, wait_count: int = 3,
    ) -> None:  # fmt: skip
        """Scale with the load between ``minimum`` and ``maximum`` workers, like Dask's ``adapt``.

        Every ``interval`` seconds the scheduler says how many workers its tasks call for
        (about ``target_duration`` seconds of work each, see ``adaptive_target``); more are
        started at once, and idle ones retired once it has said fewer ``wait_count`` times
        in a row.  Calling it again replaces the previous bounds.
        """
        if not isinstance(minimum, int) or minimum < 0 or not maximum >= minimum:
            raise ValueError(f"adapt() needs 0 <= minimum <= maximum, not minimum={minimum!r} maximum={maximum!r}")
        if interval <= 0 or target_duration <= 0 or wait_count < 1:
            raise ValueError("adapt() needs interval > 0, target_duration > 0 and wait_count >= 1")
        self._stop_adapting()
        self._adapt_stop = threading.Event()
        args = (minimum, maximum, interval, target_duration, wait_count, self._adapt_stop)
        self._adapt_thread = threading.Thread(target=self._adapt, args=args, name="runtime-adapt", daemon=True)
        self._adapt_thread.start()

    def _adapt(
        self, minimum: int, maximum: float, interval: float, target_duration: float, wait_count: int,
        stop: threading.Event,
    ) -> None:  # fmt: skip
        lower = 0  # consecutive recommendations to go below the current count
        while not stop.wait(interval):
            try:
                wanted = self._client().request("adaptive-target", target_duration=target_duration)
                target = int(min(max(wanted, minimum), maximum))
                have = sum(self.slots.values())
                lower = lower + 1 if target < have else 0
                if target > have or lower >= wait_count:
                    lower = 0
                    self._scale(target, 60.0)
            except Exception:
                if stop.is_set():
                    return
                logger.exception("adaptive scaling failed; trying again in %gs", interval)

    def _stop_adapting(self) -> None:
        self._adapt_stop.set()
        if self._adapt_thread is not None:
            self._adapt_thread.join(70)
            self._adapt_thread = None

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process of the cluster and remove its session directory."""
        self._stop_adapting()
        if self._control is not None:
            self._control.close()
            self._control = None
        # Closing the pipes is the signal: the agent stops its workers and empties the store.
        # The fork servers leave once their agents and workers have.
        for p in (*self.agent_procs, *self.template_procs, self.scheduler_proc):
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()
        for p in (*self.agent_procs, *self.template_procs, self.scheduler_proc):
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
