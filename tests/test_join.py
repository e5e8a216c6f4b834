"""Drivers that join a cluster started by the ``runtime`` command, as separate processes.

A driver on the same host as a node attaches to that node's store and reads zero-copy; one
on a host with no node (here: ``client.attach-store`` off) reads from and puts into the
nodes' stores over the network.  Both must handle values of any size the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import pid_of, runtime_cmd, wait_until

from runtime.objstore import store

#: what every joined driver does; prints lines the test checks
DRIVER = """
import sys, numpy as np, pyarrow as pa, runtime as rt
from runtime import Client
from runtime.api.context import current_runtime

rt.init(address=sys.argv[1])

@rt.remote
def ones(n):
    return np.ones(n)

@rt.remote
def total(a):
    return float(a.sum())

@rt.remote
def table(n):
    return pa.table({"x": np.arange(n)})

big = rt.get(ones.remote(1_000_000))  # 8 MB: through the store
assert big.sum() == 1_000_000 and not big.flags.writeable, big.flags
assert rt.get(table.remote(100_000)).column("x").to_numpy()[-1] == 99_999
ref = rt.put(np.arange(1_000_000, dtype=np.float64))
assert rt.get(total.remote(ref)) == float(np.arange(1_000_000).sum())
assert rt.get(ref)[-1] == 999_999
@rt.remote
class Holder:
    def make(self, n):
        return np.full(n, 4.0)

    def total(self, a):
        return float(a.sum())

holder = Holder.remote()
made = holder.make.remote(500_000)  # stored on the actor's node
assert rt.get(made)[0] == 4.0 and rt.get(holder.total.remote(ref)) == float(np.arange(1_000_000).sum())
assert rt.get(total.remote(made)) == 2_000_000.0
done, pending = rt.wait([ones.remote(200_000), ref], num_returns=2, timeout=30)
assert len(done) == 2, (done, pending)
print("node", repr(current_runtime().client.node))

with Client(sys.argv[1]) as client:
    [a, b] = client.scatter([np.full(300_000, 2.0), np.full(10, 3.0)])
    s = client.submit(np.add, a, 1.0)
    assert client.gather(s)[0] == 3.0 and client.submit(np.sum, a).result() == 600_000.0
    assert list(client.gather([a, b])[1]) == [3.0] * 10
rt.shutdown()
print("ok")
"""


def _driver(address: str, *, attach: bool, script: str = DRIVER, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNTIME_CLIENT__ATTACH_STORE": "1" if attach else "0"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), address],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node (scheduler, agent, two workers) started by the CLI; its address and run directory."""
    run_dir = str(tmp_path_factory.mktemp("head"))
    started = runtime_cmd("start", "--head", "--port", "0", "--num-workers", "2", run_dir=run_dir)
    assert started.returncode == 0, started.stderr
    try:
        with open(os.path.join(run_dir, "address")) as f:
            yield f.read().strip(), run_dir
    finally:
        runtime_cmd("stop", "--timeout", "10", run_dir=run_dir)


@pytest.mark.parametrize("attach", [True, False], ids=["same-host", "no-node"])
def test_a_joined_driver_gets_puts_scatters_and_passes_values_of_any_size(head, attach):
    address, run_dir = head
    prefix = f"rt-{pid_of(run_dir, 'agent')}-"
    before = {f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix)}
    result = _driver(address, attach=attach)
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stderr[-3000:]
    node = result.stdout.split("node ")[1].splitlines()[0]
    assert (node != "''") == attach, node
    # The driver's values are all released: the store holds what it held before (allowing the
    # scheduler a moment to send its frees).
    deadline = time.monotonic() + 10
    while (left := {f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix)} - before) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not [f for f in left if "pool-" not in f and "drain-" not in f], left


#: a second node holds a large value; its agent is frozen, then killed, while the driver reads it
HOLDER_DIES = """
import sys, time, numpy as np, runtime as rt
from runtime.api.context import current_runtime
from runtime.objstore.store import ObjectLostError

rt.init(address=sys.argv[1])
holder = int(sys.argv[2])

@rt.remote
def ones(n):
    return np.ones(n)

client = current_runtime().client
nodes = client.request("identity")["nodes"]
[node] = [n for n, info in nodes.items() if info["pid"] == holder]
workers = [a for a, w in client.request("identity")["workers"].items() if w["node"] == node]
ref = ones.options(workers=workers, allow_other_workers=True).remote(5_000_000)
rt.wait([ref], timeout=60)
print("stored", flush=True)
sys.stdin.readline()  # the holder is frozen now
try:
    value = rt.get(ref, timeout=60)
    print("recomputed", value.sum(), flush=True)
except ObjectLostError as e:
    print("lost", e, flush=True)
rt.shutdown()
"""


def _connected_to(pids: list[int], server: int) -> bool:
    """Whether one of ``pids`` has a TCP connection open to a port process ``server`` listens on
    (a stopped server's kernel still accepts connections: they wait in its backlog)."""
    ports = {c.laddr.port for c in psutil.Process(server).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return any(
        c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in ports
        for pid in pids
        for c in psutil.Process(pid).net_connections("tcp")
    )


@pytest.mark.parametrize("attach", [True, False], ids=["same-host", "no-node"])
def test_a_holder_that_dies_during_a_fetch_gives_the_lost_data_path_not_a_hang(head, tmp_path, attach):
    address, run_dir = head
    other = str(tmp_path / "holder")
    joined = runtime_cmd("start", "--address", address, "--num-workers", "1", run_dir=other)
    assert joined.returncode == 0, joined.stderr
    agent = pid_of(other, "agent")
    env = {
        **os.environ, "RUNTIME_CLIENT__ATTACH_STORE": "1" if attach else "0", "RUNTIME_HEARTBEAT__TIMEOUT": "3",
    }  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER_DIES), address, str(agent)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert driver.stdout is not None and driver.stdin is not None
        assert driver.stdout.readline() == "stored\n", driver.stderr.read() if driver.poll() is not None else ""
        os.kill(agent, signal.SIGSTOP)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        # The driver reads from the frozen holder: itself, or its node's agent for it.
        reader = pid_of(run_dir, "agent") if attach else driver.pid
        wait_until(lambda: _connected_to([reader], agent), "the driver reads from the frozen holder")
        os.kill(agent, signal.SIGKILL)
        out, err = driver.communicate(timeout=60)
        assert driver.returncode == 0, err[-3000:]
        assert out.startswith("recomputed 5000000.0") or (
            out.startswith("lost") and "'ones-" in out and "node" in out
        ), out + err[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        try:
            os.kill(agent, signal.SIGKILL)
        except ProcessLookupError:
            pass
        runtime_cmd("stop", "--timeout", "5", run_dir=other)


#: holds more than its node's store can: the driver reads values that spilled
READS_SPILLED = """
import sys, numpy as np, runtime as rt

rt.init(address=sys.argv[1])

@rt.remote
def block(i):
    return np.full(500_000, float(i))  # 4 MB

refs = [block.remote(i) for i in range(8)]  # 32 MB in a 12 MB store
rt.wait(refs, num_returns=len(refs), timeout=60)
assert [float(v[0]) for v in rt.get(refs, timeout=60)] == [float(i) for i in range(8)]
rt.shutdown()
print("ok")
"""


def test_a_joined_driver_reads_what_its_node_spilled_where_that_node_spills(tmp_path, monkeypatch):
    # The node spills where its own setting says; the driver's settings name another place
    # (it once looked there, and a spilled value was lost to it).
    run_dir, spill = str(tmp_path / "node"), str(tmp_path / "node-spill")
    monkeypatch.setenv("RUNTIME_SPILL_DIR", spill)
    started = runtime_cmd("start", "--head", "--port", "0", "--num-workers", "1", "--object-store-memory", "12MB",
                          run_dir=run_dir)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        monkeypatch.setenv("RUNTIME_SPILL_DIR", str(tmp_path / "driver-spill"))
        with open(os.path.join(run_dir, "address")) as f:
            result = _driver(f.read().strip(), attach=True, script=READS_SPILLED)
        assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stderr[-3000:]
        assert not os.path.exists(tmp_path / "driver-spill")
    finally:
        runtime_cmd("stop", "--timeout", "10", run_dir=run_dir)
