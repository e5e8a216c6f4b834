"""Fault injection on a cluster started with the ``runtime`` command: one fault per round.

A head (scheduler and node agent, two workers offering the resource ``A``) and a joined node
(an agent and two workers offering ``B``) stand in for two hosts.  Every round runs the same
kind of graph: 1 MiB blocks (stored, never inline) made on both nodes, then two layers of
tasks that each mix a block of this node with one of the other node, then small checksums,
which are all the driver reads.  The driver holds the futures of every layer, so the
stores hold (and, being small, spill) about 24 MiB of live values while a fault strikes:

1. a worker with a task in hand is SIGKILLed (its agent restarts it);
2. the joined node's agent is SIGKILLed (its workers go with it; a fresh node joins with
   the CLI and what only the dead store held is computed again);
3. a worker with a task in hand is frozen (SIGSTOP) for three seconds, then continued;
4. a second driver, a separate process that joined by address and holds futures (and a
   ``put`` value), is SIGKILLed while the first driver's graph runs.

After each round the checksums must be right and, once the driver lets go of its futures,
the cluster must come back to where it was: no task left in the scheduler, no object of
the cluster's stores left in /dev/shm (files ``rt-<agent pid>-...``; the reuse pool's files
are a cache and allowed) or in the spill directory, and no process beyond the scheduler,
the agents and their workers (no orphan worker of a dead agent, no stray driver).

Each defect these rounds found has a test of its own too: a dead agent's store not swept
when the next agent started at once (a zombie's pid still exists), its capacity file left, a
spilled file left by a free during the spill, a copy fetched for a worker that died left
unregistered, a worker whose agent died mid-fetch failing its task with the connection's error
(now it exits and the task runs again), and a dead store's spilled files left when its memory
files were swept by an agent that spills elsewhere.

A soak, off by default, runs rounds of random faults on the same cluster:
``RUNTIME_SOAK_ROUNDS=40 pytest tests/test_fault_injection.py -k soak -s``.

``python tests/test_fault_injection.py ADDRESS`` is the second driver of round 4.
"""

from __future__ import annotations

import gc
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cloudpickle
import numpy as np
import psutil
import pytest

import runtime as rt
from runtime import procutil
from runtime.api.context import current_runtime
from runtime.objstore import store

cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 131_072  # float64s in a block: 1 MiB, ten times the inline threshold
WIDTH = 8  # blocks per layer, half of them on each node
NWORKERS = 2  # per node
SIDES = ("A", "B")  # the resource each node's workers offer: tasks choose their node by it
SHM = store.SHM_DIR
STORE = "12MB"  # each node's store: the 12 MiB of values a round holds on each node do not fit, so some spill
FREEZE = 3.0  # seconds a worker stays stopped in round 3 (longer than the heartbeat timeout)
WAIT = 60.0  # bound of every wait for the cluster

# -- the graph ------------------------------------------------------------------------------


def block_value(i: int) -> np.ndarray:
    return np.arange(N, dtype=np.float64) + i


def mix_value(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + 2 * b  # not symmetric: swapped arguments show


def checksum_value(x: np.ndarray) -> float:
    return float((x * (np.arange(N) % 7 + 1)).sum())  # weighted: a block out of place shows


@rt.remote
def make(i):
    time.sleep(0.05)
    return block_value(i)


@rt.remote
def mix(a, b):
    time.sleep(0.3)  # long enough for a fault to find a task in hand
    return mix_value(a, b)


@rt.remote
def checksum(x):
    return checksum_value(x)


@dataclass
class Graph:
    blocks: list
    layers: list[list]
    sums: list
    expected: list[float]

    def futures(self) -> list:
        return [*self.blocks, *(f for layer in self.layers for f in layer), *self.sums]


def submit_graph(tag: int, extra=None) -> Graph:
    """Blocks on both nodes, two layers each mixing a block of its node with one of the other,
    then checksums; ``extra`` (a stored value's future) is mixed into block 0."""
    blocks = [make.options(resources={SIDES[i % 2]: 1}).remote(tag + i) for i in range(WIDTH)]
    values = [block_value(tag + i) for i in range(WIDTH)]
    if extra is not None:
        blocks[0] = mix.options(resources={"A": 1}).remote(extra, blocks[0])
        values[0] = mix_value(block_value(-1), values[0])
    layers, current = [], blocks
    for layer in range(2):
        # task i runs on the node of block i+1 and reads block i from the other node
        current = [
            mix.options(resources={SIDES[(i + layer + 1) % 2]: 1}).remote(current[i], current[(i + 1) % WIDTH])
            for i in range(WIDTH)
        ]
        values = [mix_value(values[i], values[(i + 1) % WIDTH]) for i in range(WIDTH)]
        layers.append(current)
    sums = [checksum.remote(f) for f in current]
    return Graph(blocks, layers, sums, [checksum_value(v) for v in values])


# -- the cluster ----------------------------------------------------------------------------


def _cli(*args: str, run_dir: str, timeout: float = 90) -> subprocess.CompletedProcess:
    from conftest import runtime_cmd  # not at the top: the second driver runs this file without pytest

    return runtime_cmd(*args, run_dir=run_dir, timeout=timeout)


def _pid(run_dir: str, name: str) -> int:
    with open(os.path.join(run_dir, f"{name}.pid")) as f:
        return int(f.read().split()[0])


def _wait_until(ready: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while not (result := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(0.05)
    return result


def _eventually(ready: Callable[[], object], timeout: float) -> bool:
    """Whether ``ready()`` comes true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _store_files(directory: str, prefixes: list[str]) -> set[str]:
    """Files of these stores in ``directory``, but for the reuse pool's (a bounded cache)."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {e for e in entries if e.startswith(tuple(prefixes)) and "pool-" not in e}


@dataclass
class Cluster:
    """The cluster the rounds share: where its run directories are, and what it ever had."""

    tmp: str
    spill_dir: str
    address: str = ""
    head_dir: str = ""
    #: the run directory of the node offering B (a fresh one after round 2)
    node_dir: str = ""
    #: every run directory started, to stop them all at the end
    run_dirs: list[str] = field(default_factory=list)
    #: every store prefix the cluster ever had, by node id
    prefixes: dict[str, str] = field(default_factory=dict)

    def start_node(self, name: str, *args: str) -> str:
        run_dir = os.path.join(self.tmp, name)
        self.run_dirs.append(run_dir)
        started = _cli("start", *args, "--num-workers", str(NWORKERS), "--object-store-memory", STORE, run_dir=run_dir)
        assert started.returncode == 0, started.stderr
        return run_dir

    def request(self, what: str) -> dict:
        return current_runtime().client.request(what)

    def nodes(self) -> dict[str, dict]:
        nodes = self.request("identity")["nodes"]
        self.prefixes.update({n: info["prefix"] for n, info in nodes.items()})
        return nodes

    def node_of(self, run_dir: str) -> str:
        pid = _pid(run_dir, "agent")
        return next(n for n, info in self.nodes().items() if info["pid"] == pid)

    def workers_of(self, run_dir: str) -> dict[str, int]:
        """Address -> pid of the workers of the node started from ``run_dir``."""
        node = self.node_of(run_dir)
        return {a: w["pid"] for a, w in self.request("identity")["workers"].items() if w["node"] == node}

    def ready(self) -> None:
        """Wait until there are two nodes, each with all its workers."""

        def full() -> bool:
            nodes, workers = self.nodes(), self.request("identity")["workers"].values()
            return len(nodes) == 2 and all(sum(w["node"] == n for w in workers) == NWORKERS for n in nodes)

        _wait_until(full, "both nodes have all their workers")

    def processes(self, agents: set[int]) -> tuple[dict[int, list[int]], list[str]]:
        """Each of these agents' live children (its workers), and every other live process that
        names the scheduler's address: an orphan worker of a dead agent, a driver left running."""
        workers, templates = {}, set()
        for pid in agents:
            try:
                children = psutil.Process(pid).children()
                # Forked workers are the children of the agent's fork server (worker/forkserver.py).
                forkers = [p for p in children if "runtime.worker.forkserver" in p.cmdline()]
                templates.update(p.pid for p in forkers)
                children = [p for p in children if p not in forkers] + [w for f in forkers for w in f.children()]
                workers[pid] = sorted(p.pid for p in children if procutil.running(p.pid))
            except psutil.NoSuchProcess:
                workers[pid] = []
        known = agents | templates | {p for ps in workers.values() for p in ps} | {os.getpid()}
        strays = []
        for p in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
            cmdline = " ".join(p.info["cmdline"] or ())
            if self.address in cmdline and p.info["pid"] not in known and p.info["status"] != psutil.STATUS_ZOMBIE:
                strays.append(f"pid {p.info['pid']} (parent {p.info['ppid']}): {cmdline[:160]}")
        return workers, strays

    def logs(self, name: str) -> str:
        """The log files called ``name`` of every run directory, one after the other."""
        text = []
        for run_dir in self.run_dirs:
            try:
                with open(os.path.join(run_dir, "logs", name), errors="replace") as f:
                    text.append(f.read())
            except FileNotFoundError:
                pass
        return "\n".join(text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a joined node started with the CLI, with short heartbeats (the processes
    inherit the variables) and a spill directory of their own.  Every process started is
    stopped at the end, and what killed agents left in their stores is removed."""
    tmp = str(tmp_path_factory.mktemp("faults"))
    c = Cluster(tmp, spill_dir=os.path.join(tmp, "spill"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNTIME_HEARTBEAT_TIMEOUT", "2")
        mp.setenv("RUNTIME_HEARTBEAT_INTERVAL", "0.2")
        mp.setenv("RUNTIME_SPILL_DIR", c.spill_dir)
        try:
            c.head_dir = c.start_node("head", "--head", "--port", "0", "--resources", "A=4")
            with open(os.path.join(c.head_dir, "address")) as f:
                c.address = f.read().strip()
            c.node_dir = c.start_node("b", "--address", c.address, "--resources", "B=4")
            rt.init(address=c.address)
            try:
                c.ready()
                yield c
            finally:
                rt.shutdown()
        finally:
            for run_dir in c.run_dirs:
                _cli("stop", "--timeout", "5", run_dir=run_dir)
            for prefix in c.prefixes.values():  # a SIGKILLed agent could not empty its store
                for directory in (SHM, c.spill_dir):
                    for name in os.listdir(directory) if os.path.isdir(directory) else ():
                        if name.startswith(prefix):
                            os.unlink(os.path.join(directory, name))


class Round:
    """One round: what the cluster was at its start, and the checks that it came back to it."""

    def __init__(self, c: Cluster):
        c.ready()
        self.c = c
        self.scheduler = _pid(c.head_dir, "scheduler")
        prefixes = list(c.prefixes.values())
        #: the stores' files in shared memory and in the spill directory at the start
        self.shm = _store_files(SHM, prefixes)
        self.spilled = _store_files(c.spill_dir, prefixes)

    def run(self, tag: int, fault: Callable[[], None]) -> None:
        """Run a graph, strike once its first layer of mixes is done, check its checksums."""
        graph = submit_graph(tag)
        rt.wait(graph.layers[0], timeout=WAIT)  # the second layer is running now
        fault()
        sums = rt.get(graph.sums, timeout=WAIT)
        assert sums == graph.expected
        # The stores could not hold all the values held: some went through the spill directory.
        assert _store_files(self.c.spill_dir, list(self.c.prefixes.values())) - self.spilled

    def settle(self, gone: tuple[int, ...] = (), dead: str = "") -> None:
        """The driver has let go of its futures: the cluster must come back to where it was.

        ``gone``: the pids killed; ``dead``: the prefix of a store whose agent was killed, which
        the agent started after it must sweep."""
        c = self.c
        gc.collect()
        _wait_until(lambda: not c.request("task-states"), "the scheduler has forgotten every task")
        assert c.request("validate") is None  # the state machine never raised, and its state is valid

        # Processes: the scheduler, the two agents with their workers, and nothing else.
        assert procutil.running(self.scheduler)
        for pid in gone:
            _wait_until(lambda pid=pid: not procutil.running(pid), f"killed process {pid} has exited")
        agents = {_pid(c.head_dir, "agent"), _pid(c.node_dir, "agent")}

        def settled() -> bool:
            workers, strays = c.processes(agents)
            return not strays and all(len(ws) == NWORKERS for ws in workers.values())

        assert _eventually(settled, 20), f"processes (workers by agent, strays): {c.processes(agents)}"
        c.ready()

        # Shared memory: each live store as it was (a new one: its capacity file), no object left.
        live = [p for p in c.prefixes.values() if p != dead]
        expected = {f for f in self.shm if f.startswith(tuple(live))} | {p + "capacity" for p in live}
        _eventually(lambda: _store_files(SHM, live) <= expected, 5)
        left = _store_files(SHM, live) - expected
        assert not left, f"objects of live stores left in {SHM}: {sorted(left)}"

        # The spill directory: no object of this round left there.
        _eventually(lambda: _store_files(c.spill_dir, live) <= self.spilled, 3)
        left = _store_files(c.spill_dir, live) - self.spilled
        assert not left, f"objects of live stores left in {c.spill_dir}: {sorted(left)}"

        if dead:  # the store of the killed agent: swept by the agent that joined after it
            _eventually(lambda: not _store_files(SHM, [dead]) | _store_files(c.spill_dir, [dead]), 3)
            in_shm, spilled = _store_files(SHM, [dead]), _store_files(c.spill_dir, [dead])
            assert not in_shm and not spilled, f"the dead store's {sorted(in_shm)} and {sorted(spilled)} are left"


# -- the rounds -----------------------------------------------------------------------------


def _in_hand(c: Cluster, run_dir: str) -> tuple[str, int]:
    """A worker of the node started from ``run_dir`` with a task in hand: (address, pid)."""
    workers = c.workers_of(run_dir)

    def busy() -> tuple[str, int] | None:
        processing = c.request("processing")
        return next(((a, pid) for a, pid in workers.items() if processing.get(a)), None)

    return _wait_until(busy, "a worker of the node has a task in hand")


def killed_worker(c: Cluster, tag: int) -> None:
    """A worker of the joined node with a task in hand is SIGKILLed."""
    r = Round(c)
    before = c.workers_of(c.node_dir)
    killed = []

    def kill_worker() -> None:
        _, pid = _in_hand(c, c.node_dir)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    r.run(tag, kill_worker)
    r.settle(gone=tuple(killed))
    # Its agent started another in its place, and told why it died.
    after = c.workers_of(c.node_dir)
    assert set(before.values()) - set(after.values()) == set(killed) and len(after) == NWORKERS
    assert f"(pid {killed[0]}) died: killed by signal 9 (SIGKILL); restarting" in c.logs("agent.log")


def killed_agent(c: Cluster, tag: int) -> None:
    """The joined node's agent is SIGKILLed while its workers have tasks in hand; a fresh node joins."""
    r = Round(c)
    old_dir, agent = c.node_dir, _pid(c.node_dir, "agent")
    old_node = c.node_of(old_dir)
    old_workers = tuple(c.workers_of(old_dir).values())

    def kill_agent() -> None:
        _in_hand(c, old_dir)
        os.kill(agent, signal.SIGKILL)
        # At once, a fresh node offering B joins: B's tasks run there, and so do those whose
        # values only the dead store held, again.
        c.node_dir = c.start_node(f"node-{tag}", "--address", c.address, "--resources", "B=4")

    r.run(tag, kill_agent)
    assert old_node not in c.nodes()
    r.settle(gone=(agent, *old_workers), dead=c.prefixes[old_node])


def frozen_worker(c: Cluster, tag: int) -> None:
    """A worker of the joined node with a task in hand is stopped for FREEZE seconds, then continued."""
    r = Round(c)
    before = {**c.workers_of(c.head_dir), **c.workers_of(c.node_dir)}

    def freeze_worker() -> None:
        _, pid = _in_hand(c, c.node_dir)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE)
        finally:
            os.kill(pid, signal.SIGCONT)

    r.run(tag, freeze_worker)
    r.settle()
    # Frozen for longer than the heartbeat timeout, it was waited for, not replaced.
    assert {**c.workers_of(c.head_dir), **c.workers_of(c.node_dir)} == before


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line ``proc`` prints, within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"the second driver printed no line (exit status {proc.poll()}): {data!r}")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            data += os.read(fd, 65536)
    return data.decode().partition("\n")[0]


def killed_driver(c: Cluster, tag: int) -> None:
    """A second driver, joined by address and holding futures and a put value, is SIGKILLed
    while this driver's graph runs."""
    r = Round(c)
    with open(os.path.join(c.tmp, f"driver-{tag}.log"), "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), c.address], stdout=subprocess.PIPE, stderr=log
        )
    try:
        graph = submit_graph(tag)
        held = json.loads(_first_line(driver, WAIT))  # the keys it holds, its first layer done
        assert set(held) & set(c.request("task-states"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        assert rt.get(graph.sums, timeout=WAIT) == graph.expected
        del graph
        # The scheduler let go of everything the dead driver held, its put value too.
        _wait_until(lambda: not set(held) & set(c.request("task-states")), "the killed driver's keys are released")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    r.settle(gone=(driver.pid,))


def test_round_1_a_killed_worker(cluster):
    killed_worker(cluster, 0)


def test_round_2_a_killed_node_agent(cluster):
    killed_agent(cluster, 100)


def test_round_3_a_frozen_worker(cluster):
    frozen_worker(cluster, 200)


def test_round_4_a_killed_driver(cluster):
    killed_driver(cluster, 300)


def test_the_joined_driver_reads_stored_values(cluster):
    """No fault: the driver reads the graph's last layer itself, 1 MiB values from both stores."""
    r = Round(cluster)
    graph = submit_graph(500)
    values = rt.get(graph.layers[-1], timeout=WAIT)
    assert [checksum_value(v) for v in values] == graph.expected
    del values, graph
    r.settle()


#: random rounds of the soak (off by default: it takes about 5 s a round)
SOAK = int(os.environ.get("RUNTIME_SOAK_ROUNDS", "0"))


@pytest.mark.skipif(not SOAK, reason="a soak: RUNTIME_SOAK_ROUNDS=N runs N rounds of random faults")
@pytest.mark.timeout(60 + 30 * SOAK)
def test_soak_random_faults(cluster):
    """RUNTIME_SOAK_ROUNDS rounds, each with one of the four faults chosen at random
    (RUNTIME_SOAK_SEED repeats a run); the rounds' checks as above."""
    seed = int(os.environ.get("RUNTIME_SOAK_SEED") or time.time())
    rng = random.Random(seed)
    for i in range(SOAK):
        fault = rng.choice((killed_worker, killed_agent, frozen_worker, killed_driver))
        print(f"soak seed {seed}, round {i + 1}: {fault.__name__}", flush=True)
        fault(cluster, 1000 * (i + 1))


def test_stop_leaves_nothing_behind(cluster):
    """After the rounds, ``runtime stop`` on the head: every process exits, each store is emptied."""
    c = cluster
    agents = {_pid(d, "agent") for d in (c.head_dir, c.node_dir)}
    live = [c.prefixes[c.node_of(d)] for d in (c.head_dir, c.node_dir)]
    processes = [_pid(c.head_dir, "scheduler"), *agents, *(w for ws in c.processes(agents)[0].values() for w in ws)]
    rt.shutdown()
    stopped = _cli("stop", run_dir=c.head_dir)
    assert stopped.returncode == 0, stopped.stderr
    _wait_until(lambda: not any(procutil.running(p) for p in processes), "every process of the cluster has exited")
    assert not c.processes(set())[1]
    left = [e for d in (SHM, c.spill_dir) if os.path.isdir(d) for e in os.listdir(d) if e.startswith(tuple(live))]
    assert not left


def _second_driver(address: str) -> None:
    """Round 4's second driver: join, put a value, run a graph, print the keys it holds, wait."""
    rt.init(address=address)
    put = rt.put(block_value(-1))
    graph = submit_graph(400, extra=put)
    rt.wait(graph.layers[0], timeout=WAIT)
    print(json.dumps([f.key for f in (put, *graph.futures())]), flush=True)
    time.sleep(WAIT)


if __name__ == "__main__":
    _second_driver(sys.argv[1])
