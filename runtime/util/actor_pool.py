"""Ray's ``ActorPool``: spread calls over a fixed set of actors, one call per actor at a time.

``fn(actor, value)`` makes a call and returns its future; a value waits until an actor is
idle.  Results come back in the order submitted (``map``, ``get_next``) or as they finish
(``map_unordered``, ``get_next_unordered``), as in Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from runtime.api.context import get
from runtime.client.future import Future
from runtime.client.waiting import wait

Call = Callable[[Any, Any], Any]


class ActorPool:
    def __init__(self, actors: Iterable[Any]):
        #: actors with no call in flight
        self._idle: list[Any] = list(actors)
        #: call in flight (its future, or a tuple of futures) -> (its index, the actor running it)
        self._running: dict[Any, tuple[int, Any]] = {}
        #: index -> the call's future(s), until its result is taken
        self._by_index: dict[int, Any] = {}
        self._next_index = 0
        #: the index whose result get_next gives next
        self._next_return = 0
        #: (fn, value) waiting for an idle actor
        self._waiting: list[tuple[Call, Any]] = []

    def map(self, fn: Call, values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(actor, v)`` for each value, in order (earlier unread results are dropped)."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Call, values: Iterable[Any]) -> Iterator[Any]:
        """As ``map``, results as they finish."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn: Call, values: Iterable[Any], next_result: Callable[[], Any]) -> Iterator[Any]:
        self._drop_unread()
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield next_result()

        return results()

    def submit(self, fn: Call, value: Any) -> None:
        """Call ``fn(actor, value)`` on an idle actor, or once one is idle."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        if not isinstance(future, (Future, list)):
            raise TypeError(f"ActorPool: fn must return its call's future (actor.method.remote()), not {future!r:.60}")
        self._running[_hashable(future)] = (self._next_index, actor)
        self._by_index[self._next_index] = future
        self._next_index += 1

    def has_next(self) -> bool:
        """Whether a result is still to be read."""
        return bool(self._running)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order; ``TimeoutError`` if it is not done within ``timeout``
        (with ``ignore_if_timedout`` that call is given up, its actor freed)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index:
            raise ValueError("get_next() cannot follow get_next_unordered() in one pool")
        future = self._by_index[self._next_return]
        calls = _as_list(future)
        timed_out = timeout is not None and len(wait(calls, num_returns=len(calls), timeout=timeout)[0]) < len(calls)
        if timed_out and not ignore_if_timedout:
            raise TimeoutError(f"ActorPool.get_next(): no result within {timeout}s")
        del self._by_index[self._next_return]
        self._next_return += 1
        _, actor = self._running.pop(_hashable(future))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"ActorPool.get_next(): no result within {timeout}s; the call {future} is ignored")
        return get(future)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of whichever call finishes first; ``TimeoutError`` if none does within ``timeout``."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = wait([_first(f) for f in self._running], num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"ActorPool.get_next_unordered(): no result within {timeout}s")
        key = next(f for f in self._running if _first(f) == ready[0])
        index, actor = self._running.pop(key)
        future = self._by_index.pop(index)
        self._next_return = max(self._next_return, index + 1)
        self._return_actor(actor)
        return get(future)

    def has_free(self) -> bool:
        """Whether an actor is idle (and no value waits for one)."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool; None if there is none."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool; ValueError if it is in it already."""
        if actor in self._idle or any(a == actor for _, a in self._running.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.pop(0))

    def _drop_unread(self) -> None:
        """``map`` starts afresh: results not read yet are dropped, their actors freed."""
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass


def _hashable(future: Any) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _as_list(future: Any) -> list[Future]:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _first(key: Any) -> Future:
    return key[0] if isinstance(key, tuple) else key
