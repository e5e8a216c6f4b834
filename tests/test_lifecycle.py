"""Start-up and shut-down of an embedded cluster, and what it leaves behind (nothing).

Each test runs a driver script in its own interpreter, so the driver can exit without
shutdown() or be killed with SIGKILL, then checks processes, sockets and /dev/shm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from conftest import wait_until

import runtime as rt
from runtime.client.client import ClusterClient

DRIVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import runtime as rt

    @rt.remote
    def inc(x):
        return x + 1

    {init}
    big = rt.put(np.ones(1_000_000))           # in the store
    assert rt.get(inc.remote(inc.remote(1))) == 3
    r = rt.api.context.current_runtime()
    r.client.wait_for_workers(r.cluster.n_workers)
    ident = r.client.request("identity")
    print(json.dumps({{
        "pids": [p.pid for p in r.cluster.processes] + [w["pid"] for w in ident["workers"].values()],
        "session_dir": r.cluster.session_dir,
        "prefix": r.cluster.prefix,
        "nworkers": len(ident["workers"]),
    }}), flush=True)
    {end}
    """
)


def _start_driver(init: str = "rt.init(num_workers=2)", end: str = "") -> tuple[subprocess.Popen, dict]:
    script = DRIVER.format(init=init, end=end)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"driver failed: {proc.communicate()[1]}")
    return proc, json.loads(line)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_nothing_left(info: dict, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(_gone(p) for p in info["pids"]):
            break
        time.sleep(0.05)
    alive = [p for p in info["pids"] if not _gone(p)]
    assert not alive, f"processes left running: {alive}"
    shm = [f for f in os.listdir("/dev/shm") if f.startswith(info["prefix"])]
    assert not shm, f"shared memory left: {shm}"
    sock = os.path.join(info["session_dir"], "scheduler.sock")
    assert not os.path.exists(sock), "scheduler socket left"


def test_shutdown_leaves_nothing_behind():
    proc, info = _start_driver(end="rt.shutdown()")
    assert proc.wait(30) == 0
    assert info["nworkers"] == 2
    _assert_nothing_left(info)
    assert not os.path.exists(info["session_dir"])


def test_exit_without_shutdown_leaves_nothing_behind():
    proc, info = _start_driver(end="")  # atexit does the shutdown
    assert proc.wait(30) == 0
    _assert_nothing_left(info)


def test_sigkilled_driver_leaves_nothing_behind():
    proc, info = _start_driver(end="import time; time.sleep(60)")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _assert_nothing_left(info)


def test_api_before_init_starts_a_local_cluster():
    proc, info = _start_driver(init="", end="rt.shutdown()")
    assert proc.wait(30) == 0
    assert info["nworkers"] == os.cpu_count()
    _assert_nothing_left(info)


@rt.remote
def inc(x):
    return x + 1


def test_init_with_address_joins_a_running_cluster():
    with rt.LocalCluster(n_workers=1) as cluster:
        rt.init(address=cluster.scheduler_address)
        try:
            assert rt.get(inc.remote(41)) == 42
            assert rt.get(rt.put([1, 2])) == [1, 2]
        finally:
            rt.shutdown()
    assert not os.path.exists(cluster.session_dir)


def test_address_that_does_not_answer_fails_clearly(tmp_path):
    with pytest.raises(ConnectionRefusedError, match="nothing answers at unix://"):
        rt.Client(f"unix://{tmp_path}/nothing.sock", timeout=0.5)
    with pytest.raises(ValueError, match="must look like tcp://HOST:PORT"):
        rt.Client("localhost:8786")


def test_shutdown_twice_is_harmless():
    rt.shutdown()
    rt.shutdown()


def test_malformed_message_drops_only_that_client_and_its_futures_fail_clearly():
    with rt.LocalCluster(n_workers=1) as cluster:
        bad = ClusterClient(cluster.scheduler_address)
        good = ClusterClient(cluster.scheduler_address)
        try:
            from runtime.comm import messages as m
            from runtime.comm import serialize

            func = serialize.dumps_function(lambda: 1)
            pending = bad.submit(serialize.dumps_function(time.sleep), "sleep", (30,), {})
            bad._send(m.UpdateGraph(5, ()))  # type: ignore[arg-type]  # not a list of tasks
            with pytest.raises(ConnectionError, match="lost the connection to the scheduler"):
                pending.result(timeout=30)
            assert good.submit(func, "one", (), {}).result(timeout=30) == 1
        finally:
            bad.close()
            good.close()


def test_lazy_messages_wait_a_moment_and_leave_in_order_with_the_next_urgent_one():
    import asyncio

    from runtime.comm.core import ThreadOutbox

    loop = asyncio.new_event_loop()
    batches: list[list[dict]] = []
    outbox = ThreadOutbox(loop, batches.append)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        outbox.put({"n": 1}, lazy=True)
        outbox.put({"n": 2}, lazy=True)
        wait_until(lambda: batches, "the lazy messages leave")  # no urgent one: they wait LAZY_DELAY
        assert batches == [[{"n": 1}, {"n": 2}]]  # together
        outbox.put({"n": 3}, lazy=True)
        outbox.put({"n": 4})  # urgent: takes the lazy one along at once, in order
        wait_until(lambda: len(batches) > 1, "the urgent message leaves")
        assert batches[1:] == [[{"n": 3}, {"n": 4}]]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@rt.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_futures_of_a_shut_down_runtime_fail_at_once_and_start_no_new_cluster():
    rt.init(num_workers=1)
    done, pending = inc.remote(1), nap.remote(60)
    assert rt.get(done) == 2
    woken: list[BaseException] = []
    waiter = threading.Thread(target=lambda: woken.extend(_raised(lambda: rt.get(pending))), daemon=True)
    waiter.start()
    wait_until(lambda: _blocked(waiter), "the waiter blocks in get()")
    rt.shutdown()
    waiter.join(10)
    assert not waiter.is_alive(), "a get() blocked across shutdown() kept waiting"
    assert isinstance(woken[0], rt.ClientClosedError) and "cancelled before it finished" in str(woken[0])
    assert pending.cancelled()
    start = time.monotonic()
    for use in (
        lambda: rt.get(done, timeout=30),
        lambda: rt.get([done, pending], timeout=30),
        lambda: done.result(timeout=30),
        lambda: rt.wait([pending], timeout=30),
        lambda: rt.wait([pending], num_returns=1, timeout=30),
        lambda: rt.cancel(pending),
    ):
        with pytest.raises(rt.ClientClosedError, match="to a runtime that was shut down by runtime.shutdown"):
            use()
    assert time.monotonic() - start < 5
    assert not rt.is_initialized(), "using a future of the old runtime started a new one"
    try:
        with pytest.raises(rt.ClientClosedError, match=f"future '{done.key}' belongs to a runtime that was shut"):
            inc.remote(done)  # a new call starts a new runtime, but the old future cannot go to it
    finally:
        rt.shutdown()


def test_futures_of_a_closed_client_fail_at_once():
    with rt.LocalCluster(n_workers=1) as cluster:
        client = rt.Client(cluster)
        done = client.submit(inc, 1)
        assert done.result(timeout=30) == 2
        pending = client.submit(time.sleep, 60)
        client.close()
        assert pending.cancelled()
        for use in (
            lambda: pending.result(timeout=30),
            lambda: done.result(timeout=30),
            lambda: client.gather([done]),
            lambda: rt.wait([pending], timeout=30),
            lambda: pending.cancel(),
        ):
            with pytest.raises(rt.ClientClosedError, match="to a Client that was closed by Client.close"):
                use()
        with rt.Client(cluster) as other, pytest.raises(rt.ClientClosedError, match=done.key):
            other.submit(inc, done)


def _blocked(thread) -> bool:
    """Whether ``thread`` waits on a lock or condition now (as a get() does for its result)."""
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_filename == threading.__file__ and frame.f_code.co_name == "wait"


def _raised(fn) -> list[BaseException]:
    try:
        fn()
    except BaseException as e:
        return [e]
    return []
