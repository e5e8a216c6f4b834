"""Coordination primitives: runtime vs Dask, two workers each, in one run.

Workloads (the same for both systems, each in its own subprocess):

1. lock, client   ``Lock.acquire()`` + ``release()`` from the driver       -> round trips/s
2. lock, task     the same inside one task on a worker                     -> round trips/s
3. queue          ``Queue.put(i)`` + ``get()`` from the driver              -> pairs/s

Each is warmed up first; the table shows the median of ``--repeat`` runs (default 3) and
runtime's rate over Dask's.  Dask runs when ``dask[distributed]`` is installed (the perf extra).

Run:  python perf/bench_extensions.py [--n 1000] [--repeat 3] [--only runtime,dask]
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
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_system(args.one, args.n, args.repeat)))
        return
    results: dict[str, dict[str, float]] = {}
    for name in args.only.split(","):
        module = "runtime" if name == "runtime" else "distributed"
        if importlib.util.find_spec(module) is None:
            print(f"{name}: not installed (pip install -e .[perf]); skipped")
            continue
        cmd = [sys.executable, __file__, "--one", name, "--n", str(args.n), "--repeat", str(args.repeat)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"{'workload':<16}" + "".join(f"{s + ' /s':>14}" for s in results) + f"{'ratio':>10}")
    for workload in ("lock, client", "lock, task", "queue"):
        row = [results[s][workload] for s in results]
        ratio = f"{row[0] / row[1]:.1f}x" if len(row) == 2 else "-"
        print(f"{workload:<16}" + "".join(f"{r:>14,.0f}" for r in row) + f"{ratio:>10}")
    print("ratio: runtime's rate over Dask's (higher is better for runtime)")


if __name__ == "__main__":
    main()
