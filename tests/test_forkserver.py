"""Start-up: workers forked from the node agent's pre-imported template
(``worker/forkserver.py``), and the spawning fallback: either way the nanny restarts a dead
worker and says why, and each worker has its own pid, random seeds, log file and the
cluster's config.  And a cluster whose scheduler cannot start fails ``init()`` at once.
"""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import psutil
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime import config
from runtime.worker import forkserver

cloudpickle.register_pickle_by_value(sys.modules[__name__])

forking = pytest.mark.skipif(not forkserver.forkserver_available(), reason="workers are forked on Linux only")


def about_me() -> dict:
    import random

    import numpy as np

    a = np.arange(40_000.0).reshape(200, 200)
    return {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "random": random.random(),
        "np_random": float(np.random.random()),
        "blas": float((a @ a.T).trace()),  # BLAS works after the fork (OpenBLAS's threads)
        "setting": config.get("scheduler.transition-log-length"),
        "variable": os.environ.get("FORKSERVER_TEST_VARIABLE"),
        "stderr": os.readlink("/proc/self/fd/2"),
    }


def die(code: int) -> None:
    print("the last words of a dying worker", file=sys.stderr, flush=True)
    os._exit(code)


def _template(workers: dict[str, dict]) -> psutil.Process:
    """The parent of these workers: their fork server."""
    (parent,) = {w["parent"] for w in workers.values()}
    template = psutil.Process(parent)
    assert "runtime.worker.forkserver" in template.cmdline()
    return template


@pytest.fixture(params=[pytest.param("forkserver", marks=forking), "spawn"])
def cluster(request, monkeypatch):
    monkeypatch.setenv("FORKSERVER_TEST_VARIABLE", "from the driver")
    with config.set({"worker.start-method": request.param, "scheduler.transition-log-length": 777}):
        c = rt.LocalCluster(n_workers=2)
    client = rt.Client(c)
    try:
        client.wait_for_workers(2)
        with validated(client):
            yield request.param, c, client
    finally:
        client.close()
        c.close()


def _workers(client: rt.Client) -> dict[str, dict]:
    """What each worker says about itself (one that leaves meanwhile says nothing)."""
    answers = client.run(about_me, on_error="return")
    return {address: a for address, a in answers.items() if isinstance(a, dict)}


def test_each_worker_is_its_own_process_with_the_clusters_config_and_fresh_seeds(cluster):
    method, c, client = cluster
    agent = psutil.Process(c.agent_procs[0].pid)
    workers = _workers(client)
    seen = list(workers.values())
    assert len({w["pid"] for w in seen}) == 2
    expected_blas = float(sum(k * k for k in range(40_000)))
    for w in seen:
        assert w["blas"] == expected_blas
        assert w["setting"] == 777  # the driver's config.set, inherited
        assert w["variable"] == "from the driver"  # and its environment
        assert w["stderr"].endswith(".log") and "worker-" in os.path.basename(w["stderr"])
    assert len({w["stderr"] for w in seen}) == 2  # each its own log file
    assert seen[0]["random"] != seen[1]["random"] and seen[0]["np_random"] != seen[1]["np_random"]
    if method == "forkserver":
        template = _template(workers)  # started beside the agent by the LocalCluster
        assert [template.pid] == [p.pid for p in c.template_procs]
        assert c.scheduler_address in template.cmdline()  # ps names its cluster
        assert template.pid not in {w["pid"] for w in seen}
    else:
        assert {w["parent"] for w in seen} == {agent.pid}
        assert not c.template_procs


def test_a_sigkilled_worker_is_restarted_and_its_death_reported(cluster):
    method, c, client = cluster
    before = _workers(client)
    victim = before[min(before)]["pid"]
    os.kill(victim, signal.SIGKILL)
    after = wait_until(
        lambda: (w := _workers(client)) and len(w) == 2 and victim not in {x["pid"] for x in w.values()} and w,
        "the killed worker restarted",
    )
    assert all(x["setting"] == 777 for x in after.values())
    log = open(os.path.join(c.session_dir, "logs", "agent.log")).read()
    assert f"(pid {victim}) died: killed by signal 9 (SIGKILL); restarting" in log


def test_a_dying_workers_exit_code_and_last_log_lines_make_its_cause(cluster):
    method, c, client = cluster
    future = client.submit(die, 3)
    with pytest.raises(rt.KilledWorker) as info:
        future.result(timeout=120)
    assert "exit code 3" in str(info.value)
    assert "the last words of a dying worker" in str(info.value)
    client.wait_for_workers(2)


def test_a_dead_template_takes_its_workers_and_a_new_one_forks_their_successors(cluster):
    method, c, client = cluster
    if method != "forkserver":
        pytest.skip("no template when spawning")
    agent = psutil.Process(c.agent_procs[0].pid)
    workers = _workers(client)
    template = _template(workers)
    before = {w["pid"] for w in workers.values()}
    template.kill()
    after = wait_until(
        lambda: (w := _workers(client)) and len(w) == 2 and not before & {x["pid"] for x in w.values()} and w,
        "both workers restarted",
    )
    successor = _template(after)  # started by the agent this time
    assert successor.pid != template.pid and successor.ppid() == agent.pid
    assert client.submit(about_me).result(timeout=60)["setting"] == 777


def preloaded() -> tuple[int, bool]:
    """This worker's pid, whether it had numpy before this task, and whether BLAS works in it."""
    had = "numpy" in sys.modules
    import numpy as np

    a = np.arange(40_000.0).reshape(200, 200)
    return os.getpid(), had and float((a @ a.T).trace()) == float(sum(k * k for k in range(40_000)))


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_workers_forked_once_the_template_is_idle_have_the_preload_modules(cluster):
    method, c, client = cluster
    if method != "forkserver":
        pytest.skip("no template when spawning")
    workers = _workers(client)
    template = _template(workers)
    wait_until(lambda: "numpy" in _maps(template.pid), "the template imported numpy once idle")
    before = {w["pid"] for w in workers.values()}
    os.kill(min(before), signal.SIGKILL)

    def successor() -> list[bool]:
        answers = client.run(preloaded, on_error="return").values()
        return [has for a in answers if isinstance(a, tuple) for pid, has in [a] if pid not in before]

    # numpy came with the fork, and its BLAS works in a worker forked after OpenBLAS started
    assert wait_until(successor, "the killed worker restarted") == [True]


@forking
def test_the_template_leaves_with_its_cluster_and_its_agent():
    with config.set({"worker.start-method": "forkserver"}):
        c = rt.LocalCluster(n_workers=2, n_nodes=2)
    try:
        with rt.Client(c) as client:
            client.wait_for_workers(2)
            workers = _workers(client)
        killed = psutil.Process(c.agent_procs[1].pid)
        orphaned = c.template_procs[1]
        orphans = [psutil.Process(w["pid"]) for w in workers.values() if w["parent"] == orphaned.pid]
        killed.kill()  # its workers see their stdin close, and its template its socket
        wait_until(lambda: orphaned.poll() is not None, "the killed agent's template gone")
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans)
    finally:
        c.close()
    assert all(p.poll() is not None for p in c.template_procs)


def test_forking_is_chosen_where_available_and_spawning_otherwise(monkeypatch):
    assert isinstance(forkserver.make_launcher("forkserver"), forkserver.ForkServerLauncher)
    assert isinstance(forkserver.make_launcher("spawn"), forkserver.SpawnLauncher)
    monkeypatch.setattr(forkserver, "forkserver_available", lambda: False)
    assert isinstance(forkserver.make_launcher("forkserver"), forkserver.SpawnLauncher)
    with pytest.raises(config.ConfigError, match="worker.start-method"):
        config.set({"worker.start-method": "vfork"})
    with pytest.raises(config.ConfigError, match="worker.preload"):
        config.set({"worker.preload": [1]})


def test_a_scheduler_that_cannot_start_fails_init_at_once_saying_why(monkeypatch, tmp_path):
    # Its socket is bound by the driver, so the client connects before the scheduler runs:
    # it must learn the scheduler died, and why, not wait for an answer.
    monkeypatch.setenv("RUNTIME_SCHEDULER__RECORD", str(tmp_path / "no such directory" / "file"))
    with pytest.raises(RuntimeError, match=r"(?s)its scheduler exited \(exit code 1\).*No such file or directory"):
        rt.init(num_workers=1)
    assert not rt.is_initialized()
