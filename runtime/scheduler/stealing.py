"""Work stealing: idle workers take tasks queued on busy ones (Dask's ``WorkStealing``).

::

    shell (server.py), every scheduler.work-stealing-interval:
      balance(state) ── [(key, victim, thief), ...] ──► RequestSteals stimulus
                                                          │ each checked again;
                                                          │ steals[ts] = Steal(victim, thief, request)
      victim ◄──────────── steal-request(key, request) ◄──┘
      victim: received but not started?  then it drops it
        └──► steal-response(key, request, "queued" | "executing" | "gone") ──► StealResponse stimulus
               "queued", and the request still current: processing on the victim
                   -> released -> waiting -> processing on the thief (compute-task to it)
               otherwise: the task stays where it is, and is not asked for again

Each round of requests and each answer is logged on the event log's topic "stealing", as
Dask logs them (``client.get_events("stealing")``): ``("request", [[key, victim, thief],
...])``, and per answer ``("confirm" | "already-computing" | "reschedule", key, state,
victim, thief, request)`` ("reschedule": given up, but not moved to the thief: it is gone,
paused, or the task is no longer wanted) or ``("stale-response" | "already-aborted", key, state, worker,
request)``.  The state machine leaves them in ``SchedulerState.events``; the shell logs them.

A steal counts only once the victim confirms it gave the task up: a task that started
(``executing``, seceded ones too) or finished (``gone``: its result was sent before the
answer) stays with the victim, so no task runs twice.  A steal whose task leaves the victim
meanwhile (finished, released, its worker died) is void (``SchedulerState._exit_processing``
drops it), and an answer naming another request than the current one is stale: a task
released and sent to the same victim again after the request is not the one that victim
dropped.

The policy (``balance``), a pure function of the state like the placement policies:

* **From saturated to idle only.**  Counting the steals in flight as done, thieves are
  running workers that are idle as Dask defines it ("unoccupied"): a free thread, or less
  than half the cluster's average work per thread (so a thief takes its next task before
  it runs dry, not a round later); each takes tasks until it is no longer idle.  Victims
  hold more tasks than threads and are not idle.
* **Never a started task.**  Candidates are a victim's tasks that are not long-running
  (seceded), not asked for already, and not an actor's creation; taken from the end of
  its queue (sent last, so started last), at most ``SCAN`` per victim and round.
* **Cheapest first, by cost multiplier.**  Each candidate gets a level by the ratio of
  moving it (its stored inputs' bytes over the bandwidth, plus a round-trip ``LATENCY``)
  to computing it (its prefix's average duration): ``round(log2(ratio) + 6)``; tasks with no
  inputs are level 0, and a ratio past the last level (moving costs ~256x computing) is
  never stolen.  Levels are taken in order, lowest first.
* **Only when it pays.**  A task moves to the thief where it would start soonest (its
  occupancy per thread plus the fetch of the inputs its node lacks) if starting there and
  computing beats waiting on the victim: ``thief's wait + fetch + compute <= victim's wait -
  (victim's fetch + compute) / 2`` (Dask's rule, with waits as occupancy per thread).
* Restrictions hold: a thief must be a valid worker for the task, unless its restrictions
  are loose and no valid worker is among the thieves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.comm.messages import StealRequest, StoreRef
from runtime.scheduler import placement
from runtime.scheduler import stimuli as st
from runtime.scheduler.actors import ACTORS_CLIENT
from runtime.scheduler.entities import Recs, TaskState, WorkerState
from runtime.scheduler.handlers import handles

if TYPE_CHECKING:
    from runtime.scheduler.state import Outbox, SchedulerState

#: seconds a steal costs beyond moving the inputs (request, answer, new compute-task);
#: conservative, as Dask's, so that short tasks are not stolen for little gain
LATENCY = 0.1
#: cost levels: level i holds tasks whose moving costs about 2**(i - 6) times computing them
LEVELS = 15
#: candidates looked at per victim and round, from the end of its queue
SCAN = 100
#: the event log's topic for what work stealing does (Dask's)
TOPIC = "stealing"


@dataclass(slots=True)
class Steal:
    """One steal asked of a victim, from the request until its task leaves the victim."""

    #: the worker asked to give the task up (it processes there)
    victim: WorkerState
    #: the worker to run it instead
    thief: WorkerState
    #: the id the victim's answer must name (the RequestSteals' stimulus id)
    request: str
    #: the task's expected seconds, counted on the thief, not the victim, while in flight
    duration: float
    #: the victim had started it: it stays there, and is not asked for again
    declined: bool = False


def duration(s: SchedulerState, ts: TaskState) -> float:
    from runtime.scheduler.state import UNKNOWN_TASK_DURATION  # state.py imports this module

    return s.task_durations.get(ts.prefix, UNKNOWN_TASK_DURATION)


def steal_level(s: SchedulerState, ts: TaskState) -> int | None:
    """The cost level of moving ``ts`` (0: no inputs, cheapest), or None: too costly to move."""
    if not ts.dependencies:
        return 0
    compute = duration(s, ts)
    if compute <= 0.0:
        return None
    stored = sum(dts.nbytes for dts in ts.dependencies if type(dts.data) is StoreRef)  # inline ones travel free
    ratio = (stored / placement.BANDWIDTH + LATENCY) / compute
    level = max(1, round(math.log2(ratio) + 6))
    return level if level < LEVELS else None


def stealable(s: SchedulerState, ts: TaskState, victim: WorkerState) -> bool:
    """Whether ``ts``, processing on ``victim``, may be asked for at all."""
    return (
        ts not in s.steals
        and ts not in victim.long_running
        and not any(cs.client_key == ACTORS_CLIENT for cs in ts.who_wants)  # actors stay where placed
    )


def _thieves_for(s: SchedulerState, ts: TaskState, thieves: list[WorkerState]) -> list[WorkerState]:
    """The thieves that may run ``ts`` by its restrictions (loose ones: any, when none may)."""
    valid = placement.valid_workers(s, ts)
    if valid is None:
        return thieves
    allowed = [ws for ws in thieves if ws in valid]
    return allowed if allowed or not ts.loose_restrictions else thieves


def balance(s: SchedulerState) -> list[tuple[str, str, str]]:
    """``(key, victim, thief)`` of the tasks worth moving now (see the module's docstring)."""
    # Tasks holding a thread, and expected seconds of work, of each worker once the steals
    # in flight are done.
    ntasks = {ws: len(ws.processing) - len(ws.long_running) for ws in s.workers.values()}
    occupancy = {ws: ws.occupancy for ws in s.workers.values()}
    for steal in s.steals.values():
        if steal.declined:
            continue
        ntasks[steal.victim] -= 1
        occupancy[steal.victim] -= steal.duration
        if steal.thief in ntasks:  # else it left: the answer places the task anew
            ntasks[steal.thief] += 1
            occupancy[steal.thief] += steal.duration
    # Dask's "unoccupied": a free thread, or less than half the average work per thread.
    half_average = sum(occupancy.values()) / max(1, s.total_nthreads) / 2

    def idle(ws: WorkerState) -> bool:
        return ntasks[ws] < ws.nthreads or occupancy[ws] < ws.nthreads * half_average

    thieves = [ws for ws in s.workers.values() if ws.status == "running" and idle(ws)]
    if not thieves:
        return []
    victims = [ws for ws in s.workers.values() if ntasks[ws] > ws.nthreads and not idle(ws)]
    victims.sort(key=lambda ws: -occupancy[ws] / ws.nthreads)
    levels: list[list[tuple[TaskState, WorkerState]]] = [[] for _ in range(LEVELS)]
    for victim in victims:
        for i, ts in enumerate(reversed(victim.processing)):
            if i == SCAN:
                break
            if stealable(s, ts, victim) and (level := steal_level(s, ts)) is not None:
                levels[level].append((ts, victim))
    moves: list[tuple[str, str, str]] = []
    for candidates in levels:
        for ts, victim in candidates:
            if not thieves:
                return moves
            if ntasks[victim] <= victim.nthreads:
                continue  # no longer saturated: what it holds it will start soon
            allowed = _thieves_for(s, ts, thieves)
            if not allowed:
                continue
            compute = duration(s, ts)
            thief = min(allowed, key=lambda ws: occupancy[ws] / ws.nthreads + placement.fetch_seconds(ts, ws))
            wait_thief = occupancy[thief] / thief.nthreads + placement.fetch_seconds(ts, thief)
            wait_victim = occupancy[victim] / victim.nthreads
            if wait_thief + compute > wait_victim - (placement.fetch_seconds(ts, victim) + compute) / 2:
                continue
            moves.append((ts.key, victim.address, thief.address))
            task_seconds = victim.processing[ts]
            ntasks[victim] -= 1
            occupancy[victim] -= task_seconds
            ntasks[thief] += 1
            occupancy[thief] += task_seconds
            if not idle(thief):
                thieves.remove(thief)
    return moves


# ---------------------------------------------------------------------------- stimuli


@handles(st.RequestSteals)
def request_steals(self: SchedulerState, s: st.RequestSteals, out: Outbox) -> Recs:
    """Ask each victim for its task, if the move still holds: the task processes, not yet
    started as far as we know, on the victim, and the thief is a running worker."""
    requested = []
    for key, victim, thief in s.moves:
        ts = self.tasks.get(key)
        ws = ts.processing_on if ts is not None else None
        to = self.workers.get(thief)
        if ts is None or ws is None or ws.address != victim or to is None or to is ws or to.status != "running":
            continue
        if not stealable(self, ts, ws):
            continue
        self.steals[ts] = Steal(ws, to, s.stimulus_id, ws.processing[ts])
        self.steal_counts["requested"] += 1
        out.to_worker(victim, StealRequest(key, s.stimulus_id))
        self.transition_log.append((key, "processing", "processing", {}, s.stimulus_id))  # for story
        requested.append([key, victim, thief])
    if requested:
        self.events.append((TOPIC, ("request", requested)))
    return {}


@handles(st.StealResponse)
def steal_response(self: SchedulerState, s: st.StealResponse, out: Outbox) -> Recs:
    """The victim's answer.  Only "queued" to the current request moves the task: from
    processing on the victim, through released and waiting, to processing on the thief (or
    wherever placement says, should the thief be gone or paused since)."""
    ts = self.tasks.get(s.key)
    steal = self.steals.get(ts) if ts is not None else None
    if ts is None or steal is None or steal.declined:  # the task left the victim since: its steal went with it
        self.events.append((TOPIC, ("already-aborted", s.key, s.state, s.worker, s.request)))
        return {}
    if steal.request != s.request or steal.victim.address != s.worker:  # another request's answer
        self.events.append((TOPIC, ("stale-response", s.key, s.state, s.worker, s.request)))
        return {}
    self.transition_log.append((ts.key, "processing", "processing", {}, s.stimulus_id))
    logged = (ts.key, s.state, steal.victim.address, steal.thief.address, s.request)
    if s.state != "queued":  # started, or finished (its result came first): it stays
        steal.declined = True
        self.steal_counts["declined"] += 1
        self.events.append((TOPIC, ("already-computing", *logged)))
        return {}
    del self.steals[ts]
    self.steal_counts["moved"] += 1
    recs = self.transition(ts, "released", s.stimulus_id, out)  # its cancel-compute to the victim is a no-op there
    if recs.pop(ts.key, None) != "waiting":
        self.events.append((TOPIC, ("reschedule", *logged)))
        return recs  # nobody needs it any more
    recs.update(self.transition(ts, "waiting", s.stimulus_id, out))
    if recs.pop(ts.key, None) != "processing":
        self.events.append((TOPIC, ("reschedule", *logged)))
        return recs
    thief = steal.thief
    if (
        self.workers.get(thief.address) is thief
        and thief.status == "running"
        and thief in _thieves_for(self, ts, [thief])
    ):
        recs.update(self.transition(ts, "processing", s.stimulus_id, out, thief))
        self.events.append((TOPIC, ("confirm", *logged)))
    else:
        recs[ts.key] = "processing"  # placed as any ready task, once the stimulus has settled
        self.events.append((TOPIC, ("reschedule", *logged)))
    return recs


def validate(s: SchedulerState) -> None:
    """Every steal's task processes on its victim (validation.validate_state runs this)."""
    from runtime.scheduler.validation import InvariantError

    for ts, steal in s.steals.items():
        if ts.state != "processing" or ts.processing_on is not steal.victim:
            raise InvariantError(f"task {ts.key!r} ({ts.state}): a steal from {steal.victim.address} outlived it there")
