"""Ray's questions about the cluster and the running code: ``cluster_resources``,
``available_resources``, ``nodes``, ``get_gpu_ids`` and ``get_runtime_context``.

Resources are Ray's names: ``CPU`` (worker threads), ``memory`` (workers' memory limits, in
bytes), ``object_store_memory`` (the nodes' shared-memory stores) and the custom resources
workers were started with (``init(resources={"GPU": 1})``).  What is *available* is what the
tasks the scheduler has sent to workers have not taken, at the time of the call.
"""

from __future__ import annotations

import os
from typing import Any

from runtime.api.context import current_runtime
from runtime.worker.actors import current_actor_id, current_worker


def _ask(what: str) -> Any:
    """Ask the scheduler, once the local cluster ``init()`` started has all its workers (Ray
    counts a node's resources from its start; here they are the workers')."""
    rt = current_runtime()
    if rt.cluster is not None and rt.cluster.n_workers:
        rt.client.wait_for_workers(rt.cluster.n_workers, timeout=60.0)
    return rt.client.request(what)


def cluster_resources() -> dict[str, float]:
    """Every resource of the cluster and its total amount, as Ray's ``cluster_resources()``."""
    return _ask("cluster-resources")["total"]


def available_resources() -> dict[str, float]:
    """The resources not taken by running tasks now (those with none left are left out, as Ray's)."""
    return _ask("cluster-resources")["available"]


def nodes() -> list[dict[str, Any]]:
    """One dict per node, in Ray's shape: ``NodeID``, ``Alive``, ``NodeManagerAddress`` (its IP
    address), ``NodeManagerHostname``, ``Resources`` (and ``Workers``, this runtime's)."""
    return _ask("nodes")


def get_gpu_ids() -> list[int]:
    """The GPUs the running task was given (``num_gpus``): the ids in ``CUDA_VISIBLE_DEVICES``
    when it is set, else ``0 .. num_gpus-1``; ``[]`` outside a task or when it asked for none.
    This runtime does not choose devices: GPUs are counted, not assigned (see coming-from-ray)."""
    gpus = get_runtime_context().get_assigned_resources().get("GPU", 0)
    if not gpus:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    return list(range(int(gpus) or 1))


class RuntimeContext:
    """What the code calling it runs as (Ray's ``ray.get_runtime_context()``)."""

    def get_job_id(self) -> str:
        """The id of this process's connection to the cluster (there are no jobs: each client is one)."""
        return current_runtime().client.id

    def get_node_id(self) -> str | None:
        """The node this process runs on (a worker's node; a driver's when it has one)."""
        worker = current_worker()
        return worker.node if worker is not None else current_runtime().client.node

    def get_worker_id(self) -> str:
        """The worker's address in a task or actor, the client's id in a driver."""
        worker = current_worker()
        return worker.address if worker is not None else current_runtime().client.id

    def get_task_id(self) -> str | None:
        """The key of the task running in this thread; None in a driver or an actor method."""
        worker = current_worker()
        return worker.get_current_task() if worker is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor whose method (or constructor) runs here; None elsewhere."""
        return current_actor_id.get()

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task asked for (``{"CPU": 1.0}`` unless it asked for
        others); ``{}`` outside a task."""
        worker = current_worker()
        key = worker.get_current_task() if worker is not None else None
        if worker is None or key is None:
            return {}
        running = worker._executing.get(key)
        needs = dict(running[1].resources or {}) if running is not None else {}
        return {"CPU": 1.0, **{k: float(v) for k, v in needs.items()}}

    @property
    def namespace(self) -> str:
        return "default"

    def get(self) -> dict[str, Any]:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(), "task_id": self.get_task_id(),
                "actor_id": self.get_actor_id(), "namespace": self.namespace}  # fmt: skip


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()
