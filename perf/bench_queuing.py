"""Queuing keeps memory down on wide graphs of long tasks, however many short tasks a worker holds.

The adaptive number of queued tasks a worker holds (``scheduler.round-trip``: enough tasks of
a kind to cover a round trip at their measured duration) must not cost memory where Dask's
queuing saves it: a wide graph of long tasks that each return 1 MB, reduced pairwise, must
hold as few results at once as with Dask's fixed saturation of 1.1.  Three runs of the same
graph on one local cluster each (two workers):

    adaptive     the default: round-trip 1 ms, so 100 ms tasks get worker-saturation 1.1
    fixed 1.1    scheduler.round-trip = 0: Dask's queuing, exactly
    no queuing   scheduler.worker-saturation = inf: every root sent at once (for scale)

Reported: wall time and the most 1 MB results in memory at once (sampled from the
scheduler's task states every 50 ms).  The short-task side of the same setting is in
``bench_tasks.py`` (no-op tasks and the tree, with ``RUNTIME_SCHEDULER__ROUND_TRIP=0`` for
the fixed saturation).

Run:  python perf/bench_queuing.py [--n 400] [--seconds 0.1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

RUNS = {
    "adaptive": {},
    "fixed 1.1": {"RUNTIME_SCHEDULER__ROUND_TRIP": "0"},
    "no queuing": {"RUNTIME_WORKER_SATURATION": "inf"},
}


def one_run(n: int, seconds: float) -> None:
    """In a subprocess: run the graph, print wall time and peak results in memory."""
    import numpy as np

    import runtime as rt

    @rt.remote
    def produce(i: int) -> np.ndarray:
        time.sleep(seconds)
        return np.full(131_072, i, dtype=np.float64)  # 1 MB

    @rt.remote
    def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    rt.init(num_workers=2)
    client = rt.api.context.current_runtime().client
    rt.get(produce.options(name="warmup").remote(0))
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            states = client.request("task-states")
            held = sum(1 for k, s in states.items() if s == "memory" and not k.startswith("warmup"))
            peak = max(peak, held)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    layer = [produce.remote(i) for i in range(n)]
    while len(layer) > 1:  # pairwise, so each pair's inputs can go once it is added
        layer = [
            add.remote(a, b) if b is not None else a for a, b in zip(layer[::2], [*layer[1::2], None], strict=False)
        ]
    total = rt.get(layer[0])
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    assert total[0] == n * (n - 1) / 2
    print(f"{wall:.2f} {peak}")
    rt.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="root tasks (default %(default)s)")
    p.add_argument("--seconds", type=float, default=0.1, help="each root task's duration (default %(default)s)")
    p.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="which runs, comma-separated (default: all; at --n 10000 'no queuing' holds 10 GB)",
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one_run(args.n, args.seconds)
        return
    print(f"{args.n} tasks of {args.seconds * 1000:g} ms returning 1 MB each, summed pairwise; two workers")
    print(f"{'run':<12} {'wall s':>8} {'peak results in memory':>24}")
    runs = [r.strip() for r in args.runs.split(",")]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"--runs: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, RUNS))}")
    for name in runs:
        env = RUNS[name]
        cmd = [sys.executable, __file__, "--one", "--n", str(args.n), "--seconds", str(args.seconds)]
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
        wall, peak = out.stdout.split()[-2:]
        print(f"{name:<12} {float(wall):>8.2f} {int(peak):>24}")


if __name__ == "__main__":
    main()
