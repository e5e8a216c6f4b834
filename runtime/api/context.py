"""The one explicit runtime object behind ``runtime.init/get/put/cancel/shutdown``.

Using the API before ``init()`` starts a local cluster with default settings, as Ray
does; ``shutdown()`` (or the end of the program) stops it.

Under a local scheduler (the ``scheduler`` setting, or ``scheduler=`` on ``get``/``wait``)
tasks run in this process instead (``runtime/local.py``).  Every future belongs to its
owner, the scheduler or client that made it (``runtime/client/owner.py``), and ``get``,
``wait`` and ``cancel`` go to that one, never to whatever runtime is current: a future of a
client that ``shutdown()`` closed raises ClientClosedError instead of starting a new cluster
that does not know it, and one of a ``runtime.Client`` never starts one at all.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from runtime import config
from runtime.client.client import ClusterClient
from runtime.client.future import Future
from runtime.client.owner import by_owner, scheduler_choice
from runtime.cluster import LocalCluster
from runtime.worker.actors import current_worker

logger = logging.getLogger("runtime")


class Runtime:
    """A connected client, and the local cluster it started if it started one."""

    def __init__(self, client: ClusterClient, cluster: LocalCluster | None):
        self.client = client
        self.cluster = cluster

    def close(self) -> None:
        try:
            self.client.close("a runtime that was shut down by runtime.shutdown()")
        finally:
            if self.cluster is not None:
                self.cluster.close()


_current: Runtime | None = None
_lock = threading.Lock()


def init(
    address: str | None = None,
    *,
    num_workers: int | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    memory_limit: str | int | float | None = None,
    ignore_reinit_error: bool = False,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    namespace: str | None = None,
    include_dashboard: bool | None = None,
    log_to_driver: bool = True,
    logging_level: int | str | None = None,
) -> Runtime:
    """Start a local cluster or join the one at ``address``.

    A local cluster has ``num_workers`` worker processes (default: one per CPU), each
    offering ``resources`` (abstract amounts such as ``{"GPU": 1}``) to tasks that ask, and
    a shared-memory object store of ``object_store_memory`` bytes (default: 30% of memory)
    that spills to disk beyond that.  Each worker may use ``memory_limit`` of its own memory
    (bytes, ``"2GB"``, a fraction of the machine's, 0 for none; default: the machine's memory
    shared out): at 60% it spills, at 80% it pauses, at 95% its node agent restarts it.

    Ray's arguments: ``num_cpus`` is the number of workers (one thread each) unless
    ``num_workers`` is given; ``num_gpus=0`` is accepted (GPUs are offered per worker with
    ``resources``); ``namespace`` (there is one), ``include_dashboard``, ``log_to_driver``
    and ``logging_level`` are accepted.
    """
    global _current
    if address == "auto":  # Ray's: the cluster `runtime start --head` started on this machine
        address = _local_address()
    if num_cpus is not None:
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise ValueError(f"init() num_cpus must be a whole number >= 1, not {num_cpus!r}")
        num_workers = num_workers if num_workers is not None else num_cpus
    if num_gpus:
        raise ValueError(
            f"init(num_gpus={num_gpus!r}): GPUs are offered per worker here: init(resources={{'GPU': 1}}) gives "
            "each worker one (see docs/coming-from-ray.md)"
        )
    if logging_level is not None:
        logger.setLevel(logging_level)
    with _lock:
        if _current is not None:
            if ignore_reinit_error:
                return _current
            raise RuntimeError("runtime.init() was already called; call runtime.shutdown() first")
        if address is not None:
            if num_workers is not None or resources is not None or object_store_memory is not None or memory_limit:
                raise ValueError(
                    "num_workers, resources, object_store_memory and memory_limit apply to a local cluster, "
                    "not when joining an address"
                )
            _current = Runtime(ClusterClient(address), None)
        else:
            cluster = LocalCluster(
                num_workers, resources=resources, object_store_memory=object_store_memory, memory_limit=memory_limit
            )
            try:
                client = ClusterClient(cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix)
            except BaseException as e:
                failure = cluster.startup_failure()
                cluster.close()
                if failure is not None and isinstance(e, Exception):
                    raise RuntimeError(f"the local cluster did not start: {failure}") from e
                raise
            _current = Runtime(client, cluster)
        _log_dashboard(_current.client)
        return _current


def _local_address() -> str:
    """The address of the cluster started on this machine (``RUNTIME_ADDRESS``, else the one
    ``runtime start --head`` recorded in its run directory); ConnectionError if there is none."""
    from runtime.cli import default_run_dir

    address = os.environ.get("RUNTIME_ADDRESS")
    if not address:
        try:
            with open(os.path.join(default_run_dir(), "address")) as f:
                address = f.read().strip()
        except OSError:
            pass
    if not address:
        raise ConnectionError(
            f'init(address="auto") found no running cluster (none recorded in {default_run_dir()}); '
            "start one with `runtime start --head`, or set RUNTIME_ADDRESS"
        )
    return address


def _log_dashboard(client: ClusterClient) -> None:
    """Say where the dashboard is, once per init(), once it serves: init() does not wait for it."""

    def log(link: str | None) -> None:
        if link:
            logger.info("runtime dashboard at %s", link)

    client.on_dashboard_link(log)


def shutdown() -> None:
    """Disconnect, and stop the local cluster if ``init()`` started one.  Safe to call twice."""
    global _current
    with _lock:
        rt, _current = _current, None
    local = sys.modules.get("runtime.local")  # imported only for a local scheduler (heavy: the state machine)
    if local is not None:
        local.shutdown()
    if rt is not None:
        rt.close()


def is_initialized() -> bool:
    return _current is not None


def current_runtime(timeout: float | None = None) -> Runtime:
    """The current runtime; in a worker process, its cluster's (connected within ``timeout``
    seconds on first use); elsewhere, a local cluster started now if none is."""
    global _current
    rt = _current
    if rt is None:
        worker = current_worker()
        if worker is not None:  # a task or an actor using the API: join the worker's cluster, on its node
            with _lock:
                if _current is None:
                    _current = Runtime(
                        ClusterClient(
                            worker.scheduler_address, node=worker.node, prefix=worker.prefix, timeout=timeout or 30.0
                        ),
                        None,
                    )
                return _current
        logger.info("runtime used before init(): starting a local cluster")
        rt = init(ignore_reinit_error=True)
    return rt


def get(refs: Future | Sequence[Future], *, timeout: float | str | None = None, scheduler: str | None = None) -> Any:
    """The value of one future, or a list of values for a list of futures.

    ``scheduler`` ("sync", "threads" or "processes") picks the local scheduler that runs
    the tasks of local futures for this call, over the ``scheduler`` setting.
    """
    timeout = config.parse_timeout(timeout, "get() timeout")
    if isinstance(refs, Future):
        return get([refs], timeout=timeout, scheduler=scheduler)[0]
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, Future) for r in refs):
        raise TypeError(f"get() takes a Future or a list of Futures, not {_describe(refs)}")
    kind = scheduler_choice(scheduler)
    if not refs:
        return []
    owner = refs[0]._owner
    if all(r._owner is owner for r in refs):
        return owner.get(refs, timeout=timeout, scheduler=kind)
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for r in refs:  # futures of several owners: each from its own
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        out.extend(r._owner.get([r], timeout=remaining, scheduler=kind))
    return out


def put(value: Any) -> Future:
    """Store ``value`` once in the cluster (or, under a local scheduler, in this process)."""
    if config.get("scheduler") != "distributed":
        from runtime.local import local_scheduler

        return local_scheduler().put(value)
    return current_runtime().client.put(value)


def cancel(refs: Future | Sequence[Future], *, force: bool = False, recursive: bool = True) -> None:
    """Stop computing ``refs`` and what depends on them; ``get`` then raises TaskCancelledError.

    As Ray's: a task already running on a worker is interrupted (``TaskInterrupted``, a
    ``KeyboardInterrupt``, raised in it between bytecodes); with ``force`` its worker restarts
    if it has not stopped within 3 s (a task blocked in C).  ``recursive`` (also the tasks they
    submitted) is accepted: tasks a cancelled task submitted run on."""
    futures = [refs] if isinstance(refs, Future) else list(refs)
    if not all(isinstance(r, Future) for r in futures):
        raise TypeError(f"cancel() takes a Future or a list of Futures, not {_describe(refs)}")
    for owner, theirs in by_owner(futures).items():
        owner.cancel(theirs, force=force, interrupt=True)


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        bad = next((r for r in x if not isinstance(r, Future)), None)
        return f"a {type(x).__name__} holding a {type(bad).__name__}"
    return f"a {type(x).__name__}"


atexit.register(shutdown)
