"""Ray's ``ray.exceptions`` names for this runtime's errors, so ``except
ray.exceptions.GetTimeoutError`` and ``from runtime.exceptions import RayTaskError`` work
after ``import runtime as ray``."""

from __future__ import annotations

from runtime.errors import (
    ActorDiedError,
    ClientClosedError,
    GetTimeoutError,
    KilledWorker,
    SchedulerError,
    TaskCancelledError,
    TaskError,
)

#: a task raised: the error is an instance of both its own class and this one
RayTaskError = TaskError
#: the actor is gone (``ActorDiedError`` in Ray too, which derives from ``RayActorError``)
RayActorError = ActorDiedError
#: Ray's name for a worker that died while running a task (here: one that killed too many)
WorkerCrashedError = KilledWorker
RayError = Exception

__all__ = [
    "ActorDiedError", "ClientClosedError", "GetTimeoutError", "KilledWorker", "RayActorError", "RayError",
    "RayTaskError", "SchedulerError", "TaskCancelledError", "TaskError", "WorkerCrashedError",
]  # fmt: skip
