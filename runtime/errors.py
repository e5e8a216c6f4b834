"""Exceptions a user of runtime can see and catch."""

from __future__ import annotations

import concurrent.futures


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


class TaskError(RuntimeError):
    """Stands in for a task's exception when that exception itself cannot be unpickled here."""


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
