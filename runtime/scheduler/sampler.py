"""Cluster memory as the scheduler last heard it, and samplings of it over time.

``snapshot`` is pure: per node, the process memory its workers reported in their heartbeats
and its store's bytes in shared memory and on disk.  A ``Sampling`` (the shell runs one per
``MemorySampler.sample`` block of a client) appends ``(seconds since start, snapshot)``
every ``interval`` seconds until stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState


def snapshot(s: SchedulerState) -> dict[str, list[int]]:
    """``{node: [workers' own memory, store bytes in memory, store bytes spilled]}``."""
    return {
        node: [sum(ws.memory for ws in ns.workers), ns.store_used, ns.store_spilled] for node, ns in s.nodes.items()
    }


class Sampling:
    def __init__(self, state: SchedulerState, interval: float):
        self.state = state
        self.interval = interval
        #: (seconds since the start, snapshot), oldest first
        self.samples: list[tuple[float, dict[str, list[int]]]] = []
        self._start = time.monotonic()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, snapshot(self.state)))
            await asyncio.sleep(self.interval)

    def stop(self) -> list[tuple[float, dict[str, list[int]]]]:
        self._task.cancel()
        self.samples.append((time.monotonic() - self._start, snapshot(self.state)))
        return self.samples
