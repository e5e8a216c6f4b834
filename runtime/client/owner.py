"""Who owns a future: the one interface behind every ``Future``, and the table it keeps them in.

A ``Future`` is made by its *owner*, the cluster client (``ClusterClient``) or the local
scheduler (``runtime/local.py``), and asks that owner for whatever its own state cannot
answer, so a future behaves the same whoever made it::

    Future.result, rt.get ───────────────────► owner.get
    exception, traceback, rt.wait,
    as_completed, progress, Client.gather ───► owner.wait_for(ready)   a local scheduler runs
                                                                       its tasks meanwhile
    Future.cancel, rt.cancel ────────────────► owner.cancel
    add_done_callback ───────────────────────► owner.futures           (the FutureTable)
    the last Future of a key collected ──────► owner.release

Every owner keeps its futures in a ``FutureTable``: the ``FutureState`` of each key, the
lock and condition that guard them, and the done callbacks.  Results reach the table
through ``settle`` (a task's or an actor call's result or error, however it arrived), and a
failed future's exception is rebuilt by ``FutureState.error``: both exist once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from runtime import config
from runtime.client.future import CANCELLED, ERRED, FINISHED, PENDING, Future, FutureState
from runtime.comm import messages as m
from runtime.errors import ClientClosedError, TaskCancelledError

logger = logging.getLogger("runtime.client")

#: result messages that carry a value; the others (key-erred, actor-error) carry an error
_VALUES = (m.KeyInMemory, m.ActorResult)


class FutureOwner(Protocol):
    """What made a future and settles it: ``ClusterClient`` or ``LocalScheduler``.

    ``scheduler`` is a ``get``/``wait`` argument ("distributed", "sync", "threads",
    "processes" or None); an owner that cannot run its futures that way raises ValueError.
    """

    #: its futures, the lock and condition that guard them, and their done callbacks
    futures: FutureTable

    def get(self, futures: Sequence[Future], timeout: float | None = None, scheduler: str | None = None) -> list[Any]:
        """The values of ``futures`` (all its own), in order; raises the first error met."""
        ...

    def wait_for(
        self, ready: Callable[[], bool], futures: Sequence[Future], deadline: float | None,
        scheduler: str | None = None,
    ) -> None:  # fmt: skip
        """Block until ``ready()``, doing what that takes; ``GetTimeoutError`` past ``deadline``
        (``time.monotonic()``).  ``ready`` is checked again whenever one of ``futures``
        changes, and after done callbacks have run (with no ``futures``: only then, for a
        ``ready`` that reads what callbacks did, as ``as_completed``'s)."""
        ...

    def cancel(self, futures: Sequence[Future], force: bool = False, interrupt: bool = False) -> None: ...

    def check_open(self, futures: Iterable[Future]) -> None:
        """ClientClosedError if this owner is closed: its futures' values and work are gone."""
        ...

    def release(self, key: str, state: FutureState) -> None:
        """A ``Future`` of ``key`` was collected (from ``__del__``, in any thread)."""
        ...


class FutureTable:
    """The futures of one owner: a ``FutureState`` per key, guarded by one lock.

    The lock is re-entrant: ``concurrent.futures.wait`` takes each future's ``_condition``
    (``cond``) in turn.  Callbacks of futures that became done are collected while the lock
    is held (``due``) and run by ``fire_callbacks``: on a callback thread of their own when
    ``callback_thread`` (the cluster client: results arrive on its event loop, which must
    not wait for user code), else at once, in the thread that settled the futures.  After
    each batch ``called_back`` is notified, so a ``wait_for`` whose ``ready`` reads what the
    callbacks did (``as_completed``, ``progress``) sees it.
    """

    def __init__(self, owner: FutureOwner, callback_thread: bool):
        self.owner = owner
        #: key -> the state its Future objects share
        self.states: dict[str, FutureState] = {}
        self.lock = threading.RLock()
        #: notified when futures change
        self.cond = threading.Condition(self.lock)
        #: notified when callbacks have run: a condition of its own with a callback thread,
        #: so waiters for callbacks alone sleep through the results that come before them;
        #: else ``cond``, on which a local scheduler's caller waits while pool threads run tasks
        self.called_back = threading.Condition(self.lock) if callback_thread else self.cond
        #: callbacks of futures that became done, not run yet
        self.due: list[tuple[Callable[[Future], Any], Future]] = []
        self._callback_thread = callback_thread
        #: futures settle without a waiter driving them (the cluster's); a local scheduler's
        #: run their tasks only while someone waits
        self.settles_itself = callback_thread
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: told the key of a pending future that got a done callback (the actor calls: a
        #: reply a callback waits for is read at once, not when a thread waits for it)
        self.on_watch: Callable[[str], None] | None = None

    def future(self, key: str) -> Future:
        """A new ``Future`` of ``key``, sharing the state of the key's other futures."""
        with self.lock:
            fs = self.states.get(key)
            if fs is None:
                fs = self.states[key] = FutureState()
            return Future(key, self.owner, fs)

    # -- settling (call with the lock held) --------------------------------------------------

    def settle(self, msg: Any) -> FutureState | None:
        """A task's or actor call's result or error arrived (``KeyInMemory``/``ActorResult``
        or ``KeyErred``/``ActorError``): its future is done.  None if nobody holds it."""
        fs = self.states.get(msg.key)
        if fs is None or fs.status == CANCELLED:  # a result that crossed the cancel: too late
            return None
        if type(msg) in _VALUES:
            fs.status, fs.value, fs.nbytes = FINISHED, msg.value, msg.nbytes
        else:
            fs.status, fs.exception, fs.traceback = ERRED, msg.exception, msg.traceback or ""
            fs.blame, fs.worker = getattr(msg, "blame", ""), getattr(msg, "worker", "")
        if fs.callbacks:
            self._take_callbacks(fs)
        return fs

    def fail(self, fs: FutureState, error: BaseException, status: str = ERRED) -> None:
        """``fs`` fails with ``error``, an exception made here (not a task's)."""
        fs.status, fs.exception = status, error
        if fs.callbacks:
            self._take_callbacks(fs)

    def fail_like(self, fs: FutureState, cause: Future) -> None:
        """``fs`` fails with the error of ``cause``, an argument its task needed."""
        bad = cause._state
        fs.status, fs.exception, fs.traceback, fs.worker = ERRED, bad.exception, bad.traceback, bad.worker
        fs.blame = cause.key
        if fs.callbacks:
            self._take_callbacks(fs)

    def fail_pending(self, error: BaseException, status: str = ERRED) -> None:
        """Every future still pending fails with ``error``."""
        for fs in self.states.values():
            if fs.status == PENDING:
                self.fail(fs, error, status)

    def cancel_keys(self, keys: Iterable[str]) -> list[FutureState]:
        """The scheduler cancelled ``keys``: those still pending are cancelled; returns them."""
        cancelled = []
        for key in keys:
            fs = self.states.get(key)
            if fs is not None and fs.status == PENDING:
                self.fail(fs, TaskCancelledError(f"task {key!r} was cancelled"), CANCELLED)
                cancelled.append(fs)
        return cancelled

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Change futures with the lock held; then wake their waiters and run the due callbacks."""
        with self.cond:
            yield
            self.cond.notify_all()
        self.fire_callbacks()

    # -- done callbacks ----------------------------------------------------------------------

    def _take_callbacks(self, fs: FutureState) -> None:
        self.due.extend(fs.callbacks)  # type: ignore[arg-type]
        fs.callbacks = None

    def add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once ``future`` is done; now, in this thread, if it already is."""
        with self.lock:
            fs = future._state
            pending = fs.status == PENDING
            if pending:
                fs.callbacks = [*(fs.callbacks or ()), (fn, future)]
        if not pending:
            _call_logged(fn, future)
        elif fs.local and self.on_watch is not None:
            self.on_watch(future.key)

    def fire_callbacks(self) -> None:
        """Run the callbacks that became due (see the class).

        With a callback thread, call it without the lock held: the futures are dropped
        there, and the cluster client's ``release`` takes the lock.
        """
        if not self.due:
            return
        with self.lock:
            due, self.due = self.due, []
            if self._callback_thread and self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runtime-callbacks")
        if self._pool is not None:
            self._pool.submit(self._run, due)
        else:
            self._run(due)

    def _run(self, due: list[tuple[Callable[[Future], Any], Future]]) -> None:
        for fn, future in due:
            _call_logged(fn, future)
        with self.called_back:
            self.called_back.notify_all()

    def close(self) -> None:
        """Stop the callback thread once it has run what it was given."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _call_logged(fn: Callable[[Future], Any], future: Future) -> None:
    try:
        fn(future)
    except Exception:
        logger.exception("done callback %r of %r raised", fn, future)


def scheduler_choice(scheduler: str | None) -> str | None:
    """A ``get``/``wait`` ``scheduler=`` argument, checked (ValueError naming the choices)."""
    return None if scheduler is None else config.SETTINGS["scheduler"].parse(scheduler)


def by_owner(futures: Iterable[Future]) -> dict[FutureOwner, list[Future]]:
    """``futures`` grouped by owner, owners and futures in the order given."""
    groups: dict[FutureOwner, list[Future]] = {}
    for f in futures:
        groups.setdefault(f._owner, []).append(f)
    return groups


def closed_error(owner: str, futures: Iterable[Future] | None = None) -> ClientClosedError:
    """The error of using ``futures`` of a closed owner (``owner`` says what it was); with no
    futures, the error of a future cancelled as its owner closed."""
    if futures is None:
        subject = "cancelled before it finished: the future belongs"
    else:
        keys = [f.key for f in futures]
        subject = f"future {keys[0]!r} belongs" if len(keys) == 1 else f"futures {keys[:3]} belong"
    return ClientClosedError(
        f"{subject} to {owner}; futures do not carry over to a new runtime or client: submit the task again"
    )
