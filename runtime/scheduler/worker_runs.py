"""``Client.run``: a function sent to workers out of band, and their answers gathered.

::

    client ──request run(function, workers)──► scheduler ──run(run_id)──► each worker
                                                   ▲                        (a thread of its own,
    client ◄──reply {worker: answer}───────────────┴──run-result(run_id)──   not an executor slot)

It is no task: it does not wait behind running tasks, so it can look at a worker that is
busy or stuck.  A worker that leaves before answering answers with an error saying so.
This is part of the scheduler's I/O shell: the state machine never sees it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from runtime.comm.messages import Message, Run

#: an answer: ("ok", pickled value) or ("error", pickled exception, traceback text)
Answer = tuple


class WorkerRuns:
    def __init__(self, send: Callable[[dict[str, list[Message]]], None]):
        #: sends messages to peers by id (the scheduler's ``_send``)
        self._send = send
        #: runs awaiting answers: run id -> (reply future, answers so far, workers yet to answer)
        self.pending: dict[int, tuple[asyncio.Future, dict[str, Answer], set[str]]] = {}
        self._ids = itertools.count()

    def start(self, function: bytes, workers: list[str]) -> asyncio.Future:
        """Send ``function`` to ``workers``; the future's result is ``{worker: answer}``."""
        reply = asyncio.get_running_loop().create_future()
        if not workers:
            reply.set_result({})
            return reply
        run_id = next(self._ids)
        self.pending[run_id] = (reply, {}, set(workers))
        self._send({w: [Run(run_id, function)] for w in workers})
        return reply

    def answered(self, worker: str, run_id: int, answer: Answer) -> None:
        self._record(run_id, worker, answer)

    def worker_gone(self, worker: str, cause: str) -> None:
        gone = ("error", None, f"worker {worker} left before it answered: {cause}")
        for run_id, (_, _, waiting) in list(self.pending.items()):
            if worker in waiting:
                self._record(run_id, worker, gone)

    def _record(self, run_id: int, worker: str, answer: Answer) -> None:
        entry = self.pending.get(run_id)
        if entry is None or worker not in entry[2]:
            return
        reply, answers, waiting = entry
        answers[worker] = answer
        waiting.discard(worker)
        if not waiting:
            del self.pending[run_id]
            if not reply.done():
                reply.set_result(answers)
