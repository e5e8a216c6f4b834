"""Waiting on many futures: ``wait`` (Dask's and Ray's in one) and ``as_completed``.

Both rest on two primitives every future's owner offers (``runtime/client/owner.py``):
``wait_for(ready)`` (block until a condition holds; a local scheduler runs its tasks
meanwhile) and done callbacks.  ``as_completed`` turns the callbacks into a queue that
iteration drains, so it yields futures in the order they finish, whatever order they were
given in.  Futures of several owners (two clients, or a client and a local scheduler) can
be waited on together: ``wait_until`` asks each owner in turn.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures._base import DoneAndNotDoneFutures
from typing import Any, NamedTuple

from runtime.client.future import CANCELLED, ERRED, PENDING, Future
from runtime.client.owner import FutureOwner, by_owner, scheduler_choice
from runtime.config import parse_timeout
from runtime.errors import GetTimeoutError

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


class DoneAndNotDone(NamedTuple):
    """What Ray's ``wait`` (with ``num_returns``) returns: ``ready, not_ready`` lists.
    (Dask's returns the standard library's ``DoneAndNotDoneFutures`` of sets.)"""

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
    fs: Any, timeout: float | str | None = None, return_when: str = ALL_COMPLETED, *, num_returns: int | None = None,
    scheduler: str | None = None, fetch_local: bool = True,
) -> DoneAndNotDoneFutures | DoneAndNotDone:  # fmt: skip
    """Wait for futures, as Dask's ``wait`` (``return_when``) or Ray's (``num_returns``).

    Dask's call (no ``num_returns``): ``return_when`` is ``ALL_COMPLETED`` (the default),
    ``FIRST_COMPLETED`` or ``FIRST_EXCEPTION``; it returns ``DoneAndNotDoneFutures`` of two
    sets (the same future may be given twice) and raises ``TimeoutError`` when ``timeout``
    passes first.  Ray's call (``num_returns=k``) returns once ``k`` are done, or at the
    timeout with what is done then: two lists in the order given, at most ``k`` in the first.
    ``timeout`` is seconds or a duration string (``"1s"``).  Futures of a local scheduler run
    their tasks here (``scheduler`` picks which, as for ``get``).  ``fetch_local`` (Ray's) is
    accepted: a value is read from its node's store when it is asked for, never before.
    """
    futures = check_futures(fs, "wait()")
    timeout = parse_timeout(timeout, "wait() timeout")
    if num_returns is not None:
        if len(set(futures)) != len(futures):
            raise ValueError("wait() got the same future twice")
        if not 0 <= num_returns <= len(futures):
            raise ValueError(f"num_returns={num_returns} must be between 0 and len(futures)={len(futures)}")
    else:
        futures = list(dict.fromkeys(futures))  # Dask's wait takes a future twice; sets hold it once
    if not futures:
        return DoneAndNotDone([], []) if num_returns is not None else DoneAndNotDoneFutures(set(), set())
    if return_when not in RETURN_WHEN:
        raise ValueError(f"wait() return_when must be one of {', '.join(RETURN_WHEN)}, not {return_when!r}")
    kind = scheduler_choice(scheduler)
    owners = by_owner(futures)
    for owner, theirs in owners.items():
        owner.check_open(theirs)
    deadline = None if timeout is None else time.monotonic() + timeout

    if num_returns is not None:  # Ray's: what is done at the timeout, at most num_returns of it
        k = num_returns
        try:
            wait_until(lambda: sum(f._state.status != PENDING for f in futures) >= k, owners, deadline, kind)
        except GetTimeoutError:
            pass
        done: list[Future] = []
        pending: list[Future] = []
        for f in futures:
            (done if f.done() and len(done) < k else pending).append(f)
        return DoneAndNotDone(done, pending)

    all_completed = all_done(futures)

    def ready() -> bool:
        if return_when == ALL_COMPLETED:
            return all_completed()
        if return_when == FIRST_COMPLETED:
            return any(f._state.status != PENDING for f in futures)
        return all_completed() or any(f._state.status == ERRED for f in futures)

    try:
        wait_until(ready, owners, deadline, kind)
    except GetTimeoutError as e:
        pending_count = sum(not f.done() for f in futures)
        raise GetTimeoutError(
            f"wait() timed out after {timeout:g}s with {pending_count} of {len(futures)} not done"
        ) from e
    return DoneAndNotDoneFutures({f for f in futures if f.done()}, {f for f in futures if not f.done()})


def wait_done(futures: Sequence[Future], timeout: float | str | None = None) -> None:
    """Block until every one of ``futures`` is done; GetTimeoutError after ``timeout`` s."""
    timeout = parse_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    wait_until(all_done(futures), by_owner(futures), deadline)


def all_done(futures: Sequence[Future]) -> Callable[[], bool]:
    """A ``ready()`` for "every one of ``futures`` is done", amortized O(1) a call (it is
    called at every change): each call goes on from the first future the last one found
    pending, and the whole list is checked once at the end, as a value lost with its node
    makes a finished future wait again."""
    first_pending = 0

    def ready() -> bool:
        nonlocal first_pending
        n = len(futures)
        while first_pending < n and futures[first_pending]._state.status != PENDING:
            first_pending += 1
        if first_pending < n:
            return False
        if all(f._state.status != PENDING for f in futures):
            return True
        first_pending = 0
        return False

    return ready


#: how long ``wait_until`` waits on one owner at a time when futures have several
OWNER_SLICE = 0.01


def wait_until(
    ready: Callable[[], bool], owners: dict[FutureOwner, list[Future]], deadline: float | None,
    scheduler: str | None = None,
) -> None:  # fmt: skip
    """Block until ``ready()``, asking the owners of the futures it reads (``by_owner``) to
    do what that takes; GetTimeoutError past ``deadline``.

    An owner given no futures is asked to wait for ``ready`` alone (``as_completed``).
    """
    if len(owners) == 1:
        ((owner, futures),) = owners.items()
        owner.wait_for(ready, futures, deadline, scheduler)
        return
    # No one condition hears of every owner's futures: wait on each in turn, briefly, until
    # all its own are done (a local scheduler runs its tasks meanwhile).
    while not ready():
        waited = False
        for owner, futures in owners.items():
            if futures and all(f.done() for f in futures):
                continue
            waited = True
            brief = time.monotonic() + OWNER_SLICE
            if deadline is not None and deadline < brief:
                brief = deadline

            def own(futures: list[Future] = futures) -> bool:
                return ready() or bool(futures) and all(f.done() for f in futures)

            try:
                owner.wait_for(own, futures, brief, scheduler)
            except GetTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
        if not waited:  # every future is done; ready() waits for their callbacks
            if deadline is not None and time.monotonic() >= deadline:
                raise GetTimeoutError("timed out waiting for done callbacks")
            time.sleep(0.001)


class as_completed:  # noqa: N801 - named as in Dask and concurrent.futures
    """Iterate over futures in the order they finish; more can be ``add``-ed while iterating.

    ``with_results=True`` yields ``(future, result)`` pairs (raising a task's exception
    unless ``raise_errors=False``, which yields the exception as the result) and skips
    cancelled futures, as Dask's does; ``batches()``
    yields lists of whatever has finished since the last one.  ``timeout`` bounds each wait
    for the next future.
    """

    def __init__(
        self,
        futures: Iterable[Future] | None = None,
        with_results: bool = False,
        raise_errors: bool = True,
        timeout: float | str | None = None,
    ):
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.timeout = parse_timeout(timeout, "as_completed() timeout")
        self._cond = threading.Condition()
        #: finished futures not yet handed out
        self._queue: deque[Future] = deque()
        #: futures added and not yet handed out (finished or not)
        self._pending = 0
        #: the owners of the futures whose callbacks have not run yet, with how many each:
        #: a wait for the next future asks them (a local scheduler runs its tasks meanwhile)
        self._owners: dict[FutureOwner, int] = {}
        if futures is not None:
            self.update(futures)

    def add(self, future: Future) -> None:
        """Also yield ``future`` once it is done."""
        if not isinstance(future, Future):
            raise TypeError(f"as_completed.add() takes a Future, not a {type(future).__name__}")
        with self._cond:
            self._pending += 1
            self._owners[future._owner] = self._owners.get(future._owner, 0) + 1
        future.add_done_callback(self._on_done)

    def update(self, futures: Iterable[Future]) -> None:
        for f in check_futures(futures, "as_completed()"):
            self.add(f)

    def _on_done(self, future: Future) -> None:
        with self._cond:
            if self.with_results and future._state.status == CANCELLED:
                self._pending -= 1  # no result to yield: skipped (Dask)
            else:
                self._queue.append(future)
            left = self._owners.get(future._owner, 0) - 1
            if left > 0:
                self._owners[future._owner] = left
            else:
                self._owners.pop(future._owner, None)
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
            owners = {owner: [] for owner in self._owners} if not self._queue else None
        if owners:  # not under our lock: the callbacks that fill the queue take it
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            try:
                wait_until(lambda: bool(self._queue) or not self._pending, owners, deadline)
            except GetTimeoutError:
                raise GetTimeoutError(
                    f"as_completed: none of {self._pending} futures finished in {self.timeout:g}s"
                ) from None
        with self._cond:
            if not self._pending:  # cleared meanwhile, or what was left was skipped
                raise StopIteration
            if not self._cond.wait_for(lambda: self._queue or not self._pending, self.timeout):
                raise GetTimeoutError(f"as_completed: none of {self._pending} futures finished in {self.timeout:g}s")
            if not self._queue:  # the last ones were cancelled, and skipped
                raise StopIteration
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
            self._owners.clear()

    def __repr__(self) -> str:
        return f"<as_completed: waiting={self._pending - len(self._queue)} done={len(self._queue)}>"
