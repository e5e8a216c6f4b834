"""runtime: Ray-style tasks on a Dask-style scheduler with a per-node shared-memory store."""

from runtime import config
from runtime.api.actor import ActorClass, ActorHandle, get_actor, kill
from runtime.api.context import cancel, get, init, is_initialized, put, shutdown, wait
from runtime.api.remote import remote
from runtime.client.client import Client
from runtime.client.future import Future, ObjectRef
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

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel", "get_actor", "kill", "config",
    "Client", "LocalCluster", "Future", "ObjectRef", "ActorClass", "ActorHandle", "MemorySampler",
    "ActorDiedError", "GetTimeoutError", "KilledWorker",
    "RemoteTraceback", "SchedulerError", "TaskCancelledError", "TaskError",
]  # fmt: skip
__version__ = "0.1.0"
