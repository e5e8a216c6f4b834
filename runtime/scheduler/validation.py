"""Invariants of the scheduler's state, checked after every transition when ``validate=True``.

One ``_validate_<state>`` per task state, run on the task a transition moved, and
``validate_state`` over everything, run after every stimulus.  A broken rule raises
``InvariantError`` naming the key (or worker, or client) and the rule; a transition the
table has none for raises ``InvalidTransition``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from runtime.comm.messages import StoreRef
from runtime.scheduler import stealing
from runtime.scheduler.entities import TaskState

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState

PENDING = ("waiting", "no-worker", "queued", "processing")


class InvariantError(AssertionError):
    """validate=True found the state inconsistent; the message names the key and the rule."""


class InvalidTransition(RuntimeError):
    """A transition the table has no function for (``state._TRANSITIONS``).  Declared here,
    not in the compiled ``state.py``: mypyc compiles no subclass of RuntimeError."""

    def __init__(self, key: str, start: str, finish: str, stimulus_id: str = ""):
        self.key, self.start, self.finish = key, start, finish
        super().__init__(f"no transition for task {key!r} from {start!r} to {finish!r} (stimulus {stimulus_id!r})")


def _check(ts: TaskState, ok: bool, what: str) -> None:
    if not ok:
        raise InvariantError(f"task {ts.key!r} ({ts.state}): {what}")


def _validate_released(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, not ts.waiting and ts.processing_on is None and ts.data is None, "released task holds state")
    _check(ts, ts not in s.unrunnable and ts not in s.queued, "released task is unrunnable or queued")


def _validate_waiting(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, ts.processing_on is None and ts.data is None, "waiting task is processing or in memory")
    not_in_memory = {d for d in ts.dependencies if d.state != "memory"}
    _check(ts, (ts.waiting or {}).keys() == not_in_memory, "waiting != the dependencies not in memory")
    for dts in ts.dependencies:
        _check(ts, ts in dts.waiting_data, f"missing from waiting_data of {dts.key!r}")


def _validate_ready(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, not ts.waiting and ts.processing_on is None, "ready task still waiting, or processing")
    for dts in ts.dependencies:
        _check(ts, dts.state == "memory", f"ready but dependency {dts.key!r} is {dts.state}")


def _validate_no_worker(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, ts in s.unrunnable and ts not in s.queued, "no-worker task not in unrunnable")
    _validate_ready(s, ts)


def _validate_queued(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, ts in s.queued and ts not in s.unrunnable, "queued task not in queued")
    _validate_ready(s, ts)


def _validate_processing(s: SchedulerState, ts: TaskState) -> None:
    ws = ts.processing_on
    _check(
        ts, ws is not None and s.workers.get(ws.address) is ws and ts in ws.processing, "processing on no live worker"
    )
    _check(ts, not ts.waiting, "processing while waiting for dependencies")
    for dts in ts.dependencies:
        _check(ts, dts.state == "memory", f"processing but dependency {dts.key!r} is {dts.state}")
        _check(ts, ts in dts.waiting_data, f"missing from waiting_data of {dts.key!r}")


def _validate_memory(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, ts.data is not None, "in memory without a value")
    _check(ts, ts.processing_on is None and not ts.waiting, "in memory but processing or waiting")
    for ws in ts.who_has or ():
        _check(ts, ts in ws.has_what, f"who_has {ws.address} but not in its has_what")
    if type(ts.data) is StoreRef:
        ns = s.nodes.get(ts.data.node)
        _check(ts, ns is not None and ts in ns.stored, "stored on a node that does not list it")
    for node in ts.replicas or ():
        ns = s.nodes.get(node)
        _check(ts, ns is not None and ts in ns.replicas, f"copy on node {node} that does not list it")


def _validate_erred(s: SchedulerState, ts: TaskState) -> None:
    _check(ts, ts.exception_blame is not None, "erred without exception_blame")
    _check(ts, ts.processing_on is None and ts.data is None and not ts.waiting, "erred but processing or in memory")


def validate_task_state(s: SchedulerState, ts: TaskState) -> None:
    if ts.state == "forgotten":
        _check(ts, ts.key not in s.tasks, "forgotten but still in tasks")
        return
    _check(ts, s.tasks.get(ts.key) is ts, "not in tasks")
    _VALIDATORS[ts.state](s, ts)
    if ts.hinted is not None:  # a hint stands for a task waiting for one input, made there
        _check(ts, ts.state == "waiting" and len(ts.waiting or ()) == 1, f"hinted but {ts.state}, {ts.waiting}")
        (dts,) = ts.waiting or {None: None}
        _check(
            ts, dts is not None and (dts.processing_on is ts.hinted or dts.hinted is ts.hinted),
            f"hinted to {ts.hinted.address}, where its input is neither processing nor hinted",
        )  # fmt: skip


def validate_state(s: SchedulerState) -> None:
    """Check the whole state: every task, worker, node and client."""
    for ts in s.tasks.values():
        validate_task_state(s, ts)
        for dts in ts.dependencies:
            _check(ts, ts in dts.dependents, f"not among dependents of its dependency {dts.key!r}")
        for cs in ts.who_wants:
            _check(ts, ts in cs.wants_what and cs.client_key in s.clients, "who_wants/wants_what differ")
        if ts.state == "memory":
            _check(ts, bool(ts.who_wants or ts.waiting_data), "in memory but nobody wants it")
        if ts.state in PENDING:
            _check(ts, bool(ts.who_wants or ts.waiting_data), "runs, but nobody wants it or waits for it")
            for dts in ts.dependencies:
                _check(ts, ts in dts.waiting_data, f"pending, but missing from waiting_data of {dts.key!r}")
        _check(ts, bool(ts.who_wants or ts.dependents), "kept, but nobody wants it or depends on it")
    for ws in s.workers.values():
        for ts in ws.processing:
            _check(ts, ts.processing_on is ws, f"in processing of {ws.address} but runs elsewhere")
        for ts in ws.has_what:
            _check(ts, ws in (ts.who_has or ()), f"in has_what of {ws.address} but not in who_has")
        total = sum(ws.processing.values())
        if abs(ws.occupancy - total) > 1e-6 * max(1.0, total):
            raise InvariantError(f"worker {ws.address}: occupancy {ws.occupancy} != {total}")
        for ts in ws.long_running:
            _check(ts, ts in ws.processing, f"long-running on {ws.address} but not in its processing")
            _check(ts, ws.processing[ts] == 0.0, f"long-running on {ws.address} but counted in its occupancy")
        if (ws in s.idle) != (ws.has_free_slot() and ws.status == "running"):
            raise InvariantError(f"worker {ws.address}: in idle is {ws in s.idle} with {len(ws.processing)} tasks")
    stealing.validate(s)
    if s.queued and s.idle:
        raise InvariantError(f"{len(s.queued)} tasks queued while {len(s.idle)} workers have free slots")
    for cs in s.clients.values():
        for ts in cs.wants_what:
            _check(ts, cs in ts.who_wants, f"wanted by {cs.client_key} but not in who_wants")
    _validate_group_counts(s)


_VALIDATORS: dict[str, Callable[[SchedulerState, TaskState], None]] = {
    "released": _validate_released,
    "waiting": _validate_waiting,
    "no-worker": _validate_no_worker,
    "queued": _validate_queued,
    "processing": _validate_processing,
    "memory": _validate_memory,
    "erred": _validate_erred,
}


def _validate_group_counts(s: SchedulerState) -> None:
    """Each task group's counts (what the dashboard reads instead of walking tasks) match its tasks."""
    states: dict[str, Counter[str]] = {name: Counter() for name in s.task_groups}
    nbytes: Counter[str] = Counter()
    for ts in s.tasks.values():
        states[ts.group.name][ts.state] += 1
        if ts.state == "memory":
            nbytes[ts.group.name] += ts.nbytes
    for name, tg in s.task_groups.items():
        counted = {state: n for state, n in tg.states().items() if n}
        if counted != dict(states[name]):
            raise InvariantError(f"task group {name!r}: counts {counted} but holds {dict(states[name])}")
        if tg.nbytes != nbytes[name]:
            raise InvariantError(f"task group {name!r}: counts {tg.nbytes} bytes in memory, holds {nbytes[name]}")
