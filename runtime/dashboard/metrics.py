"""Prometheus metrics at ``/metrics``, read from the dashboard's snapshot.

Named after Dask's scheduler metrics with ``runtime_`` for ``dask_``, plus what only this
runtime has: each node's object store and the copies fetched into it, and each worker's
memory.  Not exported yet, for want of the data: ``tasks_transfer_seconds_total`` (workers
do not report how long they wait for their inputs), work stealing and the coordination
primitives (not built).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from runtime.dashboard.snapshot import LIVE_STATES

WORKER_STATES = ("running", "paused", "closing_gracefully")


class SnapshotCollector:
    """A prometheus_client collector over the latest snapshot."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield GaugeMetricFamily("runtime_scheduler_clients", "Number of clients connected", value=snap["clients"])
        workers = GaugeMetricFamily("runtime_scheduler_workers", "Number of workers known by state", labels=["state"])
        by_status = dict.fromkeys(WORKER_STATES, 0)
        for w in snap["workers"]:
            by_status[w["status"]] = by_status.get(w["status"], 0) + 1
        for status, n in by_status.items():
            workers.add_metric([status], n)
        yield workers
        tasks = GaugeMetricFamily("runtime_scheduler_tasks", "Number of tasks known by state", labels=["state"])
        for state in LIVE_STATES:
            tasks.add_metric([state], snap["tasks"]["states"][state])
        yield tasks
        yield CounterMetricFamily(
            "runtime_scheduler_tasks_forgotten", "Total number of tasks forgotten by the scheduler",
            value=snap["tasks"]["forgotten_total"],
        )  # fmt: skip
        yield from _prefix_metrics(snap["prefixes"])
        steals = CounterMetricFamily(
            "runtime_scheduler_steals", "Work stealing: tasks asked of busy workers, moved, and declined",
            labels=["outcome"],
        )  # fmt: skip
        for outcome, n in snap["stealing"].items():
            steals.add_metric([outcome], n)
        yield steals
        prims = GaugeMetricFamily(
            "runtime_scheduler_primitives",
            "Coordination primitives: how many (count), held (leases, items, set) and waiters, by kind",
            labels=["kind", "figure"],
        )  # fmt: skip
        for kind, figures in snap["primitives"].items():
            for figure, n in figures.items():
                prims.add_metric([kind, figure], n)
        yield prims
        store = GaugeMetricFamily(
            "runtime_objstore_bytes",
            "Bytes of each node's object store: in shared memory, spilled to disk, limit, kept for reuse",
            labels=["node", "kind"],
        )  # fmt: skip
        copies = CounterMetricFamily(
            "runtime_objstore_transfers", "Copies fetched into each node's store from another node", labels=["node"]
        )
        copied = CounterMetricFamily(
            "runtime_objstore_transfer_bytes", "Bytes fetched into each node's store from other nodes", labels=["node"]
        )
        for node in snap["nodes"]:
            for kind in ("used", "spilled", "limit", "pooled"):
                store.add_metric([node["node"], kind], node["store"][kind])
            copies.add_metric([node["node"]], node["transfers"]["copies"])
            copied.add_metric([node["node"]], node["transfers"]["bytes"])
        yield from (store, copies, copied)
        memory = GaugeMetricFamily(
            "runtime_worker_memory_bytes",
            "Each worker's memory: managed (its values), unmanaged (its own process), rss, limit",
            labels=["worker", "node", "kind"],
        )
        for w in snap["workers"]:
            m = w["memory"]
            for kind, value in (("managed", m["managed"]), ("unmanaged", m["own"]), ("rss", m["rss"])):
                memory.add_metric([w["address"], w["node"], kind], value)
            memory.add_metric([w["address"], w["node"], "limit"], m["limit"])
        yield memory


def _prefix_metrics(prefixes: list[dict[str, Any]]) -> Iterator[Metric]:
    label = ["task_prefix_name"]
    suspicious = CounterMetricFamily(
        "runtime_scheduler_tasks_suspicious", "Total number of times a task has been marked suspicious", labels=label
    )
    compute = CounterMetricFamily(
        "runtime_scheduler_tasks_compute_seconds", "Total time spent computing tasks", labels=label, unit="seconds"
    )
    transfer = CounterMetricFamily(
        "runtime_scheduler_tasks_transfer_seconds", "Total time spent getting tasks' inputs (fetched and read)",
        labels=label, unit="seconds",
    )  # fmt: skip
    output = GaugeMetricFamily(
        "runtime_scheduler_tasks_output_bytes", "Current size of in memory tasks, by task prefix", labels=label
    )
    totals = CounterMetricFamily(
        "runtime_scheduler_prefix_state_totals", "Accumulated count of task prefix in each state",
        labels=["task_prefix_name", "state"],
    )  # fmt: skip
    for p in prefixes:
        name = p["name"]
        suspicious.add_metric([name], p["suspicious"])
        compute.add_metric([name], p["compute_seconds"])
        transfer.add_metric([name], p["transfer_seconds"])
        output.add_metric([name], p["nbytes"])
        for state, n in p["totals"].items():
            if state != "released" or n:
                totals.add_metric([name, state], n)
    yield from (suspicious, compute, transfer, output, totals)


def registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding the snapshot's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition format, as Prometheus scrapes it."""
    return generate_latest(reg)
