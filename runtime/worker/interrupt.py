"""Stopping a running task: ``runtime.cancel`` (Ray's) and ``cancel(force=True)`` reach the
worker as ``interrupt`` (``hard`` for a forced one).

::

    scheduler ──interrupt(key)──► worker loop ──PyThreadState_SetAsyncExc──► executor thread
                                      │                                        raises TaskInterrupted
                                      └─ hard: after FORCE_CANCEL_GRACE s, still running?
                                             clear the running board, exit: the nanny restarts it

CPython raises an asynchronous exception only between bytecodes, so a task blocked in C
(``time.sleep``, a long numpy call, a socket read) does not see it until that call
returns.  A forced cancel stops such a task the only sure way, by ending its process; the
board is cleared first so that no task is blamed for that exit.  A plain one leaves it to
run on, as a plain Ray cancel cannot reach it either in an executor thread.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger("runtime.worker")

#: seconds a force-cancelled task has to stop before its worker restarts
FORCE_CANCEL_GRACE = 3.0
#: the worker's exit code when it ends itself to stop a task
EXIT_FORCE_CANCEL = 75
#: the worker's exit code when it ends itself for ``Client.restart``
EXIT_RESTART = 76


class TaskInterrupted(KeyboardInterrupt):
    """Raised inside a cancelled task (``runtime.cancel``, or a forced cancel).  A
    ``KeyboardInterrupt``, as Ray raises, so ``except Exception`` in user code does not
    swallow it."""


def raise_in_thread(thread_id: int) -> bool:
    """Ask CPython to raise TaskInterrupted in thread ``thread_id``; False if no such thread."""
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(TaskInterrupted))
    if found > 1:  # more than one thread state matched: undo, as the C API documents
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return found == 1
