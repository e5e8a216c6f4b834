"""Cluster memory as the scheduler last heard it, and samplings of it over time.

``snapshot`` is pure: per node, the process memory its workers reported in their heartbeats
and its store's bytes in shared memory and on disk.  A ``Sampling`` (the shell runs one per
``MemorySampler.sample`` block of a client) appends ``(seconds since start, snapshot)``
every ``interval`` seconds until stopped, or until its client goes.  Its interval is at
least ``MIN_INTERVAL``, and it keeps at most ``MAX_SAMPLES`` samples: when full it keeps
every other one and samples half as often, so a long sampling covers its whole span at a
coarser step instead of growing without end.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState

#: the shortest interval between two samples, in seconds: heartbeats refresh the figures
#: about once a second, so a shorter one only spins the scheduler's loop
MIN_INTERVAL = 0.01
#: samples a sampling keeps at most (then it halves them and samples half as often)
MAX_SAMPLES = 10_000


def snapshot(s: SchedulerState) -> dict[str, list[int]]:
    """``{node: [workers' own memory, store bytes in memory, store bytes spilled]}``."""
    return {
        node: [sum(ws.memory for ws in ns.workers), ns.store_used, ns.store_spilled] for node, ns in s.nodes.items()
    }


def check_interval(interval: object) -> float:
    """``interval`` as seconds, or a ValueError saying it must be a number >= ``MIN_INTERVAL``."""
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not math.isfinite(interval)
        or interval < MIN_INTERVAL
    ):
        raise ValueError(
            f"a memory sampling's interval must be a number of seconds >= {MIN_INTERVAL:g}, not {interval!r}"
        )
    return float(interval)


class Sampling:
    def __init__(self, state: SchedulerState, interval: float, client: str, max_samples: int = MAX_SAMPLES):
        self.state = state
        #: seconds between two samples; doubles each time the samples are halved
        self.interval = check_interval(interval)
        #: the client that started it: it stops when that client goes
        self.client = client
        self.max_samples = max(2, max_samples)
        #: (seconds since the start, snapshot), oldest first
        self.samples: list[tuple[float, dict[str, list[int]]]] = []
        self._start = time.monotonic()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, snapshot(self.state)))
            if len(self.samples) >= self.max_samples:
                del self.samples[1::2]
                self.interval *= 2
            await asyncio.sleep(self.interval)

    def stop(self) -> list[tuple[float, dict[str, list[int]]]]:
        self._task.cancel()
        self.samples.append((time.monotonic() - self._start, snapshot(self.state)))
        return self.samples
