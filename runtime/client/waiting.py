"""Waiting on many futures: ``wait`` (Dask's and Ray's in one) and ``as_completed``.

Both rest on two primitives of the client core: ``Client.wait`` (block on its condition
until enough futures are done) and ``Future.add_done_callback`` (called on the client's
callback thread).  ``as_completed`` turns the callbacks into a queue that iteration drains,
so it yields futures in the order they finish, whatever order they were given in.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from runtime.client.future import ERRED, Future
from runtime.errors import GetTimeoutError
from runtime.local import owner_of

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


class DoneAndNotDone(NamedTuple):
    """What ``wait`` returns; unpacks as ``done, not_done`` (Ray's ``ready, not_ready``)."""

    done: list[Future]
    not_done: list[Future]


def check_futures(fs: Any, what: str) -> list[Future]:
    """``fs`` as a list of futures, or a TypeError naming what ``what`` got instead."""
    if isinstance(fs, Future):
        return [fs]
    if isinstance(fs, (str, bytes, dict)) or not isinstance(fs, Iterable):
        raise TypeError(f"{what} takes a Future or a list of Futures, not a {type(fs).__name__}")
    futures = list(fs)
    bad = next((f for f in futures if not isinstance(f, Future)), None)
    if bad is not None:
        raise TypeError(f"{what} takes a list of Futures; it got a {type(bad).__name__}: {bad!r:.60}")
    return futures


def check_workers(workers: Any, what: str) -> list[str]:
    """``workers`` as a list of worker addresses, or a TypeError naming what ``what`` got."""
    if isinstance(workers, str):
        return [workers]
    if not isinstance(workers, (list, tuple, set)) or not all(isinstance(w, str) for w in workers):
        raise TypeError(f"{what} workers must be a worker address or a list of them, not {workers!r:.80}")
    return list(workers)


def wait(
    fs: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED, *, num_returns: int | None = None,
    scheduler: str | None = None,
) -> DoneAndNotDone:  # fmt: skip
    """Wait for futures, as Dask's ``wait`` (``return_when``) or Ray's (``num_returns``).

    ``return_when`` is ``ALL_COMPLETED`` (the default), ``FIRST_COMPLETED`` or
    ``FIRST_EXCEPTION``; ``num_returns=k`` instead returns once ``k`` are done, with at most
    ``k`` in ``done`` (Ray's contract).  Dask's ``wait`` raises ``TimeoutError`` when
    ``timeout`` passes first; with ``num_returns`` it returns what is done (as Ray's).
    Both parts are lists, in the order given.  Futures of a local scheduler run their tasks
    here (``scheduler`` picks which, as for ``get``); there FIRST_EXCEPTION waits for all.
    """
    futures = check_futures(fs, "wait()")
    if len(set(futures)) != len(futures):
        raise ValueError("wait() got the same future twice")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"wait() timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    if not futures:
        return DoneAndNotDone([], [])
    if return_when not in RETURN_WHEN:
        raise ValueError(f"wait() return_when must be one of {', '.join(RETURN_WHEN)}, not {return_when!r}")
    owner, kind = owner_of(futures, scheduler, "wait")
    if owner is not None:
        k = num_returns if num_returns is not None else 1 if return_when == FIRST_COMPLETED else len(futures)
        done, pending = owner.wait(futures, num_returns=k, timeout=timeout, scheduler=kind)
        if num_returns is None and len(done) < k:
            raise GetTimeoutError(f"wait() timed out after {timeout:g}s with {len(pending)} of {len(futures)} not done")
        return DoneAndNotDone(done, pending)
    client = futures[0]._client
    client.check_open(futures)
    if num_returns is not None:
        done, pending = client.wait(futures, num_returns=num_returns, timeout=timeout)
        return DoneAndNotDone(done, pending)

    def ready() -> bool:
        if return_when == ALL_COMPLETED:
            return all(f.done() for f in futures)
        if return_when == FIRST_COMPLETED:
            return any(f.done() for f in futures)
        return all(f.done() for f in futures) or any(f._state.status == ERRED for f in futures)

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        client._wait_for(ready, deadline, futures)
    except GetTimeoutError as e:
        pending = sum(not f.done() for f in futures)
        raise GetTimeoutError(f"wait() timed out after {timeout:g}s with {pending} of {len(futures)} not done") from e
    return DoneAndNotDone([f for f in futures if f.done()], [f for f in futures if not f.done()])


class as_completed:  # noqa: N801 - named as in Dask and concurrent.futures
    """Iterate over futures in the order they finish; more can be ``add``-ed while iterating.

    ``with_results=True`` yields ``(future, result)`` pairs (raising a task's exception
    unless ``raise_errors=False``, which yields the exception as the result); ``batches()``
    yields lists of whatever has finished since the last one.  ``timeout`` bounds each wait
    for the next future.
    """

    def __init__(
        self,
        futures: Iterable[Future] | None = None,
        with_results: bool = False,
        raise_errors: bool = True,
        timeout: float | None = None,
    ):
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = timeout
        self._cond = threading.Condition()
        #: finished futures not yet handed out
        self._queue: deque[Future] = deque()
        #: futures added and not yet handed out (finished or not)
        self._pending = 0
        if futures is not None:
            self.update(futures)

    def add(self, future: Future) -> None:
        """Also yield ``future`` once it is done."""
        if not isinstance(future, Future):
            raise TypeError(f"as_completed.add() takes a Future, not a {type(future).__name__}")
        with self._cond:
            self._pending += 1
        future.add_done_callback(self._on_done)

    def update(self, futures: Iterable[Future]) -> None:
        for f in check_futures(futures, "as_completed()"):
            self.add(f)

    def _on_done(self, future: Future) -> None:
        with self._cond:
            self._queue.append(future)
            self._cond.notify_all()

    def count(self) -> int:
        """Futures added and not yet yielded."""
        with self._cond:
            return self._pending

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        with self._cond:
            return bool(self._queue)

    def _next_batch(self, whole: bool) -> list[Future]:
        with self._cond:
            if not self._pending:
                raise StopIteration
            if not self._cond.wait_for(lambda: self._queue, self.timeout):
                raise GetTimeoutError(f"as_completed: none of {self._pending} futures finished in {self.timeout:g}s")
            taken = list(self._queue) if whole else [self._queue[0]]
            for _ in taken:
                self._queue.popleft()
            self._pending -= len(taken)
            return taken

    def _item(self, future: Future) -> Any:
        if not self.with_results:
            return future
        if future._state.status != "finished" and not self.raise_errors:
            return future, future.exception()
        return future, future.result()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self._item(self._next_batch(whole=False)[0])

    def next_batch(self, block: bool = True) -> list[Any]:
        """The futures finished so far (waiting for at least one when ``block``)."""
        if not block and not self.has_ready():
            return []
        try:
            return [self._item(f) for f in self._next_batch(whole=True)]
        except StopIteration:
            return []

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of futures (or pairs) finished since the last list, until all are."""
        while True:
            try:
                batch = self._next_batch(whole=True)
            except StopIteration:
                return
            yield [self._item(f) for f in batch]

    def clear(self) -> None:
        """Forget every future not yet yielded."""
        with self._cond:
            self._queue.clear()
            self._pending = 0

    def __repr__(self) -> str:
        return f"<as_completed: waiting={self._pending - len(self._queue)} done={len(self._queue)}>"
