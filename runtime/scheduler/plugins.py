"""Scheduler plugins: the one way code outside the state machine follows what it does.

::

    message ──► Scheduler.handle_stimulus ──► SchedulerState.handle ──► messages out
                                 │
                                 └──► Plugins.after(stimulus) ──► each plugin's hooks:
                                        add_client / remove_client / add_worker /
                                        remove_worker / update_graph, then
                                        transition(key, start, finish) for each
                                        transition the stimulus caused, in order

The state machine does not know plugins exist.  Transitions reach them through its
transition log: while some plugin has a ``transition`` hook, the shell swaps the log for a
``TransitionTap``, a deque that also keeps what was appended since the last stimulus;
with none, the log is the plain deque and the hot path pays nothing.

Hooks run on the scheduler's event loop, after the stimulus's messages left.  A hook that
raises is logged and its plugin removed: a plugin never breaks the scheduler.  The
coordination primitives, published datasets and other extensions are plugins too
(``runtime/scheduler/extensions/``); users add theirs with
``Client.register_plugin(plugin)``, as in Dask.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.scheduler import stimuli as st

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

logger = logging.getLogger("runtime.scheduler.plugins")


class SchedulerPlugin:
    """Base class of scheduler plugins: override the hooks you need (Dask's interface).

    ``start`` may be a coroutine function; so may ``close``.  Every hook gets keyword
    arguments it may ignore (``**kwargs``), so hooks can grow new ones.
    """

    #: the plugin's name: a plugin registered under a name already taken replaces the other
    name: str = ""
    #: whether its ``transition`` hook is to be called now: a plugin that needs transitions
    #: only at times sets it False meanwhile and calls ``scheduler.plugins.rehook()`` when it
    #: changes (with no plugin wanting them the state machine's log is a plain deque)
    wants_transitions: bool = True

    def start(self, scheduler: Scheduler) -> Any:
        """Called once when the plugin is added (the scheduler is running)."""

    def close(self) -> Any:
        """Called when the scheduler closes or the plugin is removed."""

    def update_graph(
        self, scheduler: Scheduler, *, client: str, keys: set[str], tasks: list[str], **kwargs: Any
    ) -> None:
        """A client submitted ``tasks`` (keys new to the scheduler) and wants ``keys``; called
        after the stimulus, before its transitions.  ``span_names``/``span_ids``: the
        ``runtime.span`` they were submitted in, outermost first (empty outside one)."""

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        """Task ``key`` moved from ``start`` to ``finish``.  Out of ``processing`` on a worker's
        report, also ``worker``, ``startstops`` (``({"action": "compute", "start": t, "stop": t},)``,
        the worker's clock) and, when it finished, ``nbytes``."""

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """A worker (its address) joined."""

    def remove_worker(self, scheduler: Scheduler, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        """A worker left (``cause`` says why)."""

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """A client (its id) connected."""

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        """A client disconnected."""


def _overrides(plugin: object, hook: str) -> bool:
    """Whether ``plugin`` has a ``hook`` of its own (not SchedulerPlugin's empty one)."""
    method = getattr(type(plugin), hook, None)
    return callable(getattr(plugin, hook, None)) and method is not getattr(SchedulerPlugin, hook, None)


class TransitionTap(deque):
    """The state machine's transition log, also keeping the entries added since ``drain``."""

    def __init__(self, log: deque):
        super().__init__(log, maxlen=log.maxlen)
        #: (key, start, finish, recommendations, stimulus_id) appended since the last drain
        self.pending: list[tuple] = []

    def append(self, entry: tuple) -> None:
        deque.append(self, entry)
        self.pending.append(entry)

    def drain(self) -> list[tuple]:
        entries, self.pending = self.pending, []
        return entries


class Plugins:
    """The scheduler's plugins by name, and the calls of their hooks."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: plugins by name, in the order added
        self.plugins: dict[str, Any] = {}
        #: for each hook, the plugins that have one of their own (so a stimulus only calls those)
        self._hooked: dict[str, list[tuple[str, Any]]] = {}
        #: the workers plugins were told of (a node that leaves takes its workers with it)
        self.workers: set[str] = set()
        #: the state's transition log while some plugin has a transition hook
        self._tap: TransitionTap | None = None

    def add(self, plugin: Any, name: str = "") -> str:
        """Add ``plugin`` (replacing one of the same name) and start it; returns its name."""
        name = name or getattr(plugin, "name", "") or f"{type(plugin).__name__}-{id(plugin):x}"
        if name in self.plugins:
            self.remove(name, "replaced")
        self.plugins[name] = plugin
        self._rehook()
        if _overrides(plugin, "start"):
            self._call(name, plugin, "start", self.scheduler)
        return name

    def remove(self, name: str, why: str = "removed") -> None:
        plugin = self.plugins.pop(name, None)
        if plugin is None:
            return
        logger.info("scheduler plugin %s %s", name, why)
        self._rehook()
        if _overrides(plugin, "close"):
            self._call(name, plugin, "close", removing=False)

    def close(self) -> None:
        for name in list(self.plugins):
            self.remove(name, "closed with the scheduler")

    def rehook(self) -> None:
        """A plugin's ``wants_transitions`` changed: call (or stop calling) its transition hook."""
        self._rehook()

    def _rehook(self) -> None:
        hooks = ("update_graph", "transition", "add_worker", "remove_worker", "add_client", "remove_client")
        self._hooked = {h: [(n, p) for n, p in self.plugins.items() if _overrides(p, h)] for h in hooks}
        self._hooked["transition"] = [
            (n, p) for n, p in self._hooked["transition"] if getattr(p, "wants_transitions", True)
        ]
        state = self.scheduler.state
        tapped = isinstance(state.transition_log, TransitionTap)
        if self._hooked["transition"] and not tapped:
            state.transition_log = self._tap = TransitionTap(state.transition_log)
        elif not self._hooked["transition"] and tapped:
            state.transition_log = deque(state.transition_log, maxlen=state.transition_log.maxlen)
            self._tap = None

    def _call(self, name: str, plugin: Any, hook: str, *args: Any, removing: bool = True, **kwargs: Any) -> None:
        """One hook of one plugin; one that raises (or whose coroutine does) is logged and removed."""
        try:
            result = getattr(plugin, hook)(*args, **kwargs)
        except Exception:
            self._failed(name, plugin, hook, removing)
            return
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(
                lambda t: (
                    t.cancelled() or t.exception() is None or self._failed(name, plugin, hook, removing, t.exception())
                )
            )

    def _failed(self, name: str, plugin: Any, hook: str, removing: bool, error: BaseException | None = None) -> None:
        logger.error("scheduler plugin %s raised in %s; removing it", name, hook, exc_info=error or True)
        if removing and self.plugins.get(name) is plugin:
            self.remove(name, f"removed after it raised in {hook}")

    def _each(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for name, plugin in self._hooked.get(hook, ()):
            self._call(name, plugin, hook, *args, **kwargs)

    def after(self, stimulus: st.Stimulus) -> None:
        """Tell the plugins what ``stimulus`` did: its own hook, then its transitions."""
        hook = _HOOKS.get(type(stimulus))
        if hook is not None:
            hook(self, stimulus)
        if self._tap is not None and self._tap.pending:
            # A worker's report reaches the transition of the task it is about, out of
            # processing, as keywords (as in Dask): who ran it, when, and (finished) its size.
            report = _REPORTS.get(type(stimulus))
            reported = report(stimulus) if report is not None else None
            for key, start, finish, _recs, stimulus_id in self._tap.drain():
                if start == finish:  # a step that moved it nowhere (waiting on its way to no-worker)
                    continue
                if reported is not None and start == "processing" and key == stimulus.key:  # type: ignore[attr-defined]
                    self._each("transition", key, start, finish, stimulus_id=stimulus_id, **reported)
                else:
                    self._each("transition", key, start, finish, stimulus_id=stimulus_id)


def _update_graph(p: Plugins, s: st.UpdateGraph) -> None:
    tasks = [t.key for t in s.tasks]
    p._each(
        "update_graph", p.scheduler, client=s.client, keys=set(s.wanted), tasks=tasks, stimulus_id=s.stimulus_id,
        span_names=s.span_names, span_ids=s.span_ids,  # runtime.span's tags and ids (empty outside one)
    )  # fmt: skip


def _report(s: st.TaskFinished | st.TaskErred) -> dict[str, Any]:
    return {"worker": s.worker, "startstops": ({"action": "compute", "start": s.start, "stop": s.stop},)}


#: a worker's report -> the keywords the transition of its task gets
_REPORTS: dict[type, Callable[[Any], dict[str, Any]]] = {
    st.TaskFinished: lambda s: {**_report(s), "nbytes": s.nbytes},
    st.TaskErred: _report,
}


def _add_worker(p: Plugins, s: st.AddWorker) -> None:
    if s.address in p.scheduler.state.workers:
        p.workers.add(s.address)
        p._each("add_worker", p.scheduler, s.address)


def _remove_workers(p: Plugins, s: st.RemoveWorker | st.RemoveNode) -> None:
    """A worker, or a node with its workers, left: each worker no longer live is told of once."""
    gone = p.workers - p.scheduler.state.workers.keys()
    p.workers -= gone
    for address in sorted(gone):
        p._each("remove_worker", p.scheduler, address, stimulus_id=s.stimulus_id, cause=s.cause)


#: stimulus -> the hook that tells the plugins of it
_HOOKS: dict[type, Callable[[Plugins, Any], None]] = {
    st.UpdateGraph: _update_graph,
    st.AddWorker: _add_worker,
    st.RemoveWorker: _remove_workers,
    st.RemoveNode: _remove_workers,
    st.AddClient: lambda p, s: p._each("add_client", p.scheduler, s.client),
    st.RemoveClient: lambda p, s: p._each("remove_client", p.scheduler, s.client, stimulus_id=s.stimulus_id),
}
