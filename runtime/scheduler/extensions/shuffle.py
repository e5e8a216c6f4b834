"""The shuffle extension (``ShuffleSchedulerPlugin``): frees a shuffle's shard files, and
restarts a shuffle whose shards were lost.

A shuffle (``runtime/shuffling/``) is ordinary tasks to the state machine: ``n`` transfers,
one barrier, ``npartitions`` outputs.  What the state machine does not know is that each
transfer leaves shard files in its node's store (one per group of outputs), outside any
key's value.  This plugin follows the shuffle's keys through its ``transition`` hook and
frees those files, on every node (their names follow from the shuffle's id, the input's
index, the group and the node's store prefix, so nothing needs to report them):

- a group's files, as soon as no output of the group needs them (each in memory, erred or
  forgotten): so the shards shrink while the outputs grow;
- all of them when no output needs them any more: each is in memory (its shards were
  read), erred, or forgotten (cancelled, or released by every client): the shuffle has ended;
- when a transfer of an ended shuffle finishes after all (it was running as the shuffle
  ended and wrote its file late), and again a few times after the end while transfers
  were running then (a cancelled task's finishing is not a transition);
- when a transfer of an ended shuffle runs again (an output was lost and is recomputed),
  the shuffle is open again until its outputs are back in memory.

An output that cannot read a shard (lost with its node, or freed with its group before
the output was built again) asks for a restart (``shuffle-restart``): the barrier and the
transfers are released (``RerunTasks``), which sends the running outputs back to waiting,
and everything runs again from the inputs.  Only the first of the outputs that found the
loss restarts it (the others' runs are no longer current); after ``allowed-failures``
restarts of one shuffle its outputs fail with ``ShuffleError`` instead.

It is added on the first ``shuffle-register`` request, so a scheduler that never shuffles
pays nothing for a transition hook.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.comm.messages import FreeObjects
from runtime.scheduler import stimuli as st
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request
from runtime.shuffling.layout import WHOLE, group_of, group_outputs, ngroups, shard_name

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

logger = logging.getLogger("runtime.scheduler.shuffle")

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
    #: each output's key (``output_key``, or a Dask graph's keys)
    outputs: list[str] = field(default_factory=list)
    #: output indices not yet in memory
    pending: set[int] = field(default_factory=set)
    #: transfer indices running now
    running: set[int] = field(default_factory=set)
    #: whether it ended (its files were freed)
    ended: bool = False
    #: restarts after lost shards so far
    restarts: int = 0
    #: why it gave up (its outputs then fail with this), after too many restarts
    failed: str = ""

    def group_done(self, group: int) -> bool:
        """Whether no output of ``group`` needs its shard files any more."""
        return self.pending.isdisjoint(group_outputs(group, self.noutputs))


class ShuffleSchedulerPlugin(SchedulerPlugin):
    """Follows shuffles' keys and frees their shard files when they end."""

    name = "extension-shuffle"

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: shuffles by id, open and ended (an ended one is kept to catch late writers)
        self.runs: dict[str, ShuffleRun] = {}
        #: output key -> its shuffle and index, for the shuffles followed
        self.output_of: dict[str, tuple[ShuffleRun, int]] = {}
        #: timers of late frees
        self._timers: set[asyncio.TimerHandle] = set()

    def register(self, msg: dict) -> None:
        sid, ninputs, noutputs = msg["sid"], msg["ninputs"], msg["noutputs"]
        if not isinstance(sid, str) or not sid.isalnum():
            raise ValueError(f"a shuffle id is letters and digits, not {sid!r}")
        if not all(isinstance(n, int) and n >= 0 for n in (ninputs, noutputs)):
            raise ValueError(f"numbers of inputs and outputs must be whole numbers, not {ninputs!r}, {noutputs!r}")
        outputs = msg.get("outputs") or [output_key(sid, j) for j in range(noutputs)]
        if len(outputs) != noutputs or not all(isinstance(k, str) for k in outputs):
            raise ValueError(f"outputs must be {noutputs} keys, not {outputs!r:.200}")
        if sid not in self.runs:
            run = self.runs[sid] = ShuffleRun(sid, ninputs, noutputs, list(outputs), set(range(noutputs)))
            for j, key in enumerate(outputs):
                self.output_of[key] = (run, j)

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        if key.startswith("shuffle-transfer-"):
            sid, _, i = key[len("shuffle-transfer-") :].partition("-")
            run = self.runs.get(sid)
            if run is not None and i.isdigit():  # not a user's task of a name like ours
                self._transfer(run, int(i), finish)
        elif (hit := self.output_of.get(key)) is not None:
            self._output(*hit, finish)

    def _transfer(self, run: ShuffleRun, i: int, finish: str) -> None:
        if finish == "processing":
            run.running.add(i)
            if run.ended:  # run again: an output is recomputed
                self._reopen(run)
        else:
            run.running.discard(i)
            if run.ended:  # a late writer
                self._free(run, [i])
            elif finish == "memory":  # rewritten after a restart: groups done need none of it
                self._free(run, [i], [g for g in range(ngroups(run.noutputs)) if run.group_done(g)])

    def _output(self, run: ShuffleRun, j: int, finish: str) -> None:
        if finish in ("memory", "erred", "forgotten"):  # it needs no shard any more
            run.pending.discard(j)
            if not run.pending:
                self._end(run)
            elif run.group_done(g := group_of(j, run.noutputs)):
                self._free(run, range(run.ninputs), [g])
        else:
            run.pending.add(j)

    def _reopen(self, run: ShuffleRun) -> None:
        tasks = self.scheduler.state.tasks
        run.ended = False
        run.pending = set()
        for j, key in enumerate(run.outputs):
            ts = tasks.get(key)
            if ts is not None and ts.state != "memory":
                run.pending.add(j)

    def _end(self, run: ShuffleRun) -> None:
        if run.ended:
            return
        run.ended = True
        self._free(run, range(run.ninputs))
        ended = [sid for sid, r in self.runs.items() if r.ended]
        for sid in ended[: max(0, len(ended) - KEEP_ENDED)]:
            for key in self.runs.pop(sid).outputs:
                self.output_of.pop(key, None)
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

    def _free(self, run: ShuffleRun, indices: Any, groups: Any = None) -> None:
        """Free the shard files of inputs ``indices`` (of ``groups``, default all) on every node
        (a missing one is no error)."""
        if groups is None:  # small inputs' files too (one file for all outputs)
            groups = [*range(ngroups(run.noutputs)), WHOLE]
        pairs = [(i, g) for i in indices for g in groups]
        for node, info in self.scheduler.node_info.items():
            names = tuple(shard_name(info["prefix"], run.sid, i, g) for i, g in pairs)
            if names:
                self.scheduler.send_to(node, FreeObjects(names))

    def restart(self, sid: str, output: int, worker: str, reason: str) -> str:
        """Output ``output``, running on ``worker``, could not read a shard (``reason``):
        restart the shuffle; "restarted", "stale" (that run was released: restarted by
        another output already), or why the shuffle gave up."""
        run = self.runs.get(sid)
        if run is None:
            return f"shuffle {sid} is unknown to the scheduler (ended long ago?): {reason}"
        if run.failed:
            return run.failed
        state = self.scheduler.state
        if not 0 <= output < run.noutputs or state.is_current(run.outputs[output], worker) is None:
            return "stale"
        run.restarts += 1
        if run.restarts > state.allowed_failures:
            run.failed = (
                f"shuffle {sid} lost shards {run.restarts} times, more than allowed-failures "
                f"({state.allowed_failures}) allows; the last time: {reason}"
            )
            return run.failed
        logger.warning("shuffle %s restarts (%d of at most %d): %s", sid, run.restarts, state.allowed_failures, reason)
        keys = (barrier_key(sid), *(transfer_key(sid, i) for i in range(run.ninputs)))
        self.scheduler.handle_stimulus(st.RerunTasks(f"shuffle-restart-{sid}-{run.restarts}", keys))
        return "restarted"

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


@request("shuffle-restart")
def _restart(s: Scheduler, msg: dict, peer: str) -> str:
    return extension(s).restart(msg["sid"], int(msg["output"]), msg["worker"], str(msg["reason"]))


@request("shuffle-runs")
def _runs(s: Scheduler, msg: dict, peer: str) -> dict:
    """The shuffles the scheduler follows: id -> (pending outputs, running transfers, ended, restarts)."""
    ext = s.extensions.get("shuffle")
    runs = ext.runs if ext is not None else {}
    return {sid: [len(r.pending), len(r.running), r.ended, r.restarts] for sid, r in runs.items()}
