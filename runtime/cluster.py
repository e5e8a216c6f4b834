"""``LocalCluster``: a scheduler, a node agent and its workers as processes on this machine.

With ``n_nodes`` > 1, several node agents, each with its own store and share of the
workers, stand in for several hosts: objects move between their stores over TCP.

The driver starts the scheduler and the node agent side by side (the agent starts the
workers), each with ``stdin`` a pipe whose write end only the driver holds.  If the driver
exits without ``close()``, even by SIGKILL, both read EOF and shut down; the agent stops
its workers and empties its store.  They talk over a Unix socket in a private session
directory, so nothing listens on the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import IO

from runtime.objstore.store import make_prefix
from runtime.worker import memory


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
    ):
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 0):
            raise ValueError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
        if not isinstance(n_nodes, int) or n_nodes < 1:
            raise ValueError(f"n_nodes must be a whole number >= 1, not {n_nodes!r}")
        self.n_workers = os.cpu_count() or 1 if n_workers is None else n_workers
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
            validate = os.environ.get("RUNTIME_VALIDATE") == "1"
        self._logs: list[IO[bytes]] = []
        sched_cmd = [sys.executable, "-m", "runtime.scheduler", "--address", self.scheduler_address, "--watch-parent"]
        if validate:
            sched_cmd.append("--validate")
        self.scheduler_proc = self._spawn(sched_cmd, "scheduler.log")
        # Several nodes on one machine stand in for several hosts: each has its own agent,
        # store and workers; the workers are shared out between them.
        self.agent_procs = []
        for i, (node, prefix) in enumerate(zip(self.nodes, self.prefixes, strict=True)):
            workers = self.n_workers // n_nodes + (i < self.n_workers % n_nodes)
            log_dir = os.path.join(self.session_dir, "logs", f"node-{i}" if n_nodes > 1 else "")
            cmd = [
                sys.executable, "-m", "runtime.worker.agent", "--scheduler", self.scheduler_address,
                "--node", node, "--prefix", prefix, "--num-workers", str(workers),
                "--log-dir", log_dir, "--watch-parent", "--resources", json.dumps(resources or {}),
                *(["--object-store-memory", str(object_store_memory)] if object_store_memory else []),
                "--memory-limit", str(self.memory_limit), *self.thresholds.to_args(),
            ]  # fmt: skip
            self.agent_procs.append(self._spawn(cmd, f"agent-{i}.log" if n_nodes > 1 else "agent.log"))

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        log = open(os.path.join(self.session_dir, "logs", log_name), "ab")
        self._logs.append(log)
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [self.scheduler_proc, *self.agent_procs]

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process of the cluster and remove its session directory."""
        # Closing the pipes is the signal: the agent stops its workers and empties the store.
        for p in (*self.agent_procs, self.scheduler_proc):
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()
        for p in (*self.agent_procs, self.scheduler_proc):
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
