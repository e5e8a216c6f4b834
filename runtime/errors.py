"""Exceptions a user of runtime can see and catch."""

from __future__ import annotations

import concurrent.futures
import weakref
from typing import Any


class GetTimeoutError(TimeoutError):
    """``get``/``result`` waited ``timeout`` seconds; the futures stay valid and usable."""


class KilledWorker(RuntimeError):
    """A task was running on workers that died, ``allowed_failures + 1`` times.

    It is blamed as the likely cause (it may call ``os._exit``, crash the interpreter or use
    too much memory); the message names the task and the workers.
    """

    def __init__(self, key: str, workers: list[str], cause: str = ""):
        self.key = key
        self.workers = workers
        self.cause = cause
        super().__init__(key, workers, cause)

    def __str__(self) -> str:
        text = f"task {self.key!r} was running on {len(self.workers)} workers that died: {', '.join(self.workers)}"
        return f"{text}; last cause: {self.cause}" if self.cause else text


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process.

    It is set as the ``__cause__`` of the re-raised exception, so Python prints the remote
    traceback first and the local one after it, as ``concurrent.futures.process`` does.
    """

    def __init__(self, tb: str):
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskError(Exception):
    """A task failed.  Every exception a task raised is re-raised as an instance of both its
    own class and this one (as Ray's ``RayTaskError``), so ``except ValueError`` and
    ``except TaskError`` both catch it; it also stands in for an exception that cannot be
    unpickled here, or for a task that called ``sys.exit()``."""


#: exception class -> its class that also derives from TaskError, made once each
_task_error_classes: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


def as_task_error(exc: BaseException) -> BaseException:
    """``exc`` as an instance of a class deriving from both its own class and ``TaskError``.

    The new class keeps the name, module and behaviour of the original, so it prints and
    reads as the original; it pickles as the original.  ``exc`` itself is returned when it is
    a ``TaskError`` or an ``ActorDiedError`` already, or when its class cannot be derived from
    (a final class, a layout conflict) or built without calling its ``__init__``.
    """
    cls = type(exc)
    if isinstance(exc, (TaskError, ActorDiedError)) or not isinstance(exc, Exception):
        return exc
    derived = _task_error_classes.get(cls)
    if derived is None:
        try:
            derived = type(
                cls.__name__,
                (cls, TaskError),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__reduce__": _reduce_as_original},
            )
        except TypeError:
            return exc
        _task_error_classes[cls] = derived
    try:
        err = derived.__new__(derived, *exc.args)
        err.__dict__.update(exc.__dict__)
        err.args = exc.args
    except Exception:
        return exc
    err.__traceback__, err.__cause__, err.__context__ = exc.__traceback__, exc.__cause__, exc.__context__
    err.__suppress_context__ = exc.__suppress_context__
    return err


def _reduce_as_original(self: BaseException) -> tuple[Any, ...]:
    """A derived task error pickles as the task's own exception (the receiver derives again)."""
    original = type(self).__mro__[1]
    return (original, self.args, self.__dict__ or None)


def task_exit_error(e: BaseException) -> TaskError:
    """What a task that raised ``SystemExit`` (``sys.exit()``) fails with: an error, not an exit
    of whoever reads its result."""
    return TaskError(f"the task called sys.exit({e.args[0] if e.args else ''}): a task cannot exit its worker")


class SchedulerError(RuntimeError):
    """The scheduler hit an internal error; pending futures fail with it instead of hanging."""


class ClientClosedError(RuntimeError):
    """A future's own client was closed (``runtime.shutdown()`` or ``Client.close()``):
    its futures cannot be read, waited on, cancelled or passed to new tasks any more."""


class ActorDiedError(RuntimeError):
    """The actor is gone (killed, its worker died past ``max_restarts``, or its constructor
    raised); calls to it fail with this, naming the actor and why."""


class TaskCancelledError(concurrent.futures.CancelledError):
    """The task was cancelled (``runtime.cancel`` or ``Future.cancel``) before it finished."""
