"""Shuffle by key: runtime.shuffle against Dask's P2P shuffle and Ray Data's hash shuffle.

The same data in every system: ``--gb`` GB of Arrow data in ``--inputs`` partitions, two
columns (an int64 key with ``--keys`` distinct values, a float64 payload), shuffled by the
key into ``--outputs`` partitions on 2 workers (Ray: 2 CPUs; ``Dataset.repartition(n,
keys=["key"])``, its hash shuffle).  Each system runs in a child process of its own, one after
the other in one run; a system not installed is reported as such.  Reported per system:

- wall time of the shuffle (inputs already in the cluster's memory; outputs in memory);
- peak extra memory of the whole machine over the level with the inputs in memory, as a
  multiple of the data size;
- bytes copied through the kernel while it runs, as multiples of the data size: sent over
  loopback TCP (between processes on this machine; Unix sockets, which only runtime's small
  control messages use here, are not counted) and written to disk (spilling);
- the check: every row present once, every key in one output partition.

    python perf/bench_shuffle.py [--gb 1] [--inputs 100] [--outputs 100] [--systems runtime,dask,ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import MemorySampler, render_table, run_child, settled_memory  # noqa: E402

ROW_BYTES = 16


class Copies:
    """Bytes sent over loopback TCP and written to disk between entry and exit (the whole machine's)."""

    @staticmethod
    def _now() -> tuple[int, int]:
        import psutil

        lo = psutil.net_io_counters(pernic=True).get("lo")
        disk = psutil.disk_io_counters()
        return (lo.bytes_sent if lo else 0), (disk.write_bytes if disk else 0)

    def __enter__(self) -> Copies:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.tcp, self.disk = (e - s for e, s in zip(end, self._start, strict=True))

    def figures(self) -> dict:
        return {"tcp": self.tcp, "disk": self.disk}


def make_part(i: int, rows: int, keys: int):  # runs on a worker: no data crosses from the driver
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(i)
    return pa.table({"key": rng.integers(0, keys, rows, dtype=np.int64), "payload": rng.random(rows)})


def summary(part) -> tuple[int, object]:  # runs on a worker: the output's row count and its keys
    import numpy as np

    keys = part["key"].to_numpy()
    return len(keys), np.unique(keys)


def check(summaries: list, total_rows: int) -> str:
    import numpy as np

    rows = sum(n for n, _ in summaries)
    keys = np.concatenate([k for _, k in summaries])
    if rows != total_rows:
        return f"FAIL: {rows} rows, expected {total_rows}"
    if len(np.unique(keys)) != len(keys):
        return "FAIL: a key is in more than one partition"
    return "ok"


def run_runtime(a: argparse.Namespace) -> dict:
    import runtime as rt

    rows = int(a.gb * 1e9 / ROW_BYTES / a.inputs)
    rt.init(num_workers=2)
    try:
        make = rt.remote(make_part)
        parts = [make.remote(i, rows, a.keys) for i in range(a.inputs)]
        rt.wait(parts, num_returns=len(parts))
        summarize = rt.remote(summary)
        rt.get(summarize.remote(rt.shuffle(parts[:2], on="key", npartitions=2)[0]))  # warm the workers
        base = settled_memory()
        with MemorySampler() as mem, Copies() as io:
            start = time.perf_counter()
            outs = rt.shuffle(parts, on="key", npartitions=a.outputs)
            rt.wait(outs, num_returns=len(outs))
            wall = time.perf_counter() - start
        result = check(rt.get([summarize.remote(o) for o in outs]), rows * a.inputs)
    finally:
        rt.shutdown()
    return {"wall": wall, "peak": mem.peak - base, "check": result, **io.figures()}


def run_dask(a: argparse.Namespace) -> dict:
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster, wait

    rows = int(a.gb * 1e9 / ROW_BYTES / a.inputs)

    def make_pandas(i: int):
        return make_part(i, rows, a.keys).to_pandas()

    with (
        dask.config.set({"dataframe.shuffle.method": "p2p"}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        df = dd.from_map(make_pandas, range(a.inputs)).persist()
        wait(df)
        base = settled_memory()
        with MemorySampler() as mem, Copies() as io:
            start = time.perf_counter()
            out = df.shuffle("key", npartitions=a.outputs, shuffle_method="p2p").persist()
            wait(out)
            wall = time.perf_counter() - start
        summaries = client.gather(client.compute([dask.delayed(summary)(d) for d in out.to_delayed()]))
        result = check(summaries, rows * a.inputs)
    return {"wall": wall, "peak": mem.peak - base, "check": result, **io.figures()}


def run_ray(a: argparse.Namespace) -> dict:
    import ray

    rows = int(a.gb * 1e9 / ROW_BYTES / a.inputs)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        import ray.data

        tables = ray.get([ray.remote(make_part).remote(i, rows, a.keys) for i in range(a.inputs)])
        ds = ray.data.from_arrow(tables).materialize()
        del tables
        base = settled_memory()
        with MemorySampler() as mem, Copies() as io:
            start = time.perf_counter()
            out = ds.repartition(a.outputs, keys=["key"]).materialize()  # a hash shuffle by key
            wall = time.perf_counter() - start
        summarize = ray.remote(summary)
        result = check(ray.get([summarize.remote(ref) for ref in out.to_arrow_refs()]), rows * a.inputs)
    finally:
        ray.shutdown()
    return {"wall": wall, "peak": mem.peak - base, "check": result, **io.figures()}


SYSTEMS = {"runtime": run_runtime, "dask": run_dask, "ray": run_ray}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--outputs", type=int, default=100)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--systems", default="runtime,dask,ray")
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args()
    if a.system:  # a child: run one system, print its JSON
        try:
            __import__({"runtime": "runtime", "dask": "distributed", "ray": "ray"}[a.system])
        except ImportError:
            print(json.dumps({"system": a.system, "status": "not installed"}))
            return
        print(json.dumps({"system": a.system, "status": "ok", **SYSTEMS[a.system](a)}))
        return
    data = a.gb * 1e9
    rows = []
    for name in a.systems.split(","):
        cmd = [sys.executable, __file__, "--system", name, "--gb", str(a.gb), "--inputs", str(a.inputs)]
        cmd += ["--outputs", str(a.outputs), "--keys", str(a.keys)]
        res, _ = run_child(name, cmd, a.timeout)
        if res.get("status") != "ok":
            rows.append([name, res.get("status", "?"), "-", "-", "-", "-"])
            continue
        copies = [f"{res[k] / data:.2f}" for k in ("tcp", "disk")]
        rows.append([name, f"{res['wall']:.2f}", f"{res['peak'] / data:.2f}", *copies, res["check"]])
    print(f"shuffle of {a.gb:g} GB ({a.inputs} -> {a.outputs} partitions, {a.keys:,} keys) on 2 workers")
    headers = ["system", "wall s", "peak extra mem (x data)", "TCP bytes (x data)", "disk writes (x data)", "check"]
    print(render_table(headers, rows))


if __name__ == "__main__":
    main()
