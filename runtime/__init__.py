"""runtime: Ray-style tasks on a Dask-style scheduler with a per-node shared-memory store.

The public names below are imported on first use (PEP 562), so the cluster's own processes
(scheduler, node agents, workers), which import ``runtime.*`` modules, do not load the
whole user API, the local schedulers and the progress bar each time one starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    "init": "runtime.api.context", "shutdown": "runtime.api.context", "is_initialized": "runtime.api.context",
    "get": "runtime.api.context", "put": "runtime.api.context", "cancel": "runtime.api.context",
    "remote": "runtime.api.remote",
    "available_resources": "runtime.api.cluster_info", "cluster_resources": "runtime.api.cluster_info",
    "nodes": "runtime.api.cluster_info", "get_gpu_ids": "runtime.api.cluster_info",
    "get_runtime_context": "runtime.api.cluster_info",
    "get_actor": "runtime.api.actor", "kill": "runtime.api.actor", "method": "runtime.api.actor",
    "ActorClass": "runtime.api.actor", "ActorHandle": "runtime.api.actor",
    "Future": "runtime.client.future", "ObjectRef": "runtime.client.future",
    "Client": "runtime.client.futures_client", "ClientExecutor": "runtime.client.futures_client",
    "progress": "runtime.client.progress",
    "Pub": "runtime.client.pubsub", "Sub": "runtime.client.pubsub", "span": "runtime.client.spans",
    "log_event": "runtime.client.event_log",
    "fire_and_forget": "runtime.client.dask_extras", "get_task_stream": "runtime.client.dask_extras",
    "performance_report": "runtime.client.dask_extras", "futures_of": "runtime.client.futures_client",
    "wait": "runtime.client.waiting", "as_completed": "runtime.client.waiting",
    "ALL_COMPLETED": "runtime.client.waiting", "FIRST_COMPLETED": "runtime.client.waiting",
    "FIRST_EXCEPTION": "runtime.client.waiting",
    "LocalCluster": "runtime.cluster",
    "shuffle": "runtime.shuffling.api", "ShuffleError": "runtime.shuffling.tasks",
    "MemorySampler": "runtime.diagnostics",
    "get_worker": "runtime.worker.actors",
    "get_client": "runtime.api.in_task", "worker_client": "runtime.api.in_task",
    "secede": "runtime.api.in_task", "rejoin": "runtime.api.in_task",
    "WorkerPlugin": "runtime.worker.plugins", "SchedulerPlugin": "runtime.scheduler.plugins",
    "Lock": "runtime.client.coordination", "MultiLock": "runtime.client.coordination",
    "Semaphore": "runtime.client.coordination", "Queue": "runtime.client.coordination",
    "Variable": "runtime.client.coordination", "Event": "runtime.client.coordination",
    "ActorDiedError": "runtime.errors", "ClientClosedError": "runtime.errors", "GetTimeoutError": "runtime.errors",
    "KilledWorker": "runtime.errors", "RemoteTraceback": "runtime.errors", "SchedulerError": "runtime.errors",
    "TaskCancelledError": "runtime.errors", "TaskError": "runtime.errors",
}  # fmt: skip
__all__ = [
    "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait", "cancel", "get_actor", "kill",
    "config", "util", "exceptions",
    "available_resources", "cluster_resources", "nodes", "get_gpu_ids", "get_runtime_context",
    "Client", "ClientExecutor", "LocalCluster", "Future", "ObjectRef", "ActorClass", "ActorHandle", "MemorySampler",
    "as_completed", "fire_and_forget", "futures_of", "get_task_stream", "performance_report",
    "progress", "WorkerPlugin", "SchedulerPlugin", "get_worker", "get_client", "worker_client",
    "secede", "rejoin", "shuffle", "ShuffleError",
    "Lock", "MultiLock", "Semaphore", "Queue", "Variable", "Event",
    "Pub", "Sub", "span", "log_event",
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
    "ActorDiedError", "ClientClosedError", "GetTimeoutError", "KilledWorker",
    "RemoteTraceback", "SchedulerError", "TaskCancelledError", "TaskError",
]  # fmt: skip
assert set(__all__) == {"config", "util", "exceptions", *_EXPORTS}
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("config", "util", "exceptions"):  # modules of their own: runtime.config.set(...), runtime.util...
        return importlib.import_module(f"runtime.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from runtime import config, exceptions, util
    from runtime.api.actor import ActorClass, ActorHandle, get_actor, kill, method
    from runtime.api.cluster_info import (
        available_resources,
        cluster_resources,
        get_gpu_ids,
        get_runtime_context,
        nodes,
    )  # fmt: skip
    from runtime.api.context import cancel, get, init, is_initialized, put, shutdown
    from runtime.api.in_task import get_client, rejoin, secede, worker_client
    from runtime.api.remote import remote
    from runtime.client.coordination import Event, Lock, MultiLock, Queue, Semaphore, Variable
    from runtime.client.dask_extras import fire_and_forget, get_task_stream, performance_report
    from runtime.client.event_log import log_event
    from runtime.client.future import Future, ObjectRef
    from runtime.client.futures_client import Client, ClientExecutor, futures_of
    from runtime.client.progress import progress
    from runtime.client.pubsub import Pub, Sub
    from runtime.client.spans import span
    from runtime.client.waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
    from runtime.cluster import LocalCluster
    from runtime.diagnostics import MemorySampler
    from runtime.errors import (
        ActorDiedError,
        ClientClosedError,
        GetTimeoutError,
        KilledWorker,
        RemoteTraceback,
        SchedulerError,
        TaskCancelledError,
        TaskError,
    )  # fmt: skip
    from runtime.scheduler.plugins import SchedulerPlugin
    from runtime.shuffling.api import shuffle
    from runtime.shuffling.tasks import ShuffleError
    from runtime.worker.actors import get_worker
    from runtime.worker.plugins import WorkerPlugin
