"""Coordination primitives: runtime vs Dask, two workers each, in one run.

Workloads (the same for both systems, each in its own subprocess):

1. lock, client   ``Lock.acquire()`` + ``release()`` from the driver       -> round trips/s
2. lock, task     the same inside one task on a worker                     -> round trips/s
3. queue          ``Queue.put(i)`` + ``get()`` from the driver              -> pairs/s
4. stealing       two "nodes" of two one-thread workers each; 40 inputs of 1 MB stored on
                  node A; 40 tasks of 250 ms, each reading one, placed on A (``workers=`` A's
                  workers, ``allow_other_workers=True``, so both systems place them alike);
                  with work stealing on and off -> wall time, and share of tasks run on B.
                  runtime: ``LocalCluster(4, n_nodes=2)``, inputs put by the driver (node A's
                  store); Dask: ``LocalCluster(n_workers=4)``, inputs scattered to two of them.
                  Ideal: 5 s all on A, 2.5 s shared evenly.

Each is warmed up first; the table shows the median of ``--repeat`` runs (default 3) and
runtime's rate over Dask's.  Dask runs when ``dask[distributed]`` is installed (the perf extra).

Run:  python perf/bench_extensions.py [--n 1000] [--repeat 3] [--only runtime,dask] [--skip-stealing]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from typing import Any

SYSTEMS = ("runtime", "dask")


def lock_loop(lock: Any, n: int) -> float:
    """Seconds for ``n`` acquire+release round trips (in the driver or in a task)."""
    start = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return time.perf_counter() - start


def queue_loop(queue: Any, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        queue.put(i)
        queue.get()
    return time.perf_counter() - start


#: the stealing scenario: tasks, seconds each, bytes of each one's input
STEAL_TASKS, STEAL_SECONDS, STEAL_INPUT = 40, 0.25, 1_000_000


def work(x: Any, seconds: float) -> str:
    """A 250 ms task reading its input; returns the address of the worker that ran it."""
    time.sleep(seconds)
    try:
        from runtime import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        from distributed import get_worker as dask_worker

        return dask_worker().address


def run_stealing(name: str, stealing: bool) -> dict[str, float]:
    """The stealing scenario on one system: wall time and share of tasks run on node B."""
    import numpy as np

    if name == "runtime":
        from runtime import Client, LocalCluster, config

        with config.set({"scheduler.work-stealing": stealing}):
            cluster = LocalCluster(4, n_nodes=2)
    else:
        import dask
        from distributed import Client, LocalCluster

        with dask.config.set({"distributed.scheduler.work-stealing": stealing}):
            cluster = LocalCluster(n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(4)
        workers = client.scheduler_info()["workers"]
        if name == "runtime":  # node A: the driver's, whose store the inputs go to
            node_a = [w for w, info in workers.items() if info["node"] == cluster.node]
            inputs = client.scatter([np.full(STEAL_INPUT // 8, i, dtype="f8") for i in range(STEAL_TASKS)])
        else:
            node_a = sorted(workers)[:2]
            inputs = client.scatter(
                [np.full(STEAL_INPUT // 8, i, dtype="f8") for i in range(STEAL_TASKS)], workers=node_a
            )
        client.map(abs, range(8), pure=False)  # warm, under another name: no 0 s duration for work
        start = time.perf_counter()
        futures = [
            client.submit(work, x, STEAL_SECONDS, workers=node_a, allow_other_workers=True, pure=False) for x in inputs
        ]
        ran_on = client.gather(futures)
        wall = time.perf_counter() - start
    on_b = sum(1 for w in ran_on if w not in node_a)
    return {"wall": wall, "share_b": on_b / len(ran_on)}


def run_system(name: str, n: int, repeat: int) -> dict[str, float]:
    if name == "runtime":
        from runtime import Client, LocalCluster, Lock, Queue

        cluster = LocalCluster(2)
    else:
        from distributed import Client, LocalCluster, Lock, Queue

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        lock, queue = Lock("bench-lock"), Queue("bench-queue")
        lock_loop(lock, 50)
        queue_loop(queue, 50)
        client.submit(lock_loop, Lock("bench-task-lock"), 50, pure=False).result()
        rates: dict[str, list[float]] = {"lock, client": [], "lock, task": [], "queue": []}
        for _ in range(repeat):
            rates["lock, client"].append(n / lock_loop(lock, n))
            elapsed = client.submit(lock_loop, Lock("bench-task-lock"), n, pure=False).result()
            rates["lock, task"].append(n / elapsed)
            rates["queue"].append(n / queue_loop(queue, n))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(SYSTEMS))
    parser.add_argument("--skip-stealing", action="store_true", help="leave out the stealing scenario")
    parser.add_argument("--skip-primitives", action="store_true", help="only the stealing scenario")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--steal", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one and args.steal:
        print(json.dumps(run_stealing(args.one, args.steal == "on")))
        return
    if args.one:
        print(json.dumps(run_system(args.one, args.n, args.repeat)))
        return
    systems = []
    for name in args.only.split(","):
        module = "runtime" if name == "runtime" else "distributed"
        if importlib.util.find_spec(module) is None:
            print(f"{name}: not installed (pip install -e .[perf]); skipped")
        else:
            systems.append(name)
    if not args.skip_primitives:
        print_primitives(systems, args.n, args.repeat)
    if not args.skip_stealing:
        print_stealing(systems)


def _one(*args: str) -> dict[str, float]:
    """Run one measurement in a subprocess of its own; its result."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_stealing(systems: list[str]) -> None:
    print(f"\nstealing: {STEAL_TASKS} tasks of {STEAL_SECONDS * 1000:.0f} ms placed on node A (2 of 4 workers)")
    print(f"{'system':<10}{'stealing':>10}{'wall s':>10}{'on B':>8}{'speed-up':>10}")
    for name in systems:
        off = _one("--one", name, "--steal", "off")
        on = _one("--one", name, "--steal", "on")
        for label, r in (("off", off), ("on", on)):
            speedup = f"{off['wall'] / r['wall']:.2f}x" if label == "on" else ""
            print(f"{name:<10}{label:>10}{r['wall']:>10.2f}{r['share_b']:>8.0%}{speedup:>10}")


def print_primitives(systems: list[str], n: int, repeat: int) -> None:
    results = {name: _one("--one", name, "--n", str(n), "--repeat", str(repeat)) for name in systems}
    print(f"{'workload':<16}" + "".join(f"{s + ' /s':>14}" for s in results) + f"{'ratio':>10}")
    for workload in ("lock, client", "lock, task", "queue"):
        row = [results[s][workload] for s in results]
        ratio = f"{row[0] / row[1]:.1f}x" if len(row) == 2 else "-"
        print(f"{workload:<16}" + "".join(f"{r:>14,.0f}" for r in row) + f"{ratio:>10}")
    print("ratio: runtime's rate over Dask's (higher is better for runtime)")


if __name__ == "__main__":
    main()
