"""Futures-Client benchmark: runtime.Client vs distributed.Client, two one-thread worker processes each.

Workloads (the same code for both: the two Clients share Dask's API):

1. map          Client.map of 5,000 no-op calls, then gather        -> tasks/s (higher is better)
2. as_completed 2,000 futures consumed as they finish               -> tasks/s (higher is better)
3. dask.array   (x + x.T).mean(axis=0).sum() over a 4,000 x 4,000
                array of 500 x 500 chunks, dask.compute with
                scheduler=client.get (runtime) or the Client (Dask) -> s (lower is better)

Each runs after a warm-up round, ``--repeat`` times (median shown), each system in its own
subprocess.  Run: ``python perf/bench_client.py [--quick] [--only runtime,dask]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from _common import Metric, drive, fmt_ratio, fmt_value, parse_bench_args, render_table, system_version, timed

SYSTEMS = ("runtime", "dask")

METRICS = (
    Metric("map_tasks_per_s", "map + gather", "tasks/s", higher_is_better=True),
    Metric("as_completed_per_s", "as_completed", "tasks/s", higher_is_better=True),
    Metric("array_s", "dask.array graph", "s", higher_is_better=False),
)


def noop(i: int) -> None:
    return None


def start(name: str) -> tuple[Any, Any, Any]:
    """(client, as_completed, the scheduler argument for dask.compute)."""
    if name == "runtime":
        import runtime

        client = runtime.Client(n_workers=2)
        return client, runtime.as_completed, client.get
    from distributed import Client, LocalCluster, as_completed

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    return client, as_completed, client


def bench(name: str, quick: bool, repeat: int) -> dict[str, Any]:
    import dask
    import dask.array as da

    n_map, n_ac, side = (1_000, 500, 2_000) if quick else (5_000, 2_000, 4_000)
    client, as_completed, scheduler = start(name)
    try:
        x = da.random.default_rng(0).random((side, side), chunks=500)
        y = (x + x.T).mean(axis=0).sum()
        expected = y.compute(scheduler="threads")

        def run_map(n: int) -> float:
            elapsed, out = timed(lambda: client.gather(client.map(noop, range(n), pure=False)))
            assert len(out) == n
            return elapsed

        def run_as_completed(n: int) -> float:
            elapsed, count = timed(lambda: sum(1 for _ in as_completed(client.map(noop, range(n), pure=False))))
            assert count == n
            return elapsed

        def run_array() -> float:
            elapsed, (got,) = timed(lambda: dask.compute(y, scheduler=scheduler))
            assert abs(got - expected) < 1e-6 * abs(expected)
            return elapsed

        run_map(100), run_as_completed(100), run_array()  # warm-up
        samples = {
            "map_tasks_per_s": [n_map / run_map(n_map) for _ in range(repeat)],
            "as_completed_per_s": [n_ac / run_as_completed(n_ac) for _ in range(repeat)],
            "array_s": [run_array() for _ in range(repeat)],
        }
    finally:
        client.close()
        if name == "dask":
            client.cluster.close()
    figures = {m.key: m.summarize(samples[m.key]) for m in METRICS}
    version = system_version("runtime" if name == "runtime" else "distributed", name)
    return {"system": name, "status": "ok", "version": version, "figures": figures, "samples": samples}


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    names = list(results)
    figs = {n: results[n].get("figures", {}) for n in names}
    both = "runtime" in names and "dask" in names
    header = ["", *names, *(["runtime/dask"] if both else [])]
    rows = [["version", *(r.get("version", r.get("status", "?")) for r in results.values()), *([""] if both else [])]]
    for m in METRICS:
        label = f"{m.label} [{m.unit}, {'higher' if m.higher_is_better else 'lower'} is better]"
        cells = [fmt_value(figs[n].get(m.key)) for n in names]
        if both:
            cells.append(fmt_ratio(m, figs["runtime"].get(m.key), figs["dask"].get(m.key), "dask"))
        rows.append([label, *cells])
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, 2 one-thread worker processes per system")
    print(render_table(header, rows))
    print(f"median of {args.repeat} run(s) after a warm-up round; ratio = runtime/dask, the better one in brackets")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_bench_args(
        argv, __doc__ or "", SYSTEMS, "smaller sizes (1,000 / 500 / 2,000 x 2,000)", "timed repeats (default 3)"
    )
    return drive(args, __file__, bench, print_table, True, False)  # bench() takes quick: True or False


if __name__ == "__main__":
    sys.exit(main())
