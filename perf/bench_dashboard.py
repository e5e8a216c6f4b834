"""What watching the dashboard costs: bench_tasks' workloads on runtime with and without a
client polling every page, the JSON API and /metrics 10 times a second.

One cluster; the rounds alternate (off, polled, off, polled, ...) so that the machine's
other load falls on both alike; each line is the median of ``--repeat`` rounds.  The
poller is a separate process (a browser is one too), so it takes no GIL from the driver.

Run:  python perf/bench_dashboard.py [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import bench_tasks
import cloudpickle
from _systems import ADAPTERS
from bench_tasks import FULL, QUICK, TASK_FUNCS, one, run_chain, run_noops, run_tree, tree_task_count

#: what the poller fetches each round, 10 rounds a second
PATHS = ("/status", "/workers", "/task/x", "/api/v1/workers", "/api/v1/nodes", "/api/v1/tasks", "/metrics")
#: one kept-alive connection, as a browser holds one (a new TCP connection per request would
#: measure connection set-up, on both sides, more than the dashboard)
POLLER = """
import http.client, sys, time, urllib.parse
base, paths = sys.argv[1], sys.argv[2:]
url = urllib.parse.urlsplit(base)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
while True:
    t = time.monotonic()
    for p in paths:
        conn.request("GET", url.path + p)
        conn.getresponse().read()
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
"""


cloudpickle.register_pickle_by_value(bench_tasks)  # the workers cannot import it


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    adapter: Any = ADAPTERS["runtime"]()
    adapter.start(TASK_FUNCS)
    try:
        link = adapter._rt.api.context.current_runtime().client.dashboard_link
        if not link:
            print("the dashboard is off (scheduler.dashboard.address); nothing to measure")
            return 1
        base = link.removesuffix("/status")
        adapter.get_one(adapter.submit(one))
        results: dict[str, dict[str, list[float]]] = {"off": {}, "polled": {}}
        n_tree = tree_task_count(sizes.leaves)
        for _ in range(args.repeat):
            for mode in ("off", "polled"):
                poller = subprocess.Popen([sys.executable, "-c", POLLER, base, *PATHS]) if mode == "polled" else None
                try:
                    time.sleep(0.3 if poller else 0)  # the poller is polling before the clock starts
                    r = results[mode]
                    r.setdefault("noop tasks/s", []).append(sizes.noops / run_noops(adapter, sizes.noops))
                    r.setdefault("chain ms/hop", []).append(1000 * run_chain(adapter, sizes.chain) / sizes.chain)
                    r.setdefault("tree tasks/s", []).append(n_tree / run_tree(adapter, sizes.leaves))
                finally:
                    if poller is not None:
                        poller.kill()
                        poller.wait()
        print(f"dashboard at {link}; medians of {args.repeat} alternating rounds")
        print(f"{'workload':<16}{'off':>12}{'polled':>12}{'change':>10}")
        for name in results["off"]:
            off, polled = (statistics.median(results[m][name]) for m in ("off", "polled"))
            better_high = not name.endswith("ms/hop")
            change = (polled / off - 1) * 100 if better_high else (off / polled - 1) * 100
            print(f"{name:<16}{off:>12,.1f}{polled:>12,.1f}{change:>+9.1f}%")
        print("change: throughput with the poller against without (negative: slower)")
    finally:
        adapter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
