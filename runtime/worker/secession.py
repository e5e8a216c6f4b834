"""Tasks that give their thread back while they wait: ``secede`` and ``rejoin`` (Dask's).

::

    executor thread runs a task ──secede()──► the worker starts a thread in its place,
        │                                     and tells the scheduler (long-running), whose
        │ the task waits on other tasks;      slot accounting then sends it another task
        │ its old thread runs them
        ├──rejoin()──► waits until an executor thread ends its task; that thread then
        │              retires and this one takes its place (a slot is taken back)
        └── a task that ends seceded ends its thread with it

A task that waits on the cluster from inside a worker (``runtime.get``, ``Future.result``,
``wait``, ``Client.gather`` ...) secedes for the time it waits and rejoins after
(``waiting_in_task``), as Ray's tasks give their slot back while blocked in ``get``: so
tasks that submit tasks and wait for them never deadlock a worker, however deep they nest
and however few threads it has.  Each executor thread notes its running task here
(``thread_state``); threads of the actors, ``Client.run`` and the driver have none, and
secede nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.worker.worker import Worker


class _TaskThread(threading.local):
    #: the worker whose executor thread this is, while it runs a task
    worker: Worker | None = None
    #: the running task's key
    key: str = ""
    #: when it started (time.time())
    start: float = 0.0
    #: whether it seceded and has not rejoined
    seceded: bool = False


#: the task the current executor thread runs, if any
thread_state = _TaskThread()


def _running_task() -> Worker:
    worker = thread_state.worker
    if worker is None:
        raise ValueError(
            "secede() and rejoin() work only inside a task running on a worker "
            "(not in the driver, an actor method or Client.run)"
        )
    return worker


def secede() -> None:
    """Have this task leave its worker's threads while it waits: another task may run in its
    place.  A second call while seceded does nothing.  See ``rejoin``."""
    worker = _running_task()
    if not thread_state.seceded:
        thread_state.seceded = True
        worker.secede_thread(thread_state.key, time.time() - thread_state.start)


def rejoin() -> None:
    """Take a thread of the worker again after ``secede``: blocks until an executor thread
    ends the task it runs and leaves its place to this one.  Does nothing if not seceded."""
    worker = _running_task()
    if thread_state.seceded:
        worker.rejoin_thread()


@contextlib.contextmanager
def waiting_in_task() -> Iterator[None]:
    """Secede for the time of the block, if this is a task's thread that holds its thread;
    rejoin after.  Elsewhere, nothing."""
    if thread_state.worker is None or thread_state.seceded:
        yield
        return
    secede()
    try:
        yield
    finally:
        rejoin()
