"""Ray's ``ray.util.multiprocessing.Pool``: the standard library's ``multiprocessing.Pool``
API running on the cluster (``from runtime.util.multiprocessing import Pool``).

Each of the pool's ``processes`` is an actor, which runs ``initializer(*initargs)`` once
when it starts (as a pool process does); work goes to them in chunks of ``chunksize``
items, round robin, and results come back in order (``map``, ``imap``) or as they finish
(``imap_unordered``).
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from runtime.api.context import current_runtime, get
from runtime.api.remote import remote
from runtime.client.future import Future
from runtime.client.waiting import wait


class _PoolActor:
    def __init__(self, initializer: Callable | None, initargs: tuple):
        if initializer is not None:
            initializer(*initargs)

    def run_batch(self, func: Callable, batch: list[tuple], star: bool) -> list[Any]:
        return [func(*args) if star else func(args) for args in batch]


class AsyncResult:
    """What ``apply_async``/``map_async`` return (the standard library's ``AsyncResult``)."""

    def __init__(self, futures: list[Future], single: bool, callback: Callable | None, error_callback: Callable | None):
        self._futures = futures
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._called = False

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list for ``map_async``); raises the call's exception; ``TimeoutError``."""
        try:
            batches = get(self._futures, timeout=timeout)
        except TimeoutError:
            raise multiprocessing.TimeoutError(f"no result within {timeout}s") from None
        except Exception as e:
            self._call(self._error_callback, e)
            raise
        value = batches[0][0] if self._single else [x for batch in batches for x in batch]
        self._call(self._callback, value)
        return value

    def wait(self, timeout: float | None = None) -> None:
        wait(self._futures, num_returns=len(self._futures), timeout=timeout)

    def ready(self) -> bool:
        return all(f.done() for f in self._futures)

    def successful(self) -> bool:
        """Whether it finished without an exception; ``ValueError`` if it is not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return all(f.status == "finished" for f in self._futures)

    def _call(self, fn: Callable | None, arg: Any) -> None:
        if fn is not None and not self._called:
            self._called = True
            fn(arg)


class Pool:
    def __init__(
        self, processes: int | None = None, initializer: Callable | None = None, initargs: Iterable = (),
        maxtasksperchild: int | None = None, context: Any = None, ray_address: str | None = None,
        ray_remote_args: dict | None = None,
    ):  # fmt: skip
        """``processes`` actors (default: one per worker thread of the cluster).  ``maxtasksperchild``
        and ``context`` are accepted (actors live as long as the pool); ``ray_remote_args`` are
        the actors' options (``num_cpus``, ``resources``...)."""
        if processes is None:
            processes = max(1, int(current_runtime().client.request("cluster-resources")["total"].get("CPU", 1)))
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"Pool processes must be a whole number >= 1, not {processes!r}")
        actor_class = remote(**(ray_remote_args or {}))(_PoolActor) if ray_remote_args else remote(_PoolActor)
        self._actors = [actor_class.remote(initializer, tuple(initargs)) for _ in range(processes)]
        self._next = itertools.cycle(range(processes))
        self._closed = False

    # -- one call ------------------------------------------------------------------------

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self, func: Callable, args: tuple = (), kwds: dict | None = None,
        callback: Callable | None = None, error_callback: Callable | None = None,
    ) -> AsyncResult:  # fmt: skip
        call = (lambda *a: func(*a, **kwds)) if kwds else func
        return AsyncResult([self._submit(call, [tuple(args)], True)], True, callback, error_callback)

    # -- many calls ----------------------------------------------------------------------

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list[Any]:
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self, func: Callable, iterable: Iterable, chunksize: int | None = None,
        callback: Callable | None = None, error_callback: Callable | None = None,
    ) -> AsyncResult:  # fmt: skip
        return AsyncResult(self._chunks(func, iterable, chunksize, False), False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None) -> list[Any]:
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
        callback: Callable | None = None, error_callback: Callable | None = None,
    ) -> AsyncResult:  # fmt: skip
        return AsyncResult(self._chunks(func, iterable, chunksize, True), False, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator[Any]:
        """Results in order, each as soon as it (and those before it) are done."""
        for future in self._chunks(func, iterable, chunksize, False):
            yield from get(future)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator[Any]:
        """Results as they finish."""
        pending = self._chunks(func, iterable, chunksize, False)
        while pending:
            ready, pending = wait(pending, num_returns=1)
            yield from get(ready[0])

    # -- the pool's life -------------------------------------------------------------------

    def close(self) -> None:
        """No more work may be submitted."""
        self._closed = True

    def terminate(self) -> None:
        """Stop the pool's actors now."""
        from runtime.api.actor import kill

        self._closed = True
        for actor in self._actors:
            kill(actor)
        self._actors = []

    def join(self) -> None:
        """After ``close``: return once work submitted has finished (each actor answers in order)."""
        if not self._closed:
            raise ValueError("Pool is still running; call close() before join()")
        for actor in self._actors:
            get(actor.run_batch.remote(len, [], False))

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def _submit(self, func: Callable, batch: list[tuple], star: bool) -> Future:
        if self._closed:
            raise ValueError("Pool not running")
        return self._actors[next(self._next)].run_batch.remote(func, batch, star)

    def _chunks(self, func: Callable, iterable: Iterable, chunksize: int | None, star: bool) -> list[Future]:
        items = [tuple(x) if star else x for x in iterable]
        if chunksize is None:  # as the standard library's: about four chunks per process
            chunksize = max(1, -(-len(items) // (len(self._actors) * 4)))
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
        return [self._submit(func, items[i : i + chunksize], star) for i in range(0, len(items), chunksize)]
