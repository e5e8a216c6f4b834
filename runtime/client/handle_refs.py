"""How long a non-detached actor lives: while a handle to it exists somewhere (Ray's rule).

Each such actor has a *handle key* (``handles-<actor id>``), a tiny value the scheduler keeps
in memory like a ``put``.  Every process holding handles of the actor holds one ``Future``
of that key in its client's table, shared by its handles (``ActorHandle._ref``), so the
machinery that frees futures' values counts the actor's handles too::

    Cls.remote() ── register-actor ──► the scheduler puts the key, wanted by the creator
    get_actor(name) ─────────────────► ... and by the asker, before it answers
    handle pickled in task arguments ► the key is a dependency of the task: kept until it is done
                   in a value ───────► the value holds the key (runtime/scheduler/borrowed.py)
                   in an actor call ─► the call carries the key's future until it is answered
    handle unpickled ── borrow-refs ─► the reader wants the key, before the unpickling returns
    a call in flight ────────────────► keeps its handle's future (so the actor ends after it)
    the last handle of a process is collected ── release-keys (batched) ──► the key is
    released; once nothing needs it, the state machine drops its value and the scheduler
    ends the actor (runtime/scheduler/actor_lifetime.py)

A detached actor has no handle key: it lives until killed.
"""

from __future__ import annotations

import logging
import pickle
import threading
from typing import TYPE_CHECKING, Any

from runtime.client.future import FINISHED, Future

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient

#: the prefix of handle keys
HANDLE_KEY_PREFIX = "handles-"
#: the value every handle key stands for (its wire form: an inline pickle of None)
HANDLE_VALUE = pickle.dumps(None, protocol=5)

logger = logging.getLogger("runtime.client")


def handle_key(actor_id: str) -> str:
    return HANDLE_KEY_PREFIX + actor_id


def adopt(client: ClusterClient, key: str) -> Future:
    """A future of the handle key ``key``, which the scheduler already counts ``client`` as
    holding (it registered the actor, or gave it the key with ``get_actor``'s answer or a
    queue's item): unpickling the handle then needs no round trip, and dropping the future
    lets go of what was given."""
    with client.futures.lock:
        future = client.futures.future(key)
        fs = future._state
        if fs.status != FINISHED:
            fs.status, fs.value, fs.nbytes = FINISHED, HANDLE_VALUE, len(HANDLE_VALUE)
    return future


def borrow(client: ClusterClient, key: str) -> Future:
    """A future of the handle key ``key`` for a handle just unpickled here.  Unless this
    process holds one already, the scheduler is told before this returns, so whatever kept
    the key while the handle travelled (a task's dependency, a call in flight) may let go.
    A handle whose actor has ended meanwhile gets a future the scheduler no longer needs;
    its calls fail with ActorDiedError, as they would through any handle of that actor."""
    with client.futures.lock:
        known = key in client.futures.states
        future = adopt(client, key)
    if known:
        return future
    if threading.current_thread() is client._thread:  # the client's own loop: it cannot wait
        client._loop.create_task(client._ask("borrow-refs", keys=[key]))
        return future
    try:
        client.request("borrow-refs", keys=[key])
    except (ConnectionError, TimeoutError) as e:  # the handle still works while the actor lives
        logger.warning("could not tell the scheduler this process holds a handle (%s): %s", key, e)
    return future


def ref_of(value: Any) -> Future | None:
    """The handle-key future of ``value`` if it is a counted actor's handle, else None."""
    from runtime.api.actor import ActorHandle  # the API layer sits above this one

    return value._ref if isinstance(value, ActorHandle) else None
