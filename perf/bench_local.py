"""Local schedulers: overhead per task of runtime's sync, threads and processes schedulers
next to Dask's own (dask.get, dask.threaded.get, dask.multiprocessing.get) and the figures
of the specification (../shared/seeds, "Dask Schedulers"), on the same 100,000-task graph.

The graph: a binary-tree sum over 50,000 leaves (``inc(i)``), 99,999 tasks in all, so
every task but the leaves has two dependencies.  Timed from nothing to the answer in
hand: for runtime, the ``.remote()`` calls and the ``get`` of the root; for Dask, building
the graph dict and its ``get``.  The tasks do next to nothing, so the time per task is the
scheduler's overhead.  ``distributed`` runs the same program on runtime's own two-worker
cluster, for scale.

Each system runs in its own subprocess and session; threads and processes use two
workers (this machine's cores).  Every run is checked against the expected sum.  The table
shows the median of ``--repeat`` runs (default 3) and how many CPUs other work on the
machine kept busy meanwhile (it is shared: figures move with it).

Run:  python perf/bench_local.py [--quick] [--only runtime-sync,dask-sync] [--repeat 5]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from _common import OtherWork, fmt_value, parse_bench_args, render_table
from _common import run_child as common_run_child

SCHEDULERS = ("sync", "threads", "processes")
SYSTEMS = (
    *(f"runtime-{s}" for s in SCHEDULERS),
    *(f"dask-{s}" for s in SCHEDULERS),
    "runtime-distributed",
)
#: the specification's overhead per task, in microseconds
SPEC_US = {"sync": 1.0, "threads": 10.0, "processes": 10_000.0, "distributed": 1_000.0}
#: Dask's schedulers measured on this machine when the goal was set, and the goal: half of each
DASK_BEFORE_US = {"sync": 58.5, "threads": 176.0, "processes": 233.0}
WORKERS = 2


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def expected(leaves: int) -> int:
    return sum(range(1, leaves + 1))


def dask_graph(leaves: int) -> tuple[dict, Any]:
    dsk: dict = {("inc", i): (inc, i) for i in range(leaves)}
    level = [("inc", i) for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level) - 1, 2):
            key = ("add", depth, i // 2)
            dsk[key] = (add, level[i], level[i + 1])
            nxt.append(key)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return dsk, level[0]


def runtime_program(rt: Any, r_inc: Any, r_add: Any, leaves: int, scheduler: str | None) -> int:
    level = [r_inc.remote(i) for i in range(leaves)]
    while len(level) > 1:
        nxt = [r_add.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return rt.get(level[0], scheduler=scheduler) if scheduler else rt.get(level[0])


def run_system(system: str, leaves: int, repeat: int) -> dict:
    family, kind = system.split("-")
    tasks = 2 * leaves - 1
    if family == "dask":
        try:
            import dask
            import dask.multiprocessing
            import dask.threaded
        except ImportError:
            return {"system": system, "status": "not installed"}
        get = {
            "sync": dask.get,
            "threads": lambda d, k: dask.threaded.get(d, k, num_workers=WORKERS),
            "processes": lambda d, k: dask.multiprocessing.get(d, k, num_workers=WORKERS),
        }[kind]

        def once() -> int:
            dsk, root = dask_graph(leaves)
            return get(dsk, root)

        get(*dask_graph(100))  # warm-up: pools started, imports done
        version = dask.__version__
    else:
        import runtime as rt

        r_inc, r_add = rt.remote(inc), rt.remote(add)
        if kind == "distributed":
            rt.init(num_workers=WORKERS)
            scheduler = None
        else:
            rt.config.set(scheduler=kind, num_workers=WORKERS)
            scheduler = kind

        def once() -> int:
            return runtime_program(rt, r_inc, r_add, leaves, scheduler)

        runtime_program(rt, r_inc, r_add, 100, scheduler)  # warm-up
        version = rt.__version__
    samples, others = [], []
    for _ in range(repeat):
        with OtherWork() as other:
            t0 = time.perf_counter()
            answer = once()
            elapsed = time.perf_counter() - t0
        assert answer == expected(leaves), (answer, expected(leaves))
        samples.append(1e6 * elapsed / tasks)
        others.append(other.cpus)
    if family == "runtime":
        rt.shutdown()
    return {
        "system": system, "status": "ok", "version": version, "tasks": tasks,
        "us_per_task": statistics.median(samples), "samples": samples,
        "other_cpus": max((o for o in others if o is not None), default=None),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_bench_args(
        argv, __doc__, SYSTEMS, "10,000 leaves instead of 50,000, 1 repeat", "runs per system (median shown)"
    )
    leaves = 10_000 if args.quick else 50_000
    if args.system:
        print(json.dumps(run_system(args.system, leaves, args.repeat)))
        return
    results = {}
    for system in args.only:
        cmd = [sys.executable, __file__, "--system", system, "--repeat", str(args.repeat)]
        cmd += ["--quick"] if args.quick else []
        results[system], _ = common_run_child(system, cmd, args.timeout, args.verbose)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"binary-tree sum, {2 * leaves - 1:,} tasks; {WORKERS} workers; median of {args.repeat} run(s)")
    header = [
        "scheduler", "spec us/task", "dask us/task", "runtime us/task", "runtime/dask",
        "goal (dask before / 2)", "other CPUs busy",
    ]  # fmt: skip
    rows = []
    for kind in (*SCHEDULERS, "distributed"):
        ours, theirs = results.get(f"runtime-{kind}"), results.get(f"dask-{kind}")
        if ours is None and theirs is None:
            continue

        def us(r: dict | None) -> float | None:
            return r["us_per_task"] if r and r.get("status") == "ok" else None

        o, t = us(ours), us(theirs)
        busy = [r.get("other_cpus") for r in (ours, theirs) if r and r.get("other_cpus") is not None]
        goal = DASK_BEFORE_US.get(kind)
        rows.append([
            kind, fmt_value(SPEC_US[kind]), fmt_value(t) if t is not None else (theirs or {}).get("status", "-"),
            fmt_value(o) if o is not None else (ours or {}).get("status", "-"),
            f"{o / t:.2f}" if o and t else "-",
            f"<= {goal / 2:g}" + (" met" if o is not None and o <= goal / 2 else "") if goal else "-",
            f"{max(busy):.2f}" if busy else "-",
        ])  # fmt: skip
    print(render_table(header, rows))
    print("spec: the overheads the specification quotes; other CPUs busy: the most any run saw.")


if __name__ == "__main__":
    main()
