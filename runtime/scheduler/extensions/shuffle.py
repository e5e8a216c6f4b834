"""The shuffle extension (``ShuffleSchedulerPlugin``): frees a shuffle's shard files.

A shuffle (``runtime/shuffling/``) is ordinary tasks to the state machine: ``n`` transfers,
one barrier, ``npartitions`` outputs.  What the state machine does not know is that each
transfer leaves a shard file in its node's store, outside any key's value.  This plugin
follows the shuffle's keys through its ``transition`` hook and frees those files, on every
node (their names follow from the shuffle's id, the input's index and the node's store
prefix, so nothing needs to report them):

- when no output needs them any more: each is in memory (its shards were read), erred,
  or forgotten (cancelled, or released by every client): the shuffle has ended;
- when a transfer of an ended shuffle finishes after all (it was running as the shuffle
  ended and wrote its file late), and again a few times after the end while transfers
  were running then (a cancelled task's finishing is not a transition);
- when a transfer of an ended shuffle runs again (an output was lost and is recomputed),
  the shuffle is open again until its outputs are back in memory.

It is added on the first ``shuffle-register`` request, so a scheduler that never shuffles
pays nothing for a transition hook.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.comm.messages import FreeObjects
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: seconds after a shuffle ends at which the files of transfers then running are freed again
LATE_FREES = (1.0, 5.0, 30.0, 120.0)
#: ended shuffles kept (to catch late writers and recomputed outputs), the oldest dropped first
KEEP_ENDED = 1000


def transfer_key(sid: str, i: int) -> str:
    return f"shuffle-transfer-{sid}-{i}"


def barrier_key(sid: str) -> str:
    return f"shuffle-barrier-{sid}"


def output_key(sid: str, j: int) -> str:
    return f"shuffle-output-{sid}-{j}"


@dataclass
class ShuffleRun:
    """One shuffle as the scheduler follows it."""

    #: its id
    sid: str
    #: its numbers of inputs and outputs
    ninputs: int
    noutputs: int
    #: output indices not yet in memory
    pending: set[int] = field(default_factory=set)
    #: transfer indices running now
    running: set[int] = field(default_factory=set)
    #: whether it ended (its files were freed)
    ended: bool = False


class ShuffleSchedulerPlugin(SchedulerPlugin):
    """Follows shuffles' keys and frees their shard files when they end."""

    name = "extension-shuffle"

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: shuffles by id, open and ended (an ended one is kept to catch late writers)
        self.runs: dict[str, ShuffleRun] = {}
        #: timers of late frees
        self._timers: set[asyncio.TimerHandle] = set()

    def register(self, msg: dict) -> None:
        sid, ninputs, noutputs = msg["sid"], msg["ninputs"], msg["noutputs"]
        if not isinstance(sid, str) or not sid.isalnum():
            raise ValueError(f"a shuffle id is letters and digits, not {sid!r}")
        if not all(isinstance(n, int) and n >= 0 for n in (ninputs, noutputs)):
            raise ValueError(f"numbers of inputs and outputs must be whole numbers, not {ninputs!r}, {noutputs!r}")
        if sid not in self.runs:
            self.runs[sid] = ShuffleRun(sid, ninputs, noutputs, set(range(noutputs)))

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        if not key.startswith("shuffle-"):
            return
        _, kind, sid, *rest = key.split("-")
        run = self.runs.get(sid)
        if run is None:
            return
        if kind == "transfer":
            i = int(rest[0])
            if finish == "processing":
                run.running.add(i)
                if run.ended:  # run again: an output is recomputed
                    self._reopen(run)
            else:
                run.running.discard(i)
                if run.ended:  # a late writer
                    self._free(run, [i])
        elif kind == "output":
            j = int(rest[0])
            if finish in ("memory", "erred", "forgotten"):  # it needs no shard any more
                run.pending.discard(j)
                if not run.pending:
                    self._end(run)
            else:
                run.pending.add(j)

    def _reopen(self, run: ShuffleRun) -> None:
        tasks = self.scheduler.state.tasks
        run.ended = False
        run.pending = set()
        for j in range(run.noutputs):
            ts = tasks.get(output_key(run.sid, j))
            if ts is not None and ts.state != "memory":
                run.pending.add(j)

    def _end(self, run: ShuffleRun) -> None:
        if run.ended:
            return
        run.ended = True
        self._free(run, range(run.ninputs))
        ended = [sid for sid, r in self.runs.items() if r.ended]
        for sid in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.runs[sid]
        if run.running:
            loop = asyncio.get_running_loop()
            late = sorted(run.running)
            for delay in LATE_FREES:
                handle = loop.call_later(delay, self._late_free, run, late)
                self._timers.add(handle)

    def _late_free(self, run: ShuffleRun, indices: list[int]) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()}
        if run.ended:
            self._free(run, indices)

    def _free(self, run: ShuffleRun, indices: Any) -> None:
        """Free the shard files of inputs ``indices`` on every node (a missing one is no error)."""
        from runtime.shuffling.shards import shard_name  # not at start-up: it imports numpy

        indices = list(indices)
        for node, info in self.scheduler.node_info.items():
            names = tuple(shard_name(info["prefix"], run.sid, i) for i in indices)
            if names:
                self.scheduler.send_to(node, FreeObjects(names))

    def close(self, **kwargs: Any) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


def extension(s: Scheduler) -> ShuffleSchedulerPlugin:
    """The scheduler's shuffle extension, added on first use."""
    ext = s.extensions.get("shuffle")
    if ext is None or ext.name not in s.plugins.plugins:
        ext = s.extensions["shuffle"] = ShuffleSchedulerPlugin(s)
        s.plugins.add(ext, ext.name)
    return ext


@request("shuffle-register")
def _register(s: Scheduler, msg: dict, peer: str) -> None:
    extension(s).register(msg)


@request("shuffle-runs")
def _runs(s: Scheduler, msg: dict, peer: str) -> dict:
    """The shuffles the scheduler follows: id -> (pending outputs, running transfers, ended)."""
    ext = s.extensions.get("shuffle")
    runs = ext.runs if ext is not None else {}
    return {sid: [len(r.pending), len(r.running), r.ended] for sid, r in runs.items()}
