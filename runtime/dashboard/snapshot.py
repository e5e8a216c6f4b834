"""What the dashboard shows, read off the scheduler's state without walking its tasks.

::

    stimuli ──► Recorder (before the state machine): finished tasks (the task stream),
                worker deaths, copies between nodes; bounded, O(1) per stimulus
    state   ──► take_snapshot(): workers, nodes, task groups' counts    at most every
                (TaskGroup keeps them as transitions happen)           MAX_AGE seconds
                           │
                           ▼
               pages (server-sent events), /api/v1, /metrics read the same snapshot

A snapshot costs O(workers + nodes + task prefixes), never O(tasks): a million-task graph
is read as fast as a ten-task one.  ``task(key)`` looks up one task and its story.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.comm.messages import StoreRef
from runtime.scheduler import stimuli as st
from runtime.scheduler.actors import ACTORS_CLIENT
from runtime.scheduler.entities import TASK_STATES_IN_ORDER

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler
    from runtime.scheduler.state import SchedulerState

#: seconds a snapshot is served before it is taken again
MAX_AGE = 0.25
#: finished tasks kept for the task stream
STREAM_LENGTH = 10_000
#: worker deaths kept (the newest per worker address, and this many in all)
DEATHS_KEPT = 200
#: dependencies or dependents listed by ``task(key)``
MAX_EDGES = 100
#: the states a live task can be in, in the order a task goes through them
LIVE_STATES = tuple(s for s in TASK_STATES_IN_ORDER if s != "forgotten")


class Recorder:
    """Listens to the scheduler's stimuli before they are handled (``Scheduler.on_stimulus``)
    and keeps what the state does not: when and where tasks ran, why workers died, and the
    copies each node fetched."""

    def __init__(self, state: SchedulerState):
        self.state = state
        #: finished tasks, oldest first: (number, key, prefix, worker, start, stop, erred)
        self.stream: deque[tuple[int, str, str, str, float, float, bool]] = deque(maxlen=STREAM_LENGTH)
        self._numbers = itertools.count(1)
        #: the last death of each worker address: node, when, cause (exit code, signal, log tail)
        self.deaths: dict[str, dict[str, Any]] = {}
        #: node -> [copies fetched into its store, their bytes]
        self.transfers: dict[str, list[int]] = {}

    def __call__(self, stimulus: st.Stimulus) -> None:
        kind = type(stimulus)
        if kind is st.TaskFinished or kind is st.TaskErred:
            s: Any = stimulus
            if s.stop > 0:
                ts = self.state.tasks.get(s.key)
                prefix = ts.prefix if ts is not None else s.key.rsplit("-", 1)[0]
                self.stream.append(
                    (next(self._numbers), s.key, prefix, s.worker, s.start, s.stop, kind is st.TaskErred)
                )
        elif kind is st.RemoveWorker:
            r: st.RemoveWorker = stimulus  # type: ignore[assignment]
            ws = self.state.workers.get(r.address)
            if ws is not None and r.cause != "retired":
                self.deaths.pop(r.address, None)  # the newest last
                self.deaths[r.address] = {"worker": r.address, "node": ws.node, "time": time.time(), "cause": r.cause}
                while len(self.deaths) > DEATHS_KEPT:
                    del self.deaths[next(iter(self.deaths))]
        elif kind is st.AddReplica:
            a: st.AddReplica = stimulus  # type: ignore[assignment]
            moved = self.transfers.setdefault(a.node, [0, 0])
            moved[0] += 1
            moved[1] += a.source.nbytes  # the copy's size, from the StoreRef it was made from

    def since(self, number: int, limit: int) -> list[list]:
        """Finished tasks numbered above ``number``, at most the ``limit`` newest."""
        stream = self.stream
        if not stream or stream[-1][0] <= number:
            return []
        first = max(number + 1, stream[0][0], stream[-1][0] - limit + 1)
        start = first - stream[0][0]  # numbers are consecutive within the deque
        return [list(e) for e in itertools.islice(stream, start, None)]


def memory_thresholds() -> dict[str, float | bool]:
    """The fractions of a worker's limit at which it spills, pauses and is restarted."""
    return {n: config.get(f"worker.memory.{n}") for n in ("spill", "pause", "terminate")}


def primitives(extensions: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The coordination primitives now: per kind, how many there are, held and waited for.
    O(primitives), not O(tasks): there are few."""
    out: dict[str, dict[str, int]] = {}
    if (sems := extensions.get("semaphores")) is not None:
        held = sum(len(sem.leases) for sem in sems.state.sems.values())
        out["semaphore"] = {"count": len(sems.state.sems), "held": held, "waiting": len(sems.state.waiting_on)}
    if (locks := extensions.get("multi_locks")) is not None:
        names = [q for q in locks.state.queues.values() if q]  # each name's requests, its holder first
        waiting = sum(len(q) - 1 for q in names)
        out["multi_lock"] = {"count": len(locks.state.queues), "held": len(names), "waiting": waiting}
    if (queues := extensions.get("queues")) is not None:
        items = sum(len(q.items) for q in queues.state.queues.values())
        out["queue"] = {"count": len(queues.state.queues), "held": items, "waiting": len(queues.state.waiting_on)}
    for name, kind in (("variables", "variable"), ("event", "event")):
        if (ext := extensions.get(name)) is not None:
            held = len(ext.state.values) if kind == "variable" else len(ext.state.set_events)
            out[kind] = {"count": held, "held": held, "waiting": len(ext.state.waiting_on)}
    return out


def take_snapshot(scheduler: Scheduler, recorder: Recorder) -> dict[str, Any]:
    """The cluster now, as plain data (the JSON the pages and the API serve)."""
    state = scheduler.state
    workers = []
    for address, ws in state.workers.items():
        workers.append({
            "address": address, "node": ws.node, "host": ws.host, "pid": ws.pid, "nthreads": ws.nthreads,
            "status": ws.status, "processing": len(ws.processing), "occupancy": ws.occupancy,
            # own: its process's memory outside the store (Dask's unmanaged); managed: bytes of
            # the values it computed, which live in its node's store or inline here
            "memory": {"own": ws.memory, "rss": ws.memory_rss, "managed": ws.nbytes, "limit": ws.memory_limit},
            "resources": ws.resources,
        })  # fmt: skip
    nodes = []
    for node, ns in state.nodes.items():
        info = scheduler.node_info.get(node, {})
        copies, copied = recorder.transfers.get(node, (0, 0))
        nodes.append({
            "node": node, "host": info.get("host", ""), "pid": info.get("pid", 0), "address": ns.address,
            "workers": [ws.address for ws in ns.workers],
            "store": {
                "used": ns.store_used, "spilled": ns.store_spilled, "limit": ns.store_limit, "pooled": ns.store_pooled,
            },
            "transfers": {"copies": copies, "bytes": copied},
        })  # fmt: skip
    counts = dict.fromkeys(LIVE_STATES, 0)
    prefixes = []
    forgotten = 0
    for name, tg in state.task_groups.items():  # in the order first submitted: graph order
        states = tg.states()
        for s, n in states.items():
            counts[s] += n
        forgotten += tg.entered["forgotten"]
        prefixes.append({
            "name": name, "size": tg.size, "states": states, "totals": dict(tg.entered),
            "compute_seconds": tg.compute_seconds, "transfer_seconds": tg.transfer_seconds, "nbytes": tg.nbytes,
            "suspicious": tg.suspicious,
            "duration": state.task_durations.get(name),
        })  # fmt: skip
    return {
        "time": time.time(),
        "scheduler": scheduler.address,
        "clients": len(state.clients) - (ACTORS_CLIENT in state.clients),
        "workers": workers,
        "nodes": nodes,
        "tasks": {"total": len(state.tasks), "states": counts, "forgotten_total": forgotten},
        "prefixes": prefixes,
        "thresholds": memory_thresholds(),
        "deaths": list(recorder.deaths.values()),
        "stream_last": recorder.stream[-1][0] if recorder.stream else 0,
        "stealing": dict(state.steal_counts),
        "primitives": primitives(scheduler.extensions),
    }


class Snapshots:
    """The latest snapshot, taken again once it is older than ``MAX_AGE`` seconds (however
    many pages, API calls and scrapes ask meanwhile)."""

    def __init__(self, scheduler: Scheduler, recorder: Recorder):
        self.scheduler, self.recorder = scheduler, recorder
        self._snapshot: dict[str, Any] = {}
        self._json = ""
        self._taken = -MAX_AGE

    def get(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._taken >= MAX_AGE:
            self._snapshot = take_snapshot(self.scheduler, self.recorder)
            self._json = ""
            self._taken = now
        return self._snapshot

    def json(self) -> str:
        """The snapshot as JSON, encoded once per snapshot."""
        snapshot = self.get()
        if not self._json:
            self._json = json.dumps(snapshot, default=str)
        return self._json


def task(state: SchedulerState, key: str) -> dict[str, Any] | None:
    """One task: its state, where it runs or lives, its edges and its story; None if unknown."""
    ts = state.tasks.get(key)
    if ts is None:
        return None
    story = [
        {"key": k, "start": start, "finish": finish, "recommendations": recs, "stimulus_id": sid}
        for k, start, finish, recs, sid in state.story(key)
    ]
    return {
        "key": key, "state": ts.state, "prefix": ts.prefix, "priority": ts.priority, "nbytes": ts.nbytes,
        "worker": ts.processing_on.address if ts.processing_on is not None else None,
        "who_has": [ws.address for ws in ts.who_has or ()],
        # where its value is stored, as [node, nbytes, name]; None when inline or not in memory
        "stored": [data.node, data.nbytes, data.name] if type(data := ts.data) is StoreRef else None,
        "dependencies": [d.key for d in itertools.islice(ts.dependencies, MAX_EDGES)],
        "dependents": [d.key for d in itertools.islice(ts.dependents, MAX_EDGES)],
        "n_dependencies": len(ts.dependencies), "n_dependents": len(ts.dependents),
        "wanted_by": [cs.client_key for cs in ts.who_wants], "suspicious": ts.suspicious,
        "exception": ts.exception_text or None, "traceback": ts.traceback or None,
        "story": story,
    }  # fmt: skip
