"""``@runtime.remote``: turn a function into one whose calls run as tasks on the cluster."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from runtime.api.options import check_options
from runtime.client.future import Future
from runtime.comm import serialize


class RemoteFunction:
    """A function that runs on the cluster: ``f.remote(*args)`` returns a ``Future``."""

    def __init__(self, func: Callable, options: dict[str, Any]):
        self._func = func
        self._options = check_options(options)
        self._name = getattr(func, "__name__", "task")
        self._pickled: bytes | None = None
        workers = self._options.get("workers")
        restrictions = {
            "workers": [workers] if isinstance(workers, str) else list(workers or ()),
            "resources": self._options.get("resources"),
            "allow_other_workers": self._options.get("allow_other_workers", False),
        }
        #: where it may run, as the scheduler reads it; None when anywhere
        self._restrictions = {k: v for k, v in restrictions.items() if v} or None
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name!r} cannot be called directly; "
            f"use {self._name}.remote(...) to run it as a task"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Future:
        from runtime.api.context import current_runtime

        if self._pickled is None:
            self._pickled = serialize.dumps_function(self._func)
        opts = self._options
        retries = opts.get("retries", 0) or opts.get("max_retries", 0)
        client = current_runtime().client
        return client.submit(
            self._pickled,
            self._name,
            args,
            kwargs,
            retries=retries,
            priority=opts.get("priority", 0),
            restrictions=self._restrictions,
        )

    def options(self, **options: Any) -> RemoteFunction:
        """A copy of this remote function with some options changed."""
        return RemoteFunction(self._func, {**self._options, **check_options(options)})

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name} {self._options or ''}>"


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=1, retries=2)`` on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("use @runtime.remote or @runtime.remote(option=value, ...); options are keyword-only")
    check_options(options)
    return lambda obj: _make(obj, options)


def _make(obj: Any, options: dict[str, Any]) -> RemoteFunction:
    if isinstance(obj, type):
        raise TypeError(f"@runtime.remote on a class ({obj.__name__}) makes an actor, which is not supported yet")
    if not callable(obj):
        raise TypeError(f"@runtime.remote needs a function, not {type(obj).__name__}")
    return RemoteFunction(obj, options)
