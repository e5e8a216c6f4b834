"""Futures: a handle on one key's eventual value (Ray calls it ``ObjectRef``).

Every ``Future`` for a key shares one ``FutureState`` in its *owner*, the cluster client
or a local scheduler, which made it (``runtime/client/owner.py``).  The owner counts the
live ``Future`` objects of each key; when the last is garbage collected it lets go of the
key (the cluster client tells the scheduler), so its value can be freed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import pickle
import time
import types
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from runtime.comm import serialize
from runtime.config import parse_timeout
from runtime.errors import RemoteTraceback, TaskError, as_task_error

if TYPE_CHECKING:
    from runtime.client.owner import FutureOwner

#: a future's ``status`` (Dask's names: a failed future's is "error")
PENDING, FINISHED, ERRED, CANCELLED = "pending", "finished", "error", "cancelled"
#: the standard library's states of a done future (concurrent.futures._base)
_STDLIB_DONE = ("FINISHED", "CANCELLED_AND_NOTIFIED")


class FutureState:
    __slots__ = (
        "status", "value", "nbytes", "exception", "traceback", "blame", "worker", "refcount", "local", "callbacks",
    )  # fmt: skip

    def __init__(self) -> None:
        #: pending, finished, error or cancelled
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
            if self.traceback:  # raised by a task (not made here, as a lost connection's error)
                err = as_task_error(err)
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

    __slots__ = ("key", "_owner", "_state", "_stdlib_waiters", "_released", "__weakref__")

    def __init__(self, key: str, owner: FutureOwner, state: FutureState):
        self.key = key
        self._owner = owner
        self._state = state
        #: waiters of concurrent.futures.wait/as_completed on this object (created on first use)
        self._stdlib_waiters: list | None = None
        #: release() let go of the key already
        self._released = False
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

    def result(self, timeout: float | str | None = None) -> Any:
        """The value; re-raises the task's exception; ``GetTimeoutError`` after ``timeout`` s
        (a number, or a duration string such as ``"1s"``)."""
        return self._owner.get([self], timeout=parse_timeout(timeout, "result() timeout"))[0]

    def exception(self, timeout: float | str | None = None) -> BaseException | None:
        """The exception the task raised, or None if it succeeded; waits up to ``timeout`` s."""
        self._wait(timeout)
        fs = self._state
        return fs.error(self.key) if fs.status in (ERRED, CANCELLED) else None

    def traceback(self, timeout: float | str | None = None) -> types.TracebackType | None:
        """The traceback of the task's exception, as a traceback object (Dask's; the
        ``traceback`` module formats it), or None if it succeeded."""
        self._wait(timeout)
        fs = self._state
        if fs.status != ERRED:
            return None
        if isinstance(fs.exception, BaseException) and fs.exception.__traceback__ is not None:
            return fs.exception.__traceback__  # raised in this process (a local scheduler)
        return remote_traceback(fs.traceback)

    @property
    def client(self) -> Any:
        """What this future belongs to: the ``runtime.Client`` it was made through, else its
        owner (the cluster client or a local scheduler)."""
        ref = getattr(self._owner, "user_client", None)
        return (ref() if ref is not None else None) or self._owner

    def release(self) -> None:
        """Let go of this future's key now rather than when it is garbage collected (Dask's);
        the future is unusable afterwards."""
        if not self._released:
            self._released = True
            self._owner.release(self.key, self._state)

    def _wait(self, timeout: float | str | None) -> None:
        timeout = parse_timeout(timeout)
        if self._state.status == PENDING:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._owner.wait_for(self.done, [self], deadline)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future`` in asyncio code (an ``async def`` actor method, or the driver's own
        loop): the value, or the task's exception raised, as Ray's ``await ref``."""
        return self._value_async().__await__()

    async def _value_async(self) -> Any:
        loop = asyncio.get_running_loop()
        if not self._owner.futures.settles_itself:  # a local scheduler runs its tasks for a waiter
            return await loop.run_in_executor(None, self.result)
        if self._state.status == PENDING:
            done = loop.create_future()

            def wake(_: Future) -> None:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

            self._owner.futures.add_done_callback(self, wake)
            await done
        if self._state.status == FINISHED and isinstance(self._state.value, bytes):
            return self.result()  # inline: decoding it does not block
        return await loop.run_in_executor(None, self.result)  # may read from another node

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

    def retry(self) -> None:
        """Run this failed task again (Dask's ``Future.retry``; see ``Client.retry``)."""
        self.client.retry([self])

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def done(self) -> bool:
        return self._state.status != PENDING

    @property
    def status(self) -> str:
        return self._state.status

    def hex(self) -> str:
        """A hex string naming this future's key, unique in the cluster (Ray's ``ObjectRef.hex()``)."""
        return self.key.encode().hex()

    def future(self) -> concurrent.futures.Future:
        """A standard ``concurrent.futures.Future`` that settles with this one (Ray's ``ObjectRef.future()``)."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        out.set_running_or_notify_cancel()
        self.add_done_callback(lambda f: settle(f, out))
        return out

    def __reduce__(self) -> tuple:
        return serialize.reduce_future(self)

    def __del__(self) -> None:
        try:
            if not self._released:
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


def settle(future: Future, out: concurrent.futures.Future) -> None:
    """Give ``out`` the outcome of ``future``, which is done."""
    if future._state.status == FINISHED:
        try:
            out.set_result(future.result())
        except BaseException as e:  # decoding failed: the caller sees why
            out.set_exception(e)
    else:
        out.set_exception(future.exception())


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


def remote_traceback(text: str) -> types.TracebackType | None:
    """A traceback object standing for the remote traceback ``text`` (its frames point at the
    remote files and lines), so code that walks or prints tracebacks works on it."""
    if not text:
        return None
    import tblib  # only here: a traceback object from text is rarely asked for

    try:
        return tblib.Traceback.from_string(text, strict=False).as_traceback()
    except Exception:  # not a traceback tblib can read: none rather than a wrong one
        return None
