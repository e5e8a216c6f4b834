"""The ``runtime`` command: a head and two joining agents on loopback stand in for three hosts."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from conftest import pid_of, runtime_cmd

import runtime as rt
from runtime.api.context import current_runtime
from runtime.cli import parse_bytes, parse_resources
from runtime.objstore import store


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@rt.remote
def where(x):
    return socket.gethostname(), os.getpid(), x * 2


@rt.remote
def total(a):
    return float(a.sum())


@rt.remote(resources={"TPU": 1})
def needs_tpu():
    return 1


def test_sizes_and_resources_parse_as_documented():
    assert parse_bytes("4GB") == 4_000_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    assert parse_bytes("1.5 GiB") == 3 * 2**29
    for bad in ("4XB", "", "-1GB", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_bytes(bad)
    assert parse_resources("GPU=1,foo=2.5") == {"GPU": 1.0, "foo": 2.5}
    assert parse_resources('{"GPU": 2}') == {"GPU": 2.0}
    for bad in ("GPU", "GPU=x", "GPU=-1", "[1]", "{bad json"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_resources(bad)


@pytest.mark.parametrize(
    "args, says",
    [
        (["start", "--head", "--num-workers", "0"], "--num-workers: '0' is not a whole number >= 1"),
        (["start", "--head", "--memory-limit", "lots"], "'lots' is not a size"),
        (["start", "--head", "--memory-pause-fraction", "2"], "'2' is not a fraction"),
        (["start", "--head", "--resources", "GPU"], "must look like NAME=AMOUNT"),
        (["start", "--address", "host:8786"], "must look like tcp://HOST:PORT"),
        (["start", "--head", "--address", "tcp://127.0.0.1:1"], "not allowed with argument"),
        (["start", "--address", "tcp://127.0.0.1:1", "--port", "9000"], "--port is the scheduler's port"),
        (["start"], "one of the arguments --head --address is required"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_flags_give_one_clear_line(tmp_path, args, says):
    result = runtime_cmd(*args, run_dir=str(tmp_path))
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_address_that_does_not_answer_fails_fast(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for args in (["status", "--address", f"tcp://127.0.0.1:{port}"], ["start", "--address", f"tcp://127.0.0.1:{port}"]):
        result = runtime_cmd(*args, "--timeout", "3", run_dir=str(tmp_path))
        assert result.returncode == 1
        assert f"cannot reach a scheduler at tcp://127.0.0.1:{port}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # Nothing was started from this run directory: status says so, stop has nothing to do.
    result = runtime_cmd("status", run_dir=str(tmp_path / "empty"))
    assert result.returncode == 1 and "no cluster was started from" in result.stderr
    assert runtime_cmd("stop", run_dir=str(tmp_path / "empty")).returncode == 0


def test_head_and_two_joining_nodes_run_tasks_status_and_stop(tmp_path):
    head, b, c = (str(tmp_path / name) for name in ("head", "b", "c"))
    started = runtime_cmd(
        "start", "--head", "--port", "0", "--num-workers", "1", "--threads-per-worker", "2",
        "--memory-limit", "2GB", "--memory-spill-fraction", "off", "--resources", "GPU=1", run_dir=head,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    pids = []
    try:
        with open(os.path.join(head, "address")) as f:
            address = f.read().strip()
        assert address.startswith("tcp://127.0.0.1:")
        # A second start from the same run directory refuses.
        again = runtime_cmd("start", "--head", "--port", "0", run_dir=head)
        assert again.returncode == 1 and "still running" in again.stderr
        for run_dir in (b, c):
            joined = runtime_cmd("start", "--address", address, "--num-workers", "1", run_dir=run_dir)
            assert joined.returncode == 0, joined.stderr
        pids = [pid_of(head, "scheduler"), pid_of(head, "agent"), pid_of(b, "agent"), pid_of(c, "agent")]
        pids += [p.pid for pid in pids[1:] for p in psutil.Process(pid).children()]  # the workers

        rt.init(address=address)
        try:
            client = current_runtime().client
            workers = client.request("status")["workers"]
            assert len(workers) == 3 and len(client.request("status")["nodes"]) == 3
            gpu = [a for a, w in workers.items() if w["resources"].get("GPU") == 1]
            assert [workers[a]["nthreads"] for a in gpu] == [2] and workers[gpu[0]]["memory_limit"] == 2_000_000_000
            # Tasks on every node, and a value put on one node read by tasks on the others.
            assert [r[2] for r in rt.get([where.remote(i) for i in range(30)], timeout=60)] == list(range(0, 60, 2))
            ref = rt.put(np.arange(1_000_000, dtype=np.float64))
            far = [a for a in workers if a not in gpu]
            sums = [total.options(workers=[a]).remote(ref) for a in far]
            assert rt.get(sums, timeout=60) == [float(np.arange(1_000_000).sum())] * 2
            stuck = needs_tpu.remote()

            status = runtime_cmd("status", run_dir=b)  # any run directory of the cluster knows its address
            assert status.returncode == 0, status.stderr
            out = status.stdout
            assert "nodes: 3" in out and "workers: 3 (4 threads" in out and "GPU=1" in out
            assert (
                "no-worker 1" in out and f"{stuck.key}: resources={{'TPU': 1}}: the most any worker offers is 0" in out
            )
        finally:
            rt.shutdown()

        stopped = runtime_cmd("stop", run_dir=head)
        assert stopped.returncode == 0 and "stopped the scheduler and node agent" in stopped.stdout
        deadline = time.monotonic() + 30
        while not all(_exited(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_exited(p) for p in pids), [p for p in pids if not _exited(p)]
        # The joined nodes were told to close by the scheduler: nothing of theirs is left running.
        assert "nothing started from" in runtime_cmd("stop", run_dir=b).stdout
    finally:
        for run_dir in (head, b, c):  # whatever happened, leave nothing running
            runtime_cmd("stop", "--timeout", "5", run_dir=run_dir)
    for pid in pids[1:4]:  # and every store was emptied
        assert not [f for f in os.listdir(store.SHM_DIR) if f.startswith(f"rt-{pid}-")]


def test_block_stays_in_the_foreground_and_sigterm_stops_everything(tmp_path):
    run_dir = str(tmp_path)
    env = {**os.environ, "RUNTIME_RUN_DIR": run_dir}
    cmd = [sys.executable, "-m", "runtime.cli", "start", "--head", "--port", "0", "--num-workers", "1", "--block"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("started the scheduler and node agent")
        pids = [pid_of(run_dir, "scheduler"), pid_of(run_dir, "agent")]
        pids += [p.pid for p in psutil.Process(pids[1]).children()]
        status = runtime_cmd("status", run_dir=run_dir)
        assert status.returncode == 0 and "workers: 1" in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while not all(_exited(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_exited(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        runtime_cmd("stop", "--timeout", "5", run_dir=run_dir)


def test_the_dashboard_flag_the_printed_link_and_status_watch(tmp_path):
    head = str(tmp_path / "head")
    started = runtime_cmd(
        "start", "--head", "--port", "0", "--num-workers", "1", "--dashboard-address", "127.0.0.1:0", run_dir=head
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        link = next(line.split(": ", 1)[1] for line in started.stdout.splitlines() if line.startswith("dashboard:"))
        assert link.startswith("http://127.0.0.1:") and not link.endswith(":8787/status")  # the port it was given
        assert f"dashboard: {link}" in runtime_cmd("status", run_dir=head).stdout
        # --watch redraws in place until stopped.
        env = {**os.environ, "RUNTIME_RUN_DIR": head}
        cmd = [sys.executable, "-m", "runtime.cli", "status", "--watch", "0.2"]
        watch = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, _ = watch.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            watch.send_signal(signal.SIGINT)
            out, _ = watch.communicate(timeout=30)
        assert out.count("dashboard: ") >= 2, out  # drawn more than once
        off = runtime_cmd("start", "--head", "--port", "0", "--dashboard-address", "off", run_dir=str(tmp_path / "b"))
        assert off.returncode == 0 and "dashboard: off" in off.stdout, off.stdout + off.stderr
    finally:
        for run_dir in (head, str(tmp_path / "b")):
            runtime_cmd("stop", "--timeout", "5", run_dir=run_dir)
