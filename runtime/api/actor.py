"""``@runtime.remote`` on a class: actors, their handles and their methods.

``Cls.remote(*args)`` registers the actor with the scheduler, which runs its creation task
on a worker (restrictions and resources apply as for tasks) and returns an ``ActorHandle``
at once.  ``handle.method.remote(*args)`` returns a ``Future``; calls go straight to the
actor's worker (see runtime/client/actor_calls.py).  Handles pickle, so they can be passed
to tasks and to other actors, which then call the same actor.  A non-detached actor ends when
no handle to it is left in any process (runtime/client/handle_refs.py).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

from runtime.api.context import current_runtime, is_initialized
from runtime.api.options import ACTOR_OPTIONS, CallCheck, check_options, restrictions
from runtime.client import handle_refs
from runtime.client.client import ClusterClient, task_spec
from runtime.client.future import Future
from runtime.comm import serialize
from runtime.worker.actors import create_actor, current_worker

_create_actor_pickled: bytes | None = None


def new_actor_id(cls: type) -> str:
    return f"actor-{cls.__name__}-{os.urandom(6).hex()}"


def register_actor(
    client: ClusterClient, cls: type, actor_id: str, args: tuple, kwargs: dict, opts: dict, handle: ActorHandle, *,
    name: str = "", max_restarts: int = 0, detached: bool = False, handle_key: str = "", hold: bool = False,
) -> dict:  # fmt: skip
    """Ask the scheduler to start an actor of ``cls``: its creation task (placed as a task with
    ``opts`` would be) builds the instance on a worker.  The scheduler's reply (``error`` if
    refused).  ``hold``: ``client`` wants the creation task (keyed ``actor_id``) from the start."""
    global _create_actor_pickled
    if _create_actor_pickled is None:
        _create_actor_pickled = serialize.dumps_function(create_actor)
    cls_name = cls.__name__
    args_bytes, deps = serialize.dumps_args(cls_name, (cls, actor_id, opts.get("max_concurrency"), args, kwargs), {})
    task = task_spec(actor_id, _create_actor_pickled, args_bytes, deps, 0, f"actor-{cls_name}", restrictions(opts))
    reply = client.request(
        "register-actor", actor=actor_id, name=name, class_name=cls_name, methods=_class_info(cls)[0],
        max_restarts=max_restarts, detached=detached, task=task, handle=serialize.dumps(handle),
        handle_key=handle_key, handle_value=handle_refs.HANDLE_VALUE, hold=hold,
    )  # fmt: skip
    del deps  # the scheduler holds the creation task's arguments now (or refused them)
    return reply


def _methods(cls: type) -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(cls, callable) if not name.startswith("__"))


#: the attribute ``runtime.method`` sets on an actor method: its options
_METHOD_OPTIONS = "__runtime_method_options__"


def method(*, num_returns: int = 1) -> Callable[[Callable], Callable]:
    """``@runtime.method(num_returns=2)`` on an actor method: each call returns that many
    futures, one per item of what it returns (as Ray's ``ray.method``)."""
    check_options({"num_returns": num_returns})

    def mark(func: Callable) -> Callable:
        setattr(func, _METHOD_OPTIONS, {"num_returns": num_returns})
        return func

    return mark


def _method_options(cls: type) -> dict[str, dict[str, Any]]:
    """The options ``runtime.method`` gave the methods of ``cls``, by method name."""
    out = {}
    for name in _methods(cls):
        options = getattr(inspect.getattr_static(cls, name), _METHOD_OPTIONS, None)
        if options is None:
            options = getattr(getattr(cls, name), _METHOD_OPTIONS, None)
        if options:
            out[name] = options
    return out


def _method_check(cls: type, name: str) -> CallCheck:
    """What a call of method ``name`` is checked against (its signature without ``self``)."""
    raw = inspect.getattr_static(cls, name, None)
    what = f"{cls.__name__}.{name}.remote()"
    if isinstance(raw, (staticmethod, classmethod)):
        return CallCheck(getattr(cls, name), what)
    return CallCheck(raw, what, drop_first=True)


class ActorClass:
    """A class whose instances live on the cluster: ``Cls.remote(*args)`` starts one."""

    def __init__(self, cls: type, options: dict[str, Any]):
        self._cls = cls
        self._options = check_options(options, ACTOR_OPTIONS)
        self._check_call = CallCheck(cls, f"{cls.__name__}.remote()")
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
        opts = self._options
        self._check_call(args, kwargs)
        if opts.get("get_if_exists"):  # Ray's: the live actor of that name, if there is one
            if not opts.get("name"):
                raise ValueError("get_if_exists=True needs a name: .options(name=..., get_if_exists=True)")
            existing = _named_actor(opts["name"])
            if existing is not None:
                return existing
        actor_id = new_actor_id(self._cls)
        detached = opts.get("lifetime") == "detached"
        ref_key = "" if detached else handle_refs.handle_key(actor_id)
        handle = ActorHandle(actor_id, self._cls, opts.get("max_task_retries", 0), ref_key)
        client = current_runtime().client
        reply = register_actor(
            client, self._cls, actor_id, args, kwargs, opts, handle, name=opts.get("name") or "",
            max_restarts=opts.get("max_restarts", 0), detached=detached, handle_key=ref_key,
        )  # fmt: skip
        if "error" in reply:
            if opts.get("get_if_exists") and (existing := _named_actor(opts["name"])) is not None:
                return existing  # another process made it between our look and our register
            raise ValueError(reply["error"])
        if ref_key:  # the scheduler counts this process as holding a handle from now on
            handle._ref = handle_refs.adopt(client, ref_key)
        return handle

    def __repr__(self) -> str:
        return f"<ActorClass {self._cls.__name__} {self._options or ''}>"


@functools.lru_cache(maxsize=256)
def _class_info(cls: type) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, CallCheck]]:
    """What every handle of an actor of ``cls`` knows: its method names, the options
    ``runtime.method`` gave them (num_returns), and what each one's calls are checked against."""
    methods = _methods(cls)
    return methods, _method_options(cls), {name: _method_check(cls, name) for name in methods}


class ActorHandle:
    """A reference to a running actor; ``handle.method.remote(...)`` calls it.

    Every handle, however it was obtained (``Cls.remote()``, passed to a task or an actor,
    ``get_actor``), carries the actor's class, so its calls are checked against the methods'
    signatures and know their ``num_returns``, and the actor's ``max_task_retries``.  A
    non-detached actor's handle holds a future of its handle key (``_ref``): the actor lives
    while such futures do, in any process.
    """

    def __init__(self, actor_id: str, cls: type, max_task_retries: int = 0, ref_key: str = ""):
        self._actor_id = actor_id
        #: the actor's handle key ("" for a detached actor: it lives until killed)
        self._ref_key = ref_key
        #: this process's future of the handle key, which keeps the actor alive (None: uncounted)
        self._ref: Future | None = None
        self._cls = cls
        self._class_name = cls.__name__
        #: how many times a call is sent again if the actor's worker dies while running it (-1: always)
        self._max_task_retries = max_task_retries
        self._methods, self._method_options, self._checks = _class_info(cls)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") or name not in self._methods:
            raise AttributeError(f"actor {self._class_name!r} has no method {name!r}")
        return ActorMethod(self, name, self._method_options.get(name, {}).get("num_returns", 1))

    def __reduce__(self) -> tuple:
        if self._ref is not None:  # the key stays wanted while the pickled handle travels
            serialize.note_ref(self._ref)
        return _rebuild_handle, (self._actor_id, self._cls, self._max_task_retries, self._ref_key)

    def __repr__(self) -> str:
        return f"<ActorHandle {self._class_name} {self._actor_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: str, cls: type, max_task_retries: int, ref_key: str) -> ActorHandle:
    """An unpickled handle: counted as this process's, where a runtime is (a driver, a worker)."""
    handle = ActorHandle(actor_id, cls, max_task_retries, ref_key)
    if ref_key and (is_initialized() or current_worker() is not None):
        handle._ref = handle_refs.borrow(current_runtime().client, ref_key)
    return handle


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int = 1):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def options(self, *, num_returns: int | None = None, name: str | None = None) -> ActorMethod:
        """This method with calls returning ``num_returns`` futures (Ray's ``.options``);
        ``name`` (Ray's name of the call for its dashboard) is accepted and not used."""
        check_options({k: v for k, v in {"num_returns": num_returns, "name": name}.items() if v is not None})
        return ActorMethod(self._handle, self._name, self._num_returns if num_returns is None else num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Future | list[Future]:
        handle = self._handle
        check = handle._checks.get(self._name)
        if check is not None:
            check(args, kwargs)
        retries = handle._max_task_retries
        futures = current_runtime().client.actor_calls.call(
            handle._actor_id, self._name, args, kwargs, self._num_returns, 1 << 30 if retries < 0 else retries,
            keep=handle._ref,  # the actor lives until the call is answered
        )  # fmt: skip
        return futures[0] if self._num_returns == 1 else futures

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._handle._class_name}.{self._name} cannot be called directly; "
            f"use .{self._name}.remote(...)"
        )


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The live actor started with ``options(name=name)``; ``ValueError`` if there is none.
    ``namespace`` (Ray's) is accepted: names are cluster-wide here."""
    if not isinstance(name, str) or not name:  # a ValueError, as Ray's
        raise ValueError(f"get_actor() takes an actor name (a non-empty str), not {name!r}")
    client = current_runtime().client
    reply = client.request("get-actor", name=name)
    if "error" in reply:
        raise ValueError(reply["error"])
    given = handle_refs.adopt(client, reply["handle_key"]) if reply.get("handle_key") else None
    handle = serialize.loads(reply["handle"])  # shares ``given``: the key the scheduler gave us
    del given
    return handle


def _named_actor(name: str) -> ActorHandle | None:
    """The live actor named ``name``, or None."""
    reply = current_runtime().client.request("get-actor", name=name)
    return None if "error" in reply else serialize.loads(reply["handle"])


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop ``actor`` now; its pending and later calls fail with ``ActorDiedError``.

    With ``no_restart=False`` an actor that has restarts left is started afresh instead.
    """
    if not isinstance(actor, ActorHandle):  # a ValueError, as Ray's
        raise ValueError(
            f"kill() takes an actor handle, not a {type(actor).__name__}; to stop a task, use runtime.cancel()"
        )
    client = current_runtime().client
    reply = client.request("kill-actor", actor=actor._actor_id, no_restart=no_restart)
    if "error" in reply:
        raise ValueError(reply["error"])
    client.actor_calls.relocate(actor._actor_id)
