"""Tasks that use the cluster: ``get_client``, ``worker_client``, ``secede``, ``rejoin`` (Dask's).

Inside a task or an actor, ``get_client()`` is a ``runtime.Client`` of the cluster the worker
belongs to, on the one connection its process opens on first use (the same one ``runtime.get``
and ``.remote()`` use there).  A task that waits on what it submitted gives its worker's
thread back meanwhile, so a fan-out deeper than the cluster's threads never deadlocks:
implicitly in every wait (``runtime.get``, ``Future.result``, ``Client.gather``, ``wait``),
or for a whole block with ``worker_client()``, or by hand with ``secede()``/``rejoin()``
(``runtime/worker/secession.py``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

from runtime.client.client import ClusterClient
from runtime.client.futures_client import Client
from runtime.worker.actors import current_worker, get_worker
from runtime.worker.secession import rejoin, secede, thread_state, waiting_in_task

__all__ = ["get_client", "worker_client", "secede", "rejoin"]

#: the Client get_client() gave on each connection, while it is open
_clients: weakref.WeakKeyDictionary[ClusterClient, Client] = weakref.WeakKeyDictionary()


def get_client(timeout: float | None = None) -> Client:
    """A ``Client`` of this cluster: inside a task or an actor, of the cluster its worker
    belongs to; in a driver, on the connection ``runtime.init()`` made.

    ``timeout`` (seconds) bounds the first connection of a worker process.  Every call in one
    process gives the same Client while it is open; closing it leaves the connection open.
    """
    from runtime.api import context

    _check_timeout(timeout)
    if current_worker() is None and not context.is_initialized():
        raise ValueError(
            "get_client() found no cluster: call it inside a task or an actor, or after runtime.init(); "
            "or connect with runtime.Client(address)"
        )
    core = context.current_runtime(timeout).client
    client = _clients.get(core)
    if client is None or client._closed:
        client = _clients[core] = Client._sharing(core)
    return client


@contextlib.contextmanager
def worker_client(timeout: float | None = None, separate_thread: bool = True) -> Iterator[Client]:
    """``with worker_client() as client:`` inside a task: a ``Client`` of the cluster, with the
    task seceded from its worker's threads for the whole block (``separate_thread``), so what
    it submits and waits for can run on its worker meanwhile; it rejoins as the block ends.

    ValueError outside a worker process.
    """
    get_worker()  # a clear error outside a worker
    client = get_client(timeout)
    if not separate_thread or thread_state.worker is None:
        yield client
        return
    with waiting_in_task():
        yield client


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
