"""Futures: a handle on one key's eventual value (Ray calls it ``ObjectRef``).

Every ``Future`` for a key shares one ``FutureState`` in its *owner*, the cluster client
or a local scheduler, which made it (``runtime/client/owner.py``).  The owner counts the
live ``Future`` objects of each key; when the last is garbage collected it lets go of the
key (the cluster client tells the scheduler), so its value can be freed.
"""

from __future__ import annotations

import copy
import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.comm import serialize
from runtime.errors import RemoteTraceback, TaskError

if TYPE_CHECKING:
    from runtime.client.owner import FutureOwner

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
        #: the value once finished: its wire form (inline pickle or a StoreRef) from
        #: the cluster, the object itself (boxed) from a local scheduler
        self.value: Any = None
        self.nbytes = 0
        #: once erred or cancelled: the exception, pickled if it crossed a process boundary,
        #: the traceback text, the key to blame and the worker it was raised on
        self.exception: bytes | BaseException | None = None
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
        """The exception to raise for this failed or cancelled future, made afresh for each
        raise (so notes do not pile up) with a note naming the task.

        A pickled one (from another process) is rebuilt with its remote traceback as its
        cause; one raised in this process (a local scheduler's) is copied, keeping its own
        traceback, so a post-mortem debugger lands in the task.
        """
        exc = self.exception
        if isinstance(exc, BaseException):
            err = _copy_exception(exc)
            if err is None:  # it cannot be copied: raised as it is, its notes as they were
                return exc
        else:
            err = _unpickle_exception(key, exc)
            if self.traceback and self.status != CANCELLED:
                err.__cause__ = RemoteTraceback(self.traceback)
        if self.status != CANCELLED:
            err.add_note(failure_note(key, self.blame, self.worker))
        return err


def _unpickle_exception(key: str, pickled: bytes | None) -> BaseException:
    try:
        exc = pickle.loads(pickled) if pickled else TaskError(f"task {key!r} failed")
    except Exception as e:  # the exception's class is not importable here
        exc = TaskError(f"task {key!r} failed with an exception that cannot be unpickled here: {e}")
    return exc if isinstance(exc, BaseException) else TaskError(repr(exc))


def _copy_exception(exc: BaseException) -> BaseException | None:
    """A copy of ``exc`` with its own notes list, traceback, cause and context; None if it cannot be copied."""
    try:
        err = copy.copy(exc)
        # Some copy reducers (tblib's, which Dask installs) share the instance dict.
        err.__dict__ = {**exc.__dict__, "__notes__": list(getattr(exc, "__notes__", ()))}
        err.__traceback__, err.__cause__, err.__context__ = exc.__traceback__, exc.__cause__, exc.__context__
    except Exception:
        return None
    return err


def failure_note(key: str, blame: str, worker: str = "") -> str:
    """The note on a task's re-raised exception: which task raised it, and where."""
    where = f" on worker {worker}" if worker else ""
    if blame and blame != key:
        return f"task {key!r} failed because its dependency {blame!r} raised{where}"
    return f"raised by task {key!r}{where}"


class Future:
    """The eventual value of a task or ``put``; pass it to other tasks as an argument.

    It behaves the same whoever made it: every method goes to its owner (``_owner``).
    """

    __slots__ = ("key", "_owner", "_state", "_stdlib_waiters", "__weakref__")

    def __init__(self, key: str, owner: FutureOwner, state: FutureState):
        self.key = key
        self._owner = owner
        self._state = state
        #: waiters of concurrent.futures.wait/as_completed on this object (created on first use)
        self._stdlib_waiters: list | None = None
        state.refcount += 1

    # concurrent.futures.wait and as_completed work on a Future through these two names:
    # they hold _condition while they read _state and add a waiter to _waiters.

    @property
    def _condition(self) -> Any:
        return self._owner.futures.cond

    @property
    def _waiters(self) -> list:
        if self._stdlib_waiters is None:
            self._stdlib_waiters = []
            if self._state.status == PENDING:  # stable: the caller holds _condition
                self._owner.futures.add_done_callback(self, _notify_stdlib_waiters)
        return self._stdlib_waiters

    def result(self, timeout: float | None = None) -> Any:
        """The value; re-raises the task's exception; ``GetTimeoutError`` after ``timeout`` s."""
        return self._owner.get([self], timeout=timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the task raised, or None if it succeeded; waits up to ``timeout`` s."""
        self._wait(timeout)
        fs = self._state
        return fs.error(self.key) if fs.status in (ERRED, CANCELLED) else None

    def traceback(self, timeout: float | None = None) -> str | None:
        """The traceback text of the task's exception, or None if it succeeded."""
        self._wait(timeout)
        return (self._state.traceback or None) if self._state.status == ERRED else None

    def _wait(self, timeout: float | None) -> None:
        if self._state.status == PENDING:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._owner.wait_for(self.done, [self], deadline)

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once the task is done (finished, erred or cancelled).

        From the cluster it runs on the client's callback thread; under a local scheduler in
        the thread that ran the task (the caller's, under ``sync``).  If the future is done
        already, it runs at once in this thread.
        """
        if not callable(fn):
            raise TypeError(f"add_done_callback() needs a callable, not {type(fn).__name__}")
        self._owner.futures.add_done_callback(self, fn)

    def cancel(self, force: bool = False) -> None:
        """Stop computing this task (and what depends on it)."""
        self._owner.cancel([self], force=force)

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
            self._owner.release(self.key, self._state)
        except Exception:  # interpreter shutdown: the owner may be half gone
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
    """ClientClosedError if one of a call's argument futures belongs to a closed owner."""
    for dep in deps.values():
        dep._owner.check_open([dep])


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
