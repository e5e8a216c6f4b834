"""Task-overhead benchmark: runtime vs Dask vs Ray, two workers each.

Workloads (the same for every system):

1. no-op     5,000 no-op tasks submitted, then gathered        -> tasks/s   (higher is better)
2. chain     500 dependent increments, each task taking the
             previous future as its argument                   -> ms/hop    (lower is better)
3. tree      binary-tree sum over 4,096 leaves: leaf tasks
             return 1, pairwise add tasks up to one root;
             all 8,191 tasks counted                           -> tasks/s   (higher is better)
4. startup   from starting the cluster (imports excluded) until
             the first trivial task's result is in hand        -> seconds   (lower is better)

Workloads 1-3 run after one small warm-up round (not timed) and are repeated
``--repeat`` times (default 3); the table reports the MEDIAN of the repeats.
Start-up is measured once, when each system's cluster is started.

Each system runs in its own subprocess (``--system NAME --json``) so that their
processes and imports cannot interfere; the parent collects the JSON and prints
one table with the ratios runtime/dask and runtime/ray (the name in brackets
is the system that wins that line). A system that is not installed is shown as
"not installed" and skipped.

Run:
    python perf/bench_tasks.py                      # all three, full sizes
    python perf/bench_tasks.py --quick              # smaller sizes, 1 repeat
    python perf/bench_tasks.py --only dask,ray --repeat 5
    python perf/bench_tasks.py --system ray --json  # one system, raw JSON
(`make perf` runs `.venv/bin/python perf/bench_tasks.py` after `pip install -e .[perf]`.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from _common import Metric, drive, fmt_ratio, fmt_value, parse_bench_args, render_table, timed
from _systems import ADAPTERS, System

SYSTEMS = ("runtime", "dask", "ray")


# --------------------------------------------------------------------------
# Task bodies. Module-level so every system can pickle them (cloudpickle).
# --------------------------------------------------------------------------


def noop() -> None:
    return None


def one() -> int:
    return 1


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def getpid() -> int:
    return os.getpid()


TASK_FUNCS: tuple[Callable[..., Any], ...] = (noop, one, inc, add, getpid)


# --------------------------------------------------------------------------
# Workloads. Each returns elapsed seconds and checks its answer.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    noops: int
    chain: int
    leaves: int


FULL = Sizes(noops=5_000, chain=500, leaves=4_096)
QUICK = Sizes(noops=1_000, chain=100, leaves=1_024)
WARMUP = Sizes(noops=100, chain=20, leaves=64)


def run_noops(sys_: System, n: int) -> float:
    def body() -> list[Any]:
        futures = [sys_.submit(noop) for _ in range(n)]
        return sys_.gather(futures)

    elapsed, results = timed(body)
    assert len(results) == n and all(r is None for r in results), "no-op results wrong"
    return elapsed


def run_chain(sys_: System, hops: int) -> float:
    def body() -> Any:
        fut = sys_.submit(inc, 0)
        for _ in range(hops - 1):
            fut = sys_.submit(inc, fut)
        return sys_.get_one(fut)

    elapsed, result = timed(body)
    assert result == hops, f"chain gave {result}, expected {hops}"
    return elapsed


def tree_task_count(leaves: int) -> int:
    count, level = leaves, leaves
    while level > 1:
        level, carry = divmod(level, 2)
        count += level
        level += carry
    return count


def run_tree(sys_: System, leaves: int) -> float:
    def body() -> Any:
        level = [sys_.submit(one) for _ in range(leaves)]
        while len(level) > 1:
            nxt = [sys_.submit(add, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return sys_.get_one(level[0])

    elapsed, result = timed(body)
    assert result == leaves, f"tree sum gave {result}, expected {leaves}"
    return elapsed


METRICS: tuple[Metric, ...] = (
    Metric("noop_tasks_per_s", "no-op submit+gather", "tasks/s", higher_is_better=True),
    Metric("chain_ms_per_hop", "dependent chain", "ms/hop", higher_is_better=False),
    Metric("tree_tasks_per_s", "binary-tree sum", "tasks/s", higher_is_better=True),
    Metric("startup_s", "init() to first result", "s", higher_is_better=False),
)


def bench_system(name: str, sizes: Sizes, repeat: int) -> dict[str, Any]:
    """Child side: run every workload on one system and return the figures."""
    adapter = ADAPTERS[name]()
    out: dict[str, Any] = {"system": name, "sizes": asdict(sizes), "repeat": repeat}
    if importlib.util.find_spec(adapter.module) is None:
        return out | {"status": "not installed"}

    importlib.import_module(adapter.module)  # start-up excludes the package's import, as the docstring says
    t0 = time.perf_counter()
    adapter.start(TASK_FUNCS)
    try:
        first = adapter.get_one(adapter.submit(one))
        startup = time.perf_counter() - t0
        assert first == 1, f"first task gave {first!r}"

        run_noops(adapter, WARMUP.noops)
        run_chain(adapter, WARMUP.chain)
        run_tree(adapter, WARMUP.leaves)
        # Fairness check: tasks must run in worker processes, not in this driver.
        task_pids = set(adapter.gather([adapter.submit(getpid) for _ in range(50)]))
        assert os.getpid() not in task_pids, "tasks ran in the driver process"

        n_tree = tree_task_count(sizes.leaves)
        samples: dict[str, list[float]] = {
            "noop_tasks_per_s": [sizes.noops / run_noops(adapter, sizes.noops) for _ in range(repeat)],
            "chain_ms_per_hop": [1000 * run_chain(adapter, sizes.chain) / sizes.chain for _ in range(repeat)],
            "tree_tasks_per_s": [n_tree / run_tree(adapter, sizes.leaves) for _ in range(repeat)],
            "startup_s": [startup],
        }
    finally:
        adapter.shutdown()
    figures = {m.key: m.summarize(samples[m.key]) for m in METRICS}
    return out | {
        "status": "ok",
        "version": adapter.version(),
        "figures": figures,
        "samples": samples,
        "task_pids_seen": len(task_pids),
    }


# --------------------------------------------------------------------------
# Parent side: one subprocess per system, then the table.
# --------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else FULL
    names = list(results)
    figs = {n: results[n].get("figures", {}) for n in names}
    ratios = [other for other in ("dask", "ray") if other in names and "runtime" in names]

    header = ["", *names, *(f"runtime/{o}" for o in ratios)]
    rows: list[list[str]] = []
    rows.append(["version", *(r.get("version", r.get("status", "?")) for r in results.values()), *("" for _ in ratios)])
    labels = {
        "noop_tasks_per_s": f"{sizes.noops:,} no-op tasks",
        "chain_ms_per_hop": f"chain of {sizes.chain:,}",
        "tree_tasks_per_s": f"tree, {sizes.leaves:,} leaves ({tree_task_count(sizes.leaves):,} tasks)",
        "startup_s": "init() to first result",
    }
    for m in METRICS:
        direction = "higher" if m.higher_is_better else "lower"
        label = f"{labels[m.key]} [{m.unit}, {direction} is better]"
        cells = [fmt_value(figs[n].get(m.key)) for n in names]
        cells += [fmt_ratio(m, figs["runtime"].get(m.key), figs[o].get(m.key), o) for o in ratios]
        rows.append([label, *cells])

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, 2 workers per system")
    print(render_table(header, rows))
    print(
        f"1-3: median of {args.repeat} run(s) after one warm-up round; "
        "4: one measurement per system (imports excluded).\n"
        "ratio = runtime/other; the name in brackets is the better system on that line."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_bench_args(
        argv,
        __doc__ or "",
        SYSTEMS,
        "smaller run (1,000 / 100 / 1,024; 1 repeat unless --repeat)",
        "timed repeats of workloads 1-3 (default 3, quick 1)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return drive(parse_args(argv), __file__, bench_system, print_table, QUICK, FULL)


if __name__ == "__main__":
    sys.exit(main())
