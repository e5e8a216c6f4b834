"""Actor-call benchmark: runtime vs Dask vs Ray, one actor on a two-worker cluster.

Workloads (the same for every system; the actor is a counter whose ``incr`` returns its
new count, so the results also show whether calls ran in the order they were made):

1. sequential   2,000 calls, each waited for before the next     -> calls/s (higher is better)
2. pipelined    1,000 calls submitted, then all gathered          -> calls/s (higher is better)
                and whether the results came back in call order   -> in order: yes/no

Each runs after a warm-up (not timed) and is repeated ``--repeat`` times (default 3); the
table reports the MEDIAN.  Each system runs in its own subprocess, as in bench_tasks.py.

Run:
    python perf/bench_actors.py                     # all three
    python perf/bench_actors.py --quick             # 500 / 500 calls, 1 repeat
    python perf/bench_actors.py --only runtime,ray
(`make perf` runs it after `pip install -e .[perf]`.)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from _common import Metric, drive, fmt_ratio, fmt_value, parse_bench_args, render_table
from _systems import ADAPTERS, System

SYSTEMS = ("runtime", "dask", "ray")


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


@dataclass(frozen=True)
class Sizes:
    sequential: int
    pipelined: int


FULL = Sizes(sequential=2_000, pipelined=1_000)
QUICK = Sizes(sequential=500, pipelined=500)
WARMUP = Sizes(sequential=50, pipelined=50)


def run_sequential(sys_: System, actor: Any, n: int) -> float:
    start = time.perf_counter()
    last = None
    for _ in range(n):
        count = sys_.get_calls([sys_.call(actor, "incr")])[0]
        assert last is None or count == last + 1, f"sequential call gave {count} after {last}"
        last = count
    return time.perf_counter() - start


def run_pipelined(sys_: System, actor: Any, n: int) -> tuple[float, bool]:
    start = time.perf_counter()
    results = sys_.get_calls([sys_.call(actor, "incr") for _ in range(n)])
    elapsed = time.perf_counter() - start
    return elapsed, results == list(range(results[0], results[0] + n))


METRICS: tuple[Metric, ...] = (
    Metric("sequential_calls_per_s", "sequential calls", "calls/s", higher_is_better=True),
    Metric("pipelined_calls_per_s", "pipelined calls", "calls/s", higher_is_better=True),
)


def bench_system(name: str, sizes: Sizes, repeat: int) -> dict[str, Any]:
    """Child side: run both workloads on one system and return the figures."""
    adapter = ADAPTERS[name]()
    out: dict[str, Any] = {"system": name, "sizes": asdict(sizes), "repeat": repeat}
    if importlib.util.find_spec(adapter.module) is None:
        return out | {"status": "not installed"}
    adapter.start(())
    try:
        actor = adapter.make_actor(Counter)
        run_sequential(adapter, actor, WARMUP.sequential)
        run_pipelined(adapter, actor, WARMUP.pipelined)
        sequential = [sizes.sequential / run_sequential(adapter, actor, sizes.sequential) for _ in range(repeat)]
        pipelined, in_order = [], True
        for _ in range(repeat):
            elapsed, ordered = run_pipelined(adapter, actor, sizes.pipelined)
            pipelined.append(sizes.pipelined / elapsed)
            in_order = in_order and ordered
    finally:
        adapter.shutdown()
    samples = {"sequential_calls_per_s": sequential, "pipelined_calls_per_s": pipelined}
    figures = {m.key: m.summarize(samples[m.key]) for m in METRICS}
    return out | {"status": "ok", "version": adapter.version(), "figures": figures, "samples": samples,
                  "in_order": in_order}  # fmt: skip


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else FULL
    names = list(results)
    figs = {n: results[n].get("figures", {}) for n in names}
    ratios = [other for other in ("dask", "ray") if other in names and "runtime" in names]
    header = ["", *names, *(f"runtime/{o}" for o in ratios)]
    rows: list[list[str]] = [
        ["version", *(r.get("version", r.get("status", "?")) for r in results.values()), *("" for _ in ratios)]
    ]
    labels = {
        "sequential_calls_per_s": f"{sizes.sequential:,} sequential calls",
        "pipelined_calls_per_s": f"{sizes.pipelined:,} pipelined calls",
    }
    for m in METRICS:
        label = f"{labels[m.key]} [{m.unit}, higher is better]"
        cells = [fmt_value(figs[n].get(m.key)) for n in names]
        cells += [fmt_ratio(m, figs["runtime"].get(m.key), figs[o].get(m.key), o) for o in ratios]
        rows.append([label, *cells])
    order = {True: "yes", False: "NO"}
    rows.append(["pipelined results in call order", *(order.get(r.get("in_order"), "-") for r in results.values()),
                 *("" for _ in ratios)])  # fmt: skip
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, 2 workers per system, one actor")
    print(render_table(header, rows))
    print(f"median of {args.repeat} run(s) after a warm-up; ratio = runtime/other, the better system in brackets.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_bench_args(
        argv, __doc__ or "", SYSTEMS, "smaller run (500 / 500 calls; 1 repeat unless --repeat)",
        "timed repeats of each workload (default 3, quick 1)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return drive(parse_args(argv), __file__, bench_system, print_table, QUICK, FULL)


if __name__ == "__main__":
    sys.exit(main())
