"""What Ray's and Dask's APIs ask of the scheduler beyond the core: the cluster's resources
and nodes (``ray.cluster_resources``/``available_resources``/``nodes``), named actors
(``ray.util.list_named_actors``), ``fire_and_forget``, metadata and versions, the task
stream and ``run_on_scheduler`` (Dask's).

``fire_and_forget`` is a pseudo-client, ``FIRE_AND_FORGET_CLIENT``, that wants the keys it
is given until each is done (in memory, erred or forgotten): their tasks run even after
every client let go of them, as Dask promises, and nothing is kept once they have.
"""

from __future__ import annotations

import asyncio
import inspect
import platform
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime.scheduler import stimuli as st
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: the pseudo-client that wants every key given to ``fire_and_forget`` until it is done
FIRE_AND_FORGET_CLIENT = "fire-and-forget"
#: states a fire-and-forget task is done in
_DONE = ("memory", "erred", "forgotten")


class FireAndForget(SchedulerPlugin):
    """Holds keys for ``fire_and_forget`` until their tasks are done.  Its transition hook is
    on only while it holds some (``wants_transitions``)."""

    wants_transitions = False

    def __init__(self) -> None:
        #: keys held, until done
        self.keys: set[str] = set()
        self._scheduler: Scheduler | None = None

    def start(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        scheduler.handle_stimulus(st.AddClient("add-client-fire-and-forget", FIRE_AND_FORGET_CLIENT))

    def hold(self, keys: list[str]) -> dict | None:
        s = self._scheduler
        assert s is not None
        unknown = [k for k in keys if k not in s.state.tasks]
        if unknown:
            return {"error": f"fire_and_forget(): the scheduler does not know {unknown[:3]} (released already?)"}
        pending = [k for k in keys if s.state.tasks[k].state not in ("memory", "erred") and k not in self.keys]
        if not pending:
            return None
        self.keys.update(pending)
        s.handle_stimulus(st.UpdateGraph(f"fire-and-forget-{pending[0]}", FIRE_AND_FORGET_CLIENT, (), tuple(pending)))
        self._switch(True)
        return None

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        if finish in _DONE and key in self.keys:
            self.keys.discard(key)
            assert self._scheduler is not None
            release = st.ClientReleasesKeys(f"fire-and-forget-done-{key}", FIRE_AND_FORGET_CLIENT, (key,))
            # Not from inside the hook: the stimulus that finished it is still being handled.
            asyncio.get_running_loop().call_soon(self._scheduler.handle_stimulus, release)
            if not self.keys:
                self._switch(False)

    def _switch(self, on: bool) -> None:
        if self.wants_transitions != on and self._scheduler is not None:
            self.wants_transitions = on
            self._scheduler.plugins.rehook()


def _ext(s: Scheduler) -> FireAndForget:
    return s.extensions["fire_and_forget"]


request("fire-and-forget")(lambda s, msg, peer: _ext(s).hold(list(msg["keys"])))


@request("retry")
def _retry(s: Scheduler, msg: dict, peer: str) -> None:
    """Dask's ``Client.retry``: the erred keys run again (``scheduler/rerun.py``)."""
    s.handle_stimulus(st.Retry(f"retry-{next(s._ids)}", peer, tuple(msg["keys"])))


# -- the task stream (Dask's get_task_stream) ----------------------------------------------

#: tasks the task stream keeps, newest last (Dask's TaskStreamPlugin keeps as many)
TASK_STREAM_LENGTH = 100_000


class TaskStream(SchedulerPlugin):
    """Dask's task stream: for each task a worker ran, its key, worker, status, size and
    start/stop times.  It records only while some client has one open (``task-stream-start``
    ... ``-stop``), so the scheduler pays no transition hook otherwise."""

    wants_transitions = False

    def __init__(self) -> None:
        #: records, newest last
        self.records: deque[dict[str, Any]] = deque(maxlen=TASK_STREAM_LENGTH)
        #: how many records were ever added (a client's cursor counts these)
        self.count = 0
        #: client -> how many task streams it has open
        self.open: dict[str, int] = {}
        self._scheduler: Scheduler | None = None

    def start(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def begin(self, client: str) -> int:
        self.open[client] = self.open.get(client, 0) + 1
        self._switch()
        return self.count

    def end(self, client: str) -> None:
        n = self.open.get(client, 0) - 1
        if n > 0:
            self.open[client] = n
        else:
            self.open.pop(client, None)
        self._switch()

    def since(self, cursor: int) -> list[dict[str, Any]]:
        """The records added after ``cursor`` (as many as are still kept)."""
        return list(self.records)[max(0, len(self.records) - (self.count - cursor)) :]

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        if start == "processing" and "startstops" in kwargs:  # a worker's report of a task it ran
            status = "OK" if finish == "memory" else "error"
            self.records.append({"key": key, "worker": kwargs.get("worker", ""), "status": status,
                                 "nbytes": kwargs.get("nbytes", 0), "startstops": kwargs["startstops"]})  # fmt: skip
            self.count += 1

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        if self.open.pop(client, None):
            self._switch()

    def _switch(self) -> None:
        on = bool(self.open)
        if self.wants_transitions != on and self._scheduler is not None:
            self.wants_transitions = on
            self._scheduler.plugins.rehook()


def _stream(s: Scheduler) -> TaskStream:
    return s.extensions["task_stream"]


request("task-stream-start")(lambda s, msg, peer: _stream(s).begin(peer))
request("task-stream-stop")(lambda s, msg, peer: _stream(s).end(peer))
request("task-stream-get")(lambda s, msg, peer: _stream(s).since(int(msg["since"])))


# -- resources and nodes (Ray's) -----------------------------------------------------------


def _worker_resources(s: Scheduler) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """For each worker: (what it offers, what is free of it now), Ray's names.

    ``CPU`` is its threads (each task takes one unless it asked for more); ``memory`` its
    memory limit, of which its own use is taken; ``object_store_memory`` is the node's, so
    it is counted once per node (on the node's first worker).
    """
    out = {}
    counted: set[str] = set()
    for address, ws in s.state.workers.items():
        total = {"CPU": float(ws.nthreads), **{k: float(v) for k, v in ws.resources.items()}}
        free = dict(total)
        for ts in ws.processing:
            if ts in ws.long_running:
                continue
            needs = ts.resource_restrictions or {}
            for name, amount in {"CPU": 1.0, **needs}.items():
                if name in free:
                    free[name] -= amount
        if ws.memory_limit:
            total["memory"] = float(ws.memory_limit)
            free["memory"] = float(max(0, ws.memory_limit - ws.memory))
        ns = s.state.nodes.get(ws.node)
        if ns is not None and ws.node not in counted and ns.store_limit:
            counted.add(ws.node)
            total["object_store_memory"] = float(ns.store_limit)
            free["object_store_memory"] = float(max(0, ns.store_limit - ns.store_used))
        out[address] = (total, {k: max(0.0, v) for k, v in free.items()})
    return out


def _summed(parts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


@request("cluster-resources")
def _cluster_resources(s: Scheduler, msg: dict, peer: str) -> dict:
    """``{"total": {...}, "available": {...}}`` summed over the cluster, or by node."""
    per_worker = _worker_resources(s)
    return {
        "total": _summed([t for t, _ in per_worker.values()]),
        "available": {k: v for k, v in _summed([f for _, f in per_worker.values()]).items() if v > 0},
    }


@request("nodes")
def _nodes(s: Scheduler, msg: dict, peer: str) -> list[dict]:
    """Ray's ``ray.nodes()``: one dict per node, live ones (and nodes that left, not alive)."""
    per_worker = _worker_resources(s)
    out = []
    for node, info in s.node_info.items():
        workers = [a for a, ws in s.state.workers.items() if ws.node == node]
        address = info.get("address", "")
        ip = address.rsplit("://", 1)[-1].rsplit(":", 1)[0] or "127.0.0.1"
        out.append({
            "NodeID": node, "Alive": node not in s.state.departed_nodes, "alive": node not in s.state.departed_nodes,
            "NodeManagerAddress": ip, "NodeManagerHostname": info.get("host") or ip, "NodeManagerPort": 0,
            "ObjectStoreSocketName": info.get("prefix", ""), "Resources": _summed([per_worker[a][0] for a in workers]),
            "Workers": workers, "address": info.get("address", ""),
        })  # fmt: skip
    return out


@request("named-actors")
def _named_actors(s: Scheduler, msg: dict, peer: str) -> list[str]:
    return sorted(s.actors.named)


# -- metadata, versions, run_on_scheduler (Dask's) ----------------------------------------


class Metadata(SchedulerPlugin):
    """Dask's ``Client.set_metadata``/``get_metadata``: a nested dict kept by the scheduler."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def set(self, keys: list[str], value: Any) -> None:
        d = self.data
        for k in keys[:-1]:
            child = d.get(k)
            if not isinstance(child, dict):
                child = d[k] = {}
            d = child
        d[keys[-1]] = value

    def get(self, keys: list[str]) -> Any:
        d: Any = self.data
        for i, k in enumerate(keys):
            if not isinstance(d, dict) or k not in d:
                return {"missing": f"no metadata at {keys[: i + 1]!r}"}
            d = d[k]
        return {"value": d}


def _keys(msg: dict) -> list[str]:
    keys = msg["keys"]
    if not isinstance(keys, list) or not keys:
        raise TypeError(f"metadata keys must be a key or a non-empty list of keys, not {keys!r}")
    return keys


request("set-metadata")(lambda s, msg, peer: s.extensions["metadata"].set(_keys(msg), msg["value"]))
request("get-metadata")(lambda s, msg, peer: s.extensions["metadata"].get(_keys(msg)))


def versions() -> dict[str, Any]:
    """This process's versions, as Dask's ``get_versions`` reports them."""
    import msgspec

    import runtime

    packages = {"python": ".".join(map(str, sys.version_info[:3])), "runtime": runtime.__version__}
    packages["msgspec"] = msgspec.__version__
    for name in ("cloudpickle", "numpy", "pandas", "pyarrow", "dask", "distributed"):
        module = sys.modules.get(name)
        packages[name] = getattr(module, "__version__", None) if module is not None else None
    return {
        "host": {"python": sys.version, "OS": platform.system(), "OS-release": platform.release(),
                 "machine": platform.machine(), "byteorder": sys.byteorder},
        "packages": packages,
    }  # fmt: skip


request("versions")(lambda s, msg, peer: versions())


@request("run-on-scheduler")
async def _run_on_scheduler(s: Scheduler, msg: dict, peer: str) -> tuple:
    """Dask's ``run_on_scheduler``: the function runs here, on the scheduler's event loop
    (``dask_scheduler=`` given when it asks for it; a coroutine function is awaited)."""
    from runtime.comm import serialize  # the scheduler unpickles only what a client sends to run

    try:
        fn = serialize.loads(msg["function"])
        args, kwargs = serialize.loads(msg["args"])
        if "dask_scheduler" in _parameters(fn):
            kwargs["dask_scheduler"] = s
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return ("ok", serialize.dumps(result), "")
    except Exception as e:  # noqa: BLE001 - the caller gets it; the scheduler lives on
        pickled, text = serialize.pickled_error(e)[:2]
        return ("error", pickled, text)


def _parameters(fn: Any) -> Any:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
