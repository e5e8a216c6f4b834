"""Futures: a handle on one key's eventual value (Ray calls it ``ObjectRef``).

Every ``Future`` for a key shares one ``FutureState`` in its client.  The client counts the
live ``Future`` objects of each key; when the last is garbage collected the client tells
the scheduler it no longer wants the key, so its value can be freed.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.comm import serialize
from runtime.errors import RemoteTraceback, TaskError

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient

PENDING, FINISHED, ERRED, CANCELLED = "pending", "finished", "erred", "cancelled"
#: the standard library's states of a done future (concurrent.futures._base)
_STDLIB_DONE = ("FINISHED", "CANCELLED_AND_NOTIFIED")


class FutureState:
    __slots__ = (
        "status", "value", "nbytes", "exception", "traceback", "blame", "worker", "refcount", "local", "callbacks",
    )  # fmt: skip

    def __init__(self) -> None:
        #: pending, finished, erred or cancelled
        self.status = PENDING
        #: the value's wire form once finished: inline pickle or [node, nbytes, name]
        self.value: bytes | list | None = None
        self.nbytes = 0
        #: pickled exception, remote traceback and the key to blame, once erred
        self.exception: bytes | None = None
        self.traceback = ""
        self.blame = ""
        self.worker = ""
        #: live Future objects for this key in this process
        self.refcount = 0
        #: an actor call's result that only this process knows (the scheduler learns of it
        #: when it is passed to a task)
        self.local = False
        #: called with the future once it is done (``add_done_callback``); None when there are none
        self.callbacks: list[tuple[Callable[[Future], Any], Future]] | None = None

    def __eq__(self, other: object) -> bool:
        """Equal to the standard library's FINISHED/CANCELLED_AND_NOTIFIED once done, so its
        ``wait`` and ``as_completed``, which test ``future._state in (...)``, read it right."""
        if isinstance(other, str):
            return self.status != PENDING and other in _STDLIB_DONE
        return self is other

    __hash__ = object.__hash__

    def error(self, key: str) -> BaseException:
        """The task's exception, rebuilt, with the remote traceback as its cause."""
        try:
            exc = pickle.loads(self.exception) if self.exception else TaskError(f"task {key!r} failed")
        except Exception as e:  # the exception's class is not importable here
            exc = TaskError(f"task {key!r} failed with an exception that cannot be unpickled here: {e}")
        if not isinstance(exc, BaseException):
            exc = TaskError(repr(exc))
        if self.status == CANCELLED:
            return exc
        if self.traceback:
            exc.__cause__ = RemoteTraceback(self.traceback)
        exc.add_note(failure_note(key, self.blame, self.worker))
        return exc


def failure_note(key: str, blame: str, worker: str = "") -> str:
    """The note on a task's re-raised exception: which task raised it, and where."""
    where = f" on worker {worker}" if worker else ""
    if blame and blame != key:
        return f"task {key!r} failed because its dependency {blame!r} raised{where}"
    return f"raised by task {key!r}{where}"


class Future:
    """The eventual value of a task or ``put``; pass it to other tasks as an argument."""

    __slots__ = ("key", "_client", "_state", "_stdlib_waiters", "__weakref__")

    def __init__(self, key: str, client: ClusterClient, state: FutureState):
        self.key = key
        self._client = client
        self._state = state
        #: waiters of concurrent.futures.wait/as_completed on this object (created on first use)
        self._stdlib_waiters: list | None = None
        state.refcount += 1

    # concurrent.futures.wait and as_completed work on a Future through these two names:
    # they hold _condition while they read _state and add a waiter to _waiters.

    @property
    def _condition(self) -> Any:
        return self._client._cond

    @property
    def _waiters(self) -> list:
        if self._stdlib_waiters is None:
            self._stdlib_waiters = []
            if self._state.status == PENDING:  # stable: the caller holds _condition
                self._client.add_done_callback(self, _notify_stdlib_waiters)
        return self._stdlib_waiters

    def result(self, timeout: float | None = None) -> Any:
        """The value; re-raises the task's exception; ``GetTimeoutError`` after ``timeout`` s."""
        return self._client.get([self], timeout=timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the task raised, or None if it succeeded; waits up to ``timeout`` s."""
        self._client.wait_done([self], timeout)
        fs = self._state
        return fs.error(self.key) if fs.status in (ERRED, CANCELLED) else None

    def traceback(self, timeout: float | None = None) -> str | None:
        """The remote traceback text of the task's exception, or None if it succeeded."""
        self._client.wait_done([self], timeout)
        return (self._state.traceback or None) if self._state.status == ERRED else None

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once the task is done (finished, erred or cancelled).

        It runs on the client's callback thread, or at once in this thread if already done.
        """
        if not callable(fn):
            raise TypeError(f"add_done_callback() needs a callable, not {type(fn).__name__}")
        self._client.add_done_callback(self, fn)

    def cancel(self, force: bool = False) -> None:
        """Stop computing this task (and what depends on it)."""
        self._client.cancel([self], force=force)

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def done(self) -> bool:
        return self._state.status != PENDING

    @property
    def status(self) -> str:
        return self._state.status

    def __reduce__(self) -> tuple:
        return serialize.reduce_future(self)

    def __del__(self) -> None:
        try:
            self._client._release(self.key, self._state)
        except Exception:  # interpreter shutdown: the client may be half gone
            pass

    def __repr__(self) -> str:
        return f"<Future {self.key!r} {self._state.status}>"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key


ObjectRef = Future


def _notify_stdlib_waiters(future: Future) -> None:
    with future._condition:
        for waiter in list(future._stdlib_waiters or ()):
            if future._state.status == CANCELLED:
                waiter.add_cancelled(future)
            elif future._state.status == ERRED:
                waiter.add_exception(future)
            else:
                waiter.add_result(future)


def check_open_deps(deps: dict[str, Future]) -> None:
    """ClientClosedError if one of a call's argument futures belongs to a closed client."""
    for dep in deps.values():
        check_open = getattr(dep._client, "check_open", None)  # a local scheduler's futures have none
        if check_open is not None:
            check_open([dep])


def collect_futures(x: Any, out: list[Future]) -> None:
    """Append the futures in ``x`` (a future, or lists, tuples, sets and dicts of them, nested)."""
    if isinstance(x, Future):
        out.append(x)
    elif isinstance(x, (list, tuple, set, frozenset)):
        for item in x:
            collect_futures(item, out)
    elif isinstance(x, dict):
        for item in x.values():
            collect_futures(item, out)
