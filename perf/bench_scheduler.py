"""The scheduler's state machine alone: cost per task as graphs grow, with no processes or sockets.

For each graph and size, in a fresh subprocess:

* ``ep``    N independent tasks;
* ``tree``  a binary-tree reduction with N tasks in all (N/2 leaves);

it runs the whole life of the graph through ``SchedulerState`` on 100 simulated workers
(one thread each): one ``update-graph`` with every task wanted, then each worker reports
its tasks finished one at a time, in the order it received them, until all are in memory;
then the client releases every key and all are forgotten.  It prints microseconds per
task (from update-graph to forgotten, every stimulus included), the part of it the kernel
spent for the process (system time: nearly all of it page faults, as the heap grows), the
scheduler's memory per task (resident memory when the whole graph is known, over the
baseline) and the peak resident memory.  The cost per task must stay flat as N grows.

``--plugins`` measures what scheduler plugins cost (``runtime/scheduler/plugins.py``): ``off``
drives the state machine alone; ``idle`` tells a plugin host with one plugin that has no
``transition`` hook after every stimulus (as the built-in extensions are); ``transition``
adds a plugin told of every transition.

Run:  python perf/bench_scheduler.py [--sizes 10000,100000,1000000] [--validate] [--plugins off|idle|transition]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psutil

from runtime.comm import messages as m
from runtime.scheduler import stimuli as st
from runtime.scheduler.plugins import Plugins, SchedulerPlugin
from runtime.scheduler.state import SchedulerState

N_WORKERS = 100
RUN_SPEC = (b"function", b"arguments")


def ep_graph(n: int) -> list[st.TaskSpec]:
    return [st.TaskSpec(f"noop-{i}", RUN_SPEC, (), 0, "noop") for i in range(n)]


def tree_graph(n: int) -> list[st.TaskSpec]:
    leaves = max(1, n // 2)
    specs = [st.TaskSpec(f"leaf-{i}", RUN_SPEC, (), 0, "leaf") for i in range(leaves)]
    level = [s.key for s in specs]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level) - 1, 2):
            key = f"add-{depth}-{i // 2}"
            specs.append(st.TaskSpec(key, RUN_SPEC, (level[i], level[i + 1]), 0, "add"))
            nxt.append(key)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return specs


GRAPHS = {"ep": ep_graph, "tree": tree_graph}


class _ClientWatcher(SchedulerPlugin):
    def remove_client(self, scheduler: Any, client: str, **kwargs: Any) -> None:
        pass


class _TransitionCounter(SchedulerPlugin):
    def __init__(self) -> None:
        self.count = 0

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        self.count += 1


def _shell_handle(s: SchedulerState, plugins: str) -> Callable[[st.Stimulus], tuple[dict, dict]]:
    """``s.handle`` with the shell's plugin hook after each stimulus (as ``server.py`` calls them)."""
    host = Plugins(SimpleNamespace(state=s))  # type: ignore[arg-type]
    host.add(_ClientWatcher(), "client-watcher")
    if plugins == "transition":
        host.add(_TransitionCounter(), "counter")

    def handle(stimulus: st.Stimulus) -> tuple[dict, dict]:
        out = s.handle(stimulus)
        host.after(stimulus)
        return out

    return handle


def run_one(graph: str, n: int, validate: bool, plugins: str = "off") -> dict:
    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    specs = GRAPHS[graph](n)
    keys = tuple(s.key for s in specs)
    s = SchedulerState(validate=validate)
    handle = s.handle if plugins == "off" else _shell_handle(s, plugins)
    handle(st.AddClient("add-client", "client"))
    handle(st.AddNode("add-node", "node"))
    for i in range(N_WORKERS):
        handle(st.AddWorker(f"add-worker-{i}", f"w{i}", "node", 1))
    gc.disable()  # as in a long-running scheduler, where cyclic GC passes are rare
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t0 = time.perf_counter()
    _, wmsgs = handle(st.UpdateGraph("update-graph", "client", tuple(specs), keys, 0))
    t_graph = time.perf_counter() - t0
    del specs
    rss_graph = proc.memory_info().rss - base
    peak = proc.memory_info().rss
    queues: dict[str, deque[str]] = {w: deque() for w in s.workers}
    #: chain hints, as a worker follows them: key -> the hinted tasks that start when it ends
    hints: dict[str, list[str]] = {}

    def enqueue(msgs: dict) -> None:
        for address, batch in msgs.items():
            q = queues.get(address)
            if q is not None:
                for msg in batch:
                    if type(msg) is m.ComputeTask:
                        if msg.after:
                            hints.setdefault(msg.after, []).append(msg.key)
                        else:
                            q.append(msg.key)

    enqueue(wmsgs)
    finished = 0
    t1 = time.perf_counter()
    busy = [w for w, q in queues.items() if q]
    while busy:
        for w in busy:
            key = queues[w].popleft()
            started = tuple(hints.pop(key, ()))
            _, wmsgs = handle(st.TaskFinished("task-finished", key, w, b"value", 5, 0.0, 0.001, started))
            queues[w].extendleft(reversed(started))  # they run next, there
            finished += 1
            if wmsgs:
                enqueue(wmsgs)
        busy = [w for w, q in queues.items() if q]
    t_run = time.perf_counter() - t1
    peak = max(peak, proc.memory_info().rss)
    assert finished == n if graph == "ep" else finished == len(keys), (finished, n)
    assert all(ts.state == "memory" for ts in s.tasks.values() if ts.who_wants)
    t2 = time.perf_counter()
    handle(st.ClientReleasesKeys("release-keys", "client", keys))
    t_release = time.perf_counter() - t2
    t_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    gc.enable()
    assert not s.tasks, f"{len(s.tasks)} tasks left after release"
    total = len(keys)
    return {
        "graph": graph,
        "tasks": total,
        "us_per_task": 1e6 * (t_graph + t_run + t_release) / total,
        "us_update_graph": 1e6 * t_graph / total,
        "us_run": 1e6 * t_run / total,
        "us_release": 1e6 * t_release / total,
        "us_sys": 1e6 * t_sys / total,
        "bytes_per_task": rss_graph / total,
        "peak_rss_mb": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--graphs", default="ep,tree")
    parser.add_argument("--validate", action="store_true", help="check every invariant (much slower)")
    parser.add_argument("--plugins", default="off", choices=("off", "idle", "transition"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # graph:n, run in this process
    args = parser.parse_args()
    if args.one:
        graph, n = args.one.split(":")
        print(json.dumps(run_one(graph, int(n), args.validate, args.plugins)))
        return
    print(f"SchedulerState on {N_WORKERS} simulated workers, plugins {args.plugins}; python {sys.version.split()[0]}")
    header = f"{'graph':<6}{'tasks':>11}{'us/task':>10}{'graph':>9}{'run':>9}{'release':>9}{'sys':>7}"
    header += f"{'B/task':>9}{'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for graph in args.graphs.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--one", f"{graph}:{n}", "--plugins", args.plugins]
            cmd += ["--validate"] if args.validate else []
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(
                f"{r['graph']:<6}{r['tasks']:>11,}{r['us_per_task']:>10.1f}{r['us_update_graph']:>9.1f}"
                f"{r['us_run']:>9.1f}{r['us_release']:>9.1f}{r['us_sys']:>7.1f}{r['bytes_per_task']:>9,.0f}"
                f"{r['peak_rss_mb']:>9,.0f}"
            )
    print("us/task: update-graph to forgotten, every stimulus included; graph/run/release: its parts;")
    print("sys: the kernel's share of us/task (page faults as the heap grows).")
    print("B/task: resident memory with the whole graph known, over the baseline, per task.")


if __name__ == "__main__":
    main()
