"""Dask's actors: ``client.submit(Counter, actor=True)`` gives a future whose result is an
``Actor``, a proxy of the instance living on a worker.

::

    counter = client.submit(Counter, actor=True).result()
    counter.increment()          # a method call: a Future at once (Dask's ActorFuture)
    counter.increment().result()
    counter.n                    # an attribute: read from the worker, its value now

They are this runtime's actors (``runtime/worker/actors.py``) seen through Dask's proxy:
calls go straight to the actor's worker, in order, and the proxy pickles, so tasks can
call the same actor.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from runtime.api.actor import ActorHandle, _class_info, new_actor_id, register_actor
from runtime.client.client import ClusterClient, task_spec
from runtime.client.future import Future
from runtime.client.graph import _Ref
from runtime.comm import serialize
from runtime.worker.actors import GETATTR

if TYPE_CHECKING:
    from runtime.client.futures_client import Client

#: the client each actor made in this process was made through (its proxies call through it)
_made_here: weakref.WeakValueDictionary[str, ClusterClient] = weakref.WeakValueDictionary()


def submit_actor(client: Client, cls: Any, args: tuple, kwargs: dict, key: str | None, options: dict) -> Future:
    """Start an actor of ``cls`` on a worker (placed as a task with ``options`` would be); a
    future holding its ``Actor`` proxy."""
    if not isinstance(cls, type):
        raise TypeError(f"submit(..., actor=True) needs a class, not a {type(cls).__name__}")
    core = client.core
    name = cls.__name__
    actor_id = new_actor_id(cls)
    # Held for us from the start: a constructor that fails at once must not take its task
    # (and error) away before the proxy task below, which depends on it, reaches the scheduler.
    reply = register_actor(core, cls, actor_id, args, kwargs, options, ActorHandle(actor_id, cls), hold=True)
    if "error" in reply:
        raise ValueError(reply["error"])
    with core.futures.lock:
        creation = core.futures.future(actor_id)  # ours until the proxy task holds it
    _made_here[actor_id] = core
    # The future is a task that depends on the creation task: done once the actor is built,
    # erred with the constructor's exception if that raised (as Dask's actor future).
    args_bytes, deps = serialize.dumps_args(name, (_Ref(actor_id), cls, actor_id), {})
    key = key or f"{name}-{actor_id.rsplit('-', 1)[-1]}"
    proxy_task = task_spec(key, serialize.dumps_function(_proxy), args_bytes, deps, 0, name, None)
    proxy = core.update_graph([proxy_task], [key])[0]
    del creation  # its release leaves after the proxy task, on the same connection
    return proxy


def _proxy(created: None, cls: type, actor_id: str) -> Actor:
    """On a worker, once the actor's creation task has run: the actor's proxy."""
    return Actor(cls, actor_id)


class Actor:
    """A Dask actor's proxy: methods return futures, attributes are read at once."""

    def __init__(self, cls: type, actor_id: str):
        self._cls = cls
        self._actor_id = actor_id
        self._methods = set(_class_info(cls)[0])

    @property
    def _core(self) -> ClusterClient:
        core = _made_here.get(self._actor_id)
        if core is None or core._closed:
            from runtime.client.coordination import cluster_client

            core = cluster_client()  # in a task: its worker's; in a driver: the default Client's
        return core

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._methods:
            return _Method(self, name)
        # An attribute of the instance: its value now, from the worker (as Dask's).
        return self._core.actor_calls.call(self._actor_id, GETATTR, (name,), {})[0].result()

    def __reduce__(self) -> tuple:
        return Actor, (self._cls, self._actor_id)

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self._actor_id}>"


class _Method:
    def __init__(self, actor: Actor, name: str):
        self._actor = actor
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Future:
        actor = self._actor
        return actor._core.actor_calls.call(actor._actor_id, self._name, args, kwargs)[0]

    def __repr__(self) -> str:
        return f"<ActorMethod {self._actor._cls.__name__}.{self._name}>"
