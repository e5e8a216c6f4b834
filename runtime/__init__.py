"""runtime: Ray-style tasks on a Dask-style scheduler with a per-node shared-memory store."""

from runtime import config
from runtime.api.actor import ActorClass, ActorHandle, get_actor, kill
from runtime.api.context import cancel, get, init, is_initialized, put, shutdown
from runtime.api.remote import remote
from runtime.client.future import Future, ObjectRef
from runtime.client.futures_client import Client, ClientExecutor
from runtime.client.progress import progress
from runtime.client.waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
from runtime.cluster import LocalCluster
from runtime.diagnostics import MemorySampler
from runtime.errors import (
    ActorDiedError,
    GetTimeoutError,
    KilledWorker,
    RemoteTraceback,
    SchedulerError,
    TaskCancelledError,
    TaskError,
)
from runtime.worker.actors import get_worker
from runtime.worker.plugins import WorkerPlugin

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel", "get_actor", "kill", "config",
    "Client", "ClientExecutor", "LocalCluster", "Future", "ObjectRef", "ActorClass", "ActorHandle", "MemorySampler",
    "as_completed", "progress", "WorkerPlugin", "get_worker", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",
    "ActorDiedError", "GetTimeoutError", "KilledWorker",
    "RemoteTraceback", "SchedulerError", "TaskCancelledError", "TaskError",
]  # fmt: skip
__version__ = "0.1.0"
