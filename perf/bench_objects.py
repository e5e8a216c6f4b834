"""Object benchmark: large values shared with tasks, and put/get from the driver.

runtime vs Dask vs Ray, two workers each.  Workloads (the same for every system):

1. array     a 400 MB float64 array (``np.ones(50_000_000)``) put once and summed
             by 8 tasks, the 8 sums gathered                     -> seconds (lower is better)
                                                                     and extra copies (lower is better)
2. table     a 10-million-row Arrow table, columns ``x`` (int64) and ``y``
             (float64), 160 MB, put once and read by 8 tasks; each returns
             ``num_rows + pc.sum(column)`` for ``x`` or ``y``       -> seconds and extra copies
3. put+get   a numpy array put and fetched back by the driver, over and over,
             for 1 KB, 1 MB and 100 MB arrays                     -> round trips/s and GB/s
                                                                     (higher is better)

"put" is ``runtime.put`` / ``ray.put`` / Dask's ``client.scatter`` (``hash=False``, so
Dask does not pay for hashing the data, which the others do not do either); a put
value is passed to each task as its argument.  Put+get is ``rt.get(rt.put(a))``,
``ray.get(ray.put(a))``, ``client.gather(client.scatter(a, hash=False))``.

Time (1, 2): from just before the put until the results of all 8 tasks are in the
driver.  The value is created before the clock starts.

Extra copies (1, 2): machine-wide used memory (``MemTotal - MemAvailable`` from
/proc/meminfo, which counts /dev/shm and so Ray's plasma store and runtime's store,
less the free pages the kernel parks in per-CPU lists, which MemFree leaves out; see
``_common.used_memory``) is sampled every 5 ms by a thread, from just before the put
until the results are in.  The baseline is the settled level after the cluster is up
and warmed up, before the value is created.  The driver's own copy of the value is in
the peak too, so

    extra copies = (peak - baseline) / size of the value - 1.0

0.0 means the system shared the driver's value with all 8 tasks without copying it
anywhere; 1.0 means one more full copy was alive at some point (e.g. the copy in a
shared-memory store that tasks then read without copying); Dask's per-worker copies
and serialization buffers show up as more.  Anything else running on the machine is
in the figure too: run it on an otherwise idle machine.  The JSON also gives the
driver's copy as measured (the settled level after creating the value, over the
baseline; ~1.0) and what was still in use once everything was released and
memory settled ("left after").

Other work: for every timed part the JSON gives how many CPUs other work on the
machine kept busy meanwhile (machine busy time from /proc/stat less this benchmark's
processes), and how much the memory of other processes moved; the table's notes
give both when they matter.  On 2 cores, 1.0 CPU of other work roughly halves what
the systems get.

Put+get (3): one untimed round trip first (its answer checked in full), then round
trips until at least 1 s and at least 5 round trips have passed (every answer's shape
and a few elements checked); GB/s = array bytes x round trips / seconds / 1e9.

Sizes are decimal (1 MB = 10**6 bytes).  Every run of 1 and of 2 gets a cluster of its
own, started for it and shut down after it: a store that keeps the pages of a freed
object (Ray's plasma store does) would otherwise make the next object look free.  3
runs in one more cluster.  Each cluster first gets a small untimed warm-up round of
every workload (which also checks that tasks run in worker processes, not in the
driver).  Every workload is repeated ``--repeat`` times (default 3); the table
reports the MEDIAN of the repeats, ``--json`` gives every sample and detail.

Each system runs in its own subprocess and session (``--system NAME --json``); the
parent prints one table with the ratios runtime/dask and runtime/ray (the name in
brackets is the better system on that line).  A system that is not installed shows
"not installed".  Processes or /dev/shm files a system leaves behind are reported
(processes are killed, runtime store files of dead processes removed).

Run:
    python perf/bench_objects.py                      # all three, full sizes
    python perf/bench_objects.py --quick              # smaller sizes, 1 repeat
    python perf/bench_objects.py --only runtime,ray --repeat 5
    python perf/bench_objects.py --system ray --json  # one system, raw JSON
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from _common import (
    MemorySampler,
    Metric,
    OtherWork,
    clean_new_shm,
    fmt_ratio,
    fmt_value,
    foreign_memory,
    parse_bench_args,
    render_table,
    run_child,
    settled_memory,
    shm_entries,
    used_memory,
    wait_for_descendants,
)
from _systems import ADAPTERS, System

SYSTEMS = ("runtime", "dask", "ray")
N_TASKS = 8


# --------------------------------------------------------------------------
# Task bodies. Module-level so every system can pickle them (cloudpickle).
# --------------------------------------------------------------------------


def total(a: Any) -> float:
    return float(a.sum())


def table_read(table: Any, column: str) -> int | float:
    import pyarrow.compute as pc

    return table.num_rows + pc.sum(table.column(column)).as_py()


def getpid() -> int:
    return os.getpid()


def one() -> int:
    return 1


TASK_FUNCS: tuple[Callable[..., Any], ...] = (total, table_read, getpid, one)


def make_array(n: int) -> Any:
    import numpy as np

    return np.ones(n)


def make_table(rows: int) -> Any:
    import numpy as np
    import pyarrow as pa

    return pa.table({"x": np.arange(rows), "y": np.arange(rows, dtype=np.float64)})


def table_answer(rows: int, column: str) -> int | float:
    s = rows * (rows - 1) // 2  # exact in float64 too while below 2**53
    return rows + (s if column == "x" else float(s))


def columns_for_tasks() -> list[str]:
    return ["x" if i % 2 == 0 else "y" for i in range(N_TASKS)]


# --------------------------------------------------------------------------
# Workloads.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    array_len: int  # float64 elements
    table_rows: int
    roundtrip_bytes: tuple[int, ...]
    roundtrip_seconds: float  # at least this long per size and repeat ...
    roundtrip_min: int  # ... and at least this many round trips


FULL = Sizes(50_000_000, 10_000_000, (1_000, 1_000_000, 100_000_000), 1.0, 5)
QUICK = Sizes(10_000_000, 2_000_000, (1_000, 1_000_000, 20_000_000), 0.3, 3)


def run_shared(sys_: System, make: Callable[[], Any], fn: Callable[..., Any],
               task_args: list[tuple], expected: list[Any]) -> dict[str, float]:  # fmt: skip
    """Put one value, run one task per entry of ``task_args`` on it, gather: time and memory."""
    gc.collect()
    baseline = settled_memory()
    foreign_before = foreign_memory()
    value = make()
    nbytes = value.nbytes
    created = settled_memory(timeout=2)
    with MemorySampler() as mem, OtherWork() as other:
        t0 = time.perf_counter()
        ref = sys_.put(value)
        futures = [sys_.submit(fn, ref, *args) for args in task_args]
        results = sys_.gather(futures)
        elapsed = time.perf_counter() - t0
    foreign_after = foreign_memory()
    assert results == expected, f"{fn.__name__} gave {results!r}, expected {expected!r}"
    del ref, futures, results, value
    gc.collect()
    after = settled_memory()
    return {
        "seconds": elapsed,
        "extra_copies": (mem.peak - baseline) / nbytes - 1.0,
        "driver_copy": (created - baseline) / nbytes,
        "left_after": (after - baseline) / nbytes,
        "other_work_drift": (foreign_after - foreign_before) / nbytes,
        "other_work_cpus": other.cpus,
        "nbytes": nbytes,
        "baseline_mb": baseline / 1e6,
        "peak_mb": mem.peak / 1e6,
        "memory_samples": mem.samples,
    }


def run_array(sys_: System, n: int) -> dict[str, float]:
    return run_shared(sys_, lambda: make_array(n), total, [()] * N_TASKS, [float(n)] * N_TASKS)


def run_table(sys_: System, rows: int) -> dict[str, float]:
    cols = columns_for_tasks()
    return run_shared(
        sys_, lambda: make_table(rows), table_read, [(c,) for c in cols], [table_answer(rows, c) for c in cols]
    )


def run_roundtrips(sys_: System, nbytes: int, min_seconds: float, min_trips: int) -> dict[str, float]:
    import numpy as np

    a = np.arange(nbytes // 8, dtype=np.float64)
    probes = [0, len(a) // 2, len(a) - 1]
    b = sys_.roundtrip(a)  # untimed, checked in full
    assert isinstance(b, np.ndarray) and b.dtype == a.dtype and np.array_equal(a, b), "put+get gave a different array"
    del b
    n = 0
    with OtherWork() as other:
        t0 = time.perf_counter()
        while True:
            b = sys_.roundtrip(a)
            n += 1
            assert b.shape == a.shape and all(b[i] == a[i] for i in probes), "put+get gave a different array"
            del b
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds and n >= min_trips:
                break
    return {
        "per_s": n / elapsed,
        "gb_per_s": n * a.nbytes / elapsed / 1e9,
        "trips": n,
        "seconds": elapsed,
        "other_work_cpus": other.cpus,
    }


def warm_up(sys_: System) -> int:
    """Small untimed rounds of every workload; checks tasks run outside the driver."""
    first = sys_.gather([sys_.submit(one)])[0]
    assert first == 1, f"first task gave {first!r}"
    task_pids = set(sys_.gather([sys_.submit(getpid) for _ in range(50)]))
    assert os.getpid() not in task_pids, "tasks ran in the driver process"
    run_array(sys_, 1_000_000)
    run_table(sys_, 100_000)
    for nbytes in (1_000, 1_000_000):
        run_roundtrips(sys_, nbytes, 0.0, 2)
    return len(task_pids)


def rt_key(kind: str, nbytes: int) -> str:
    return f"rt{nbytes}_{kind}"


def metrics_for(sizes: Sizes) -> list[Metric]:
    ms = [
        Metric("array_s", "array: put + 8 sums", "s", higher_is_better=False),
        Metric("array_copies", "array: extra copies at peak", "x size", higher_is_better=False),
        Metric("table_s", "table: put + 8 reads", "s", higher_is_better=False),
        Metric("table_copies", "table: extra copies at peak", "x size", higher_is_better=False),
    ]
    for nb in sizes.roundtrip_bytes:
        ms.append(Metric(rt_key("per_s", nb), f"put+get {fmt_bytes(nb)}", "round trips/s", higher_is_better=True))
        ms.append(Metric(rt_key("gb_per_s", nb), f"put+get {fmt_bytes(nb)}", "GB/s", higher_is_better=True))
    return ms


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"


def bench_system(name: str, sizes: Sizes, repeat: int) -> dict[str, Any]:
    """Child side: run every workload on one system and return the figures."""
    adapter = ADAPTERS[name]()
    out: dict[str, Any] = {"system": name, "sizes": asdict(sizes), "repeat": repeat, "loadavg_start": os.getloadavg()}
    if importlib.util.find_spec(adapter.module) is None:
        return out | {"status": "not installed"}

    def session(body: Callable[[], Any]) -> Any:
        """Start a fresh cluster, warm it up, run ``body``, shut the cluster down."""
        adapter.start(TASK_FUNCS)
        try:
            pids.append(warm_up(adapter))
            return body()
        finally:
            adapter.shutdown()
            # The next cluster's baseline must not include this one's processes on their way out.
            left = wait_for_descendants()
            if left:
                lingering.update(f"{comm}({pid})" for pid, comm in left.items())

    pids: list[int] = []
    lingering: set[str] = set()  # processes still alive 15 s after a shutdown
    details: dict[str, list[dict[str, float]]] = {"array": [], "table": []}
    # A fresh cluster for every memory measurement: a store that kept the pages of an
    # earlier object (Ray's plasma does) would otherwise hide the next object's copy.
    for _ in range(repeat):
        details["array"].append(session(lambda: run_array(adapter, sizes.array_len)))
        details["table"].append(session(lambda: run_table(adapter, sizes.table_rows)))

    def roundtrips() -> None:
        for nb in sizes.roundtrip_bytes:
            details[f"roundtrip_{nb}"] = [
                run_roundtrips(adapter, nb, sizes.roundtrip_seconds, sizes.roundtrip_min) for _ in range(repeat)
            ]

    session(roundtrips)
    samples: dict[str, list[float]] = {
        "array_s": [d["seconds"] for d in details["array"]],
        "array_copies": [d["extra_copies"] for d in details["array"]],
        "table_s": [d["seconds"] for d in details["table"]],
        "table_copies": [d["extra_copies"] for d in details["table"]],
    }
    for nb in sizes.roundtrip_bytes:
        for kind in ("per_s", "gb_per_s"):
            samples[rt_key(kind, nb)] = [d[kind] for d in details[f"roundtrip_{nb}"]]
    figures = {m.key: m.summarize(samples[m.key]) for m in metrics_for(sizes)}
    return out | {
        "status": "ok",
        "version": adapter.version(),
        "figures": figures,
        "samples": samples,
        "details": details,
        "task_pids_seen": min(pids),
        "lingering_after_shutdown": sorted(lingering),
        "loadavg_end": os.getloadavg(),
        "used_memory_end_mb": used_memory() / 1e6,
    }


# --------------------------------------------------------------------------
# Parent side: one subprocess per system, then the table.
# --------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace, loadavg: tuple) -> None:
    sizes = QUICK if args.quick else FULL
    names = list(results)
    figs = {n: results[n].get("figures", {}) for n in names}
    ratios = [other for other in ("dask", "ray") if other in names and "runtime" in names]
    array_mb = fmt_bytes(sizes.array_len * 8)
    table_mb = fmt_bytes(sizes.table_rows * 16)

    header = ["", *names, *(f"runtime/{o}" for o in ratios)]
    rows: list[list[str]] = []
    rows.append(["version", *(r.get("version", r.get("status", "?")) for r in results.values()), *("" for _ in ratios)])
    for m in metrics_for(sizes):
        direction = "higher" if m.higher_is_better else "lower"
        label = m.label.replace("array:", f"{array_mb} array:").replace("table:", f"{table_mb} table:")
        label = f"{label} [{m.unit}, {direction} is better]"
        cells = [fmt_value(figs[n].get(m.key)) for n in names]
        cells += [fmt_ratio(m, figs["runtime"].get(m.key), figs[o].get(m.key), o) for o in ratios]
        rows.append([label, *cells])

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, 2 workers per system, "
          f"load average at start {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}")  # fmt: skip
    print(render_table(header, rows))
    print(
        f"median of {args.repeat} run(s); each array and table run in a cluster of its own, after a warm-up round.\n"
        "extra copies = (peak machine-wide used memory - baseline) / size - 1, the 1 being the driver's own copy.\n"
        "ratio = runtime/other; the name in brackets is the better system on that line."
    )
    for n, r in results.items():
        for kind in ("array", "table"):
            runs = r.get("details", {}).get(kind, [])
            if not runs:
                continue
            driver = statistics.median(d["driver_copy"] for d in runs)
            left = statistics.median(d["left_after"] for d in runs)
            drift = max((d["other_work_drift"] for d in runs), key=abs)
            if abs(driver - 1.0) > 0.1:
                print(f"note: {n} {kind}: the driver's own copy measured {driver:.2f} x size, not ~1.0")
            if left > 0.25:
                print(f"note: {n} {kind}: {left:.2f} x size still in use after everything was released")
            if abs(drift) > 0.05:
                print(f"note: {n} {kind}: other work on the machine changed its memory by up to "
                      f"{drift:+.2f} x size during a run; the extra copies are that much off")  # fmt: skip
    for n, r in results.items():
        if r.get("lingering_after_shutdown"):
            print(f"note: {n}: still running 15 s after a shutdown: {', '.join(r['lingering_after_shutdown'])}")
        if r.get("stray_processes"):
            print(f"note: {n}: left processes behind (killed): {', '.join(r['stray_processes'])}")
        if r.get("shm_left_behind"):
            print(f"note: {n}: left {len(r['shm_left_behind'])} file(s) in /dev/shm (removed)")
    busy = []
    for n, r in results.items():
        cpus = [d["other_work_cpus"] for runs in r.get("details", {}).values() for d in runs]
        cpus = [c for c in cpus if c is not None]
        if cpus:
            busy.append(f"{n} {statistics.mean(cpus):.2f} (max {max(cpus):.2f})")
    if busy:
        print(f"other work on the machine during the timed parts, CPUs busy on average: {', '.join(busy)}")
    if "runtime" in results:
        print(f"runtime source: {runtime_source()}")


def runtime_source() -> str:
    """The git commit of the runtime being measured, and whether runtime/ has uncommitted changes."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "runtime"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"{head} with uncommitted changes in runtime/" if dirty else head


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_bench_args(
        argv,
        __doc__ or "",
        SYSTEMS,
        "smaller run (80 MB array, 2M rows, 20 MB; 1 repeat)",
        "timed repeats of every workload (default 3, quick 1)",
        save=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.system:  # child: one system, JSON on stdout
        result = bench_system(args.system, QUICK if args.quick else FULL, args.repeat)
        print(json.dumps(result, indent=None if args.json else 2), flush=True)
        return 0 if result["status"] in ("ok", "not installed") else 1

    loadavg = os.getloadavg()
    results = {}
    for name in args.only:
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--system", name, "--json", "--repeat", str(args.repeat)]
        if args.quick:
            cmd.append("--quick")
        before = shm_entries()
        results[name], pids = run_child(name, cmd, args.timeout, args.verbose)
        left = clean_new_shm(before, name, pids)
        if left:
            results[name]["shm_left_behind"] = left
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results, f, indent=2)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args, loadavg)
    return 0 if all(r.get("status") in ("ok", "not installed") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
