"""``@runtime.remote``: turn a function into one whose calls run as tasks on the cluster."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from runtime import config
from runtime.api.actor import ActorClass
from runtime.api.context import current_runtime
from runtime.api.options import ACTOR_OPTIONS, TASK_OPTIONS, CallCheck, check_options, restrictions
from runtime.client.future import Future
from runtime.comm import serialize


class RemoteFunction:
    """A function that runs on the cluster: ``f.remote(*args)`` returns a ``Future``."""

    def __init__(self, func: Callable, options: dict[str, Any]):
        self._func = func
        self._options = check_options(options)
        self._name = getattr(func, "__name__", "task")
        self._pickled: bytes | None = None
        #: where it may run, as the scheduler reads it; None when anywhere
        self._restrictions = restrictions(self._options)
        # Read once here, not at each .remote() call: the options never change (.options() copies).
        self._retries: int = self._options.get("retries", 0) or self._options.get("max_retries", 0)
        self._priority: int = self._options.get("priority", 0)
        self._num_returns: int = self._options.get("num_returns", 1)
        #: checks every call at .remote()
        self._check_call = CallCheck(func, f"{self._name}.remote()")
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name!r} cannot be called directly; "
            f"use {self._name}.remote(...) to run it as a task"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Future | list[Future]:
        """Run the function as a task; its future (or ``num_returns`` futures, one per item)."""
        global _pick_pickled
        retries, priority, n = self._retries, self._priority, self._num_returns
        self._check_call(args, kwargs)
        kind = config.get("scheduler")
        if kind != "distributed":  # a local scheduler: the task runs in this process
            from runtime.local import local_scheduler  # not at import: it loads the state machine

            local = local_scheduler()
            future = local.submit(self._func, self._name, args, kwargs, retries, priority, kind)
            if n == 1:
                return future
            return [local.submit(_pick, self._name, (future, i, n), {}, 0, priority, kind) for i in range(n)]
        if self._pickled is None:
            self._pickled = serialize.dumps_function(self._func)
        client = current_runtime().client
        future = client.submit(
            self._pickled, self._name, args, kwargs, retries=retries, priority=priority, restrictions=self._restrictions
        )
        if n == 1:
            return future
        # One small task per item picks it out of the result; the whole result is released
        # as soon as the last of them has run.
        if _pick_pickled is None:
            _pick_pickled = serialize.dumps_function(_pick)
        return [client.submit(_pick_pickled, self._name, (future, i, n), {}, priority=priority) for i in range(n)]

    def options(self, **options: Any) -> RemoteFunction:
        """A copy of this remote function with some options changed."""
        return RemoteFunction(self._func, {**self._options, **check_options(options)})

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name} {self._options or ''}>"


_pick_pickled: bytes | None = None


def _pick(result: Any, i: int, n: int) -> Any:
    """Item ``i`` of a task's result, which ``num_returns=n`` says is a sequence of ``n``."""
    try:
        size = len(result)
    except TypeError:
        size = None
    if size != n:
        got = f"a {type(result).__name__} of {size}" if size is not None else f"a {type(result).__name__}"
        raise ValueError(f"the task was declared with num_returns={n} but returned {got}")
    return result[i]


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=1, retries=2)`` on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("use @runtime.remote or @runtime.remote(option=value, ...); options are keyword-only")
    check_options(options, {**TASK_OPTIONS, **ACTOR_OPTIONS})  # fail here, not where it is applied
    return lambda obj: _make(obj, options)


def _make(obj: Any, options: dict[str, Any]) -> RemoteFunction | ActorClass:
    if isinstance(obj, type):
        return ActorClass(obj, options)
    if not callable(obj):
        raise TypeError(f"@runtime.remote needs a function, not {type(obj).__name__}")
    return RemoteFunction(obj, options)
