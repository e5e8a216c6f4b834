"""``@runtime.remote`` on a class: actors, their handles and their methods.

``Cls.remote(*args)`` registers the actor with the scheduler, which runs its creation task
on a worker (restrictions and resources apply as for tasks) and returns an ``ActorHandle``
at once.  ``handle.method.remote(*args)`` returns a ``Future``; calls go straight to the
actor's worker (see runtime/client/actor_calls.py).  Handles pickle, so they can be passed
to tasks and to other actors, which then call the same actor.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from runtime.api.context import current_runtime
from runtime.api.options import ACTOR_OPTIONS, check_options, restrictions
from runtime.client.client import task_spec
from runtime.client.future import Future
from runtime.comm import serialize
from runtime.worker.actors import create_actor

_create_actor_pickled: bytes | None = None


def _methods(cls: type) -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("__"))


class ActorClass:
    """A class whose instances live on the cluster: ``Cls.remote(*args)`` starts one."""

    def __init__(self, cls: type, options: dict[str, Any]):
        self._cls = cls
        self._options = check_options(options, ACTOR_OPTIONS)
        self._methods = _methods(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._cls.__name__
        raise TypeError(f"actor class {name!r} cannot be instantiated directly; use {name}.remote(...) to start one")

    def options(self, **options: Any) -> ActorClass:
        """A copy of this actor class with some options changed (``name``, ``max_concurrency``, ...)."""
        return ActorClass(self._cls, {**self._options, **check_options(options, ACTOR_OPTIONS)})

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        global _create_actor_pickled
        if _create_actor_pickled is None:
            _create_actor_pickled = serialize.dumps_function(create_actor)
        opts = self._options
        name = self._cls.__name__
        actor_id = f"actor-{name}-{os.urandom(6).hex()}"
        args_bytes, deps = serialize.dumps_args(
            name, (self._cls, actor_id, opts.get("max_concurrency"), args, kwargs), {}
        )
        task = task_spec(actor_id, _create_actor_pickled, args_bytes, deps, 0, f"actor-{name}", restrictions(opts))
        reply = current_runtime().client.request(
            "register-actor", actor=actor_id, name=opts.get("name") or "", class_name=name, methods=self._methods,
            max_restarts=opts.get("max_restarts", 0), detached=opts.get("lifetime") == "detached", task=task,
        )  # fmt: skip
        if "error" in reply:
            raise ValueError(reply["error"])
        del deps  # the scheduler holds the creation task's arguments now
        return ActorHandle(actor_id, name, self._methods)

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__name__} {self._options or ''}>"


class ActorHandle:
    """A reference to a running actor; ``handle.method.remote(...)`` calls it."""

    def __init__(self, actor_id: str, class_name: str, methods: list[str]):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") or name not in self._methods:
            raise AttributeError(f"actor {self._class_name!r} has no method {name!r}")
        return ActorMethod(self, name)

    def __reduce__(self) -> tuple:
        return ActorHandle, (self._actor_id, self._class_name, self._methods)

    def __repr__(self) -> str:
        return f"<ActorHandle {self._class_name} {self._actor_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str):
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> Future:
        return current_runtime().client.actor_calls.call(self._handle._actor_id, self._name, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._handle._class_name}.{self._name} cannot be called directly; "
            f"use .{self._name}.remote(...)"
        )


def get_actor(name: str) -> ActorHandle:
    """The live actor started with ``options(name=name)``; ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_actor() takes an actor name (a non-empty str), not {name!r}")
    reply = current_runtime().client.request("get-actor", name=name)
    if "error" in reply:
        raise ValueError(reply["error"])
    return ActorHandle(reply["actor"], reply["class_name"], reply["methods"])


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop ``actor`` now; its pending and later calls fail with ``ActorDiedError``.

    With ``no_restart=False`` an actor that has restarts left is started afresh instead.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, not a {type(actor).__name__}")
    client = current_runtime().client
    reply = client.request("kill-actor", actor=actor._actor_id, no_restart=no_restart)
    if "error" in reply:
        raise ValueError(reply["error"])
    client.actor_calls.relocate(actor._actor_id)
