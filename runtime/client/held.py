"""Graphs held back in the client until the values their tasks need exist on the scheduler.

A small actor call's result lives only in the caller's process (``FutureState.local``) until
it is passed to a task; then the client gives it to the scheduler (``update-data``).  While
that call still runs there is nothing to give, and waiting for it inside ``.remote()`` would
block the caller until the actor answers: a ``cancel`` of what it submitted would never be
sent.  So the client holds the task's ``update-graph`` instead, and ``.remote()`` returns at
once::

    .remote(pending actor result) ──► hold(graph): waits on that key
    .remote(a held task's future) ──► hold(graph): waits on the held task's key
    the actor's result arrives ──► update-data, then arrived(key): every graph no longer
                                   waiting leaves, in order, and its keys arrive in turn
    the call failed ──────────────► the held tasks that need it fail with its error
    cancel ───────────────────────► held tasks (and held tasks that need them) are dropped and
                                    cancelled here; the scheduler never sees them
    a held task's argument dropped ► released once no held task needs it

A message that names no held or pending key leaves at once, as before: a held graph delays
only what depends on it.  Held state is guarded by the client's futures lock, and held
graphs leave under it, so a later message that uses a key always follows the graph that
makes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from runtime.client.future import CANCELLED, PENDING
from runtime.comm import messages as m
from runtime.errors import TaskCancelledError

if TYPE_CHECKING:
    from runtime.client.future import Future
    from runtime.client.owner import FutureTable


class _Graph:
    """One held ``UpdateGraph`` message."""

    __slots__ = ("tasks", "wanted", "priority", "span", "waiting", "released")

    def __init__(
        self, tasks: list[m.TaskSpec], wanted: list[str], priority: int, span: m.SpanPath | None, waiting: set[str]
    ):
        #: its tasks (``client.task_spec``s)
        self.tasks = tasks
        self.wanted = wanted
        self.priority = priority
        #: the ``runtime.span`` they were submitted in
        self.span = span
        #: keys its tasks need that the scheduler does not know yet
        self.waiting = waiting
        #: wanted keys whose last future was dropped meanwhile: released after it leaves
        self.released: list[str] = []


class HeldGraphs:
    """The held graphs of one cluster client; ``send`` puts a message in its outbox."""

    def __init__(self, futures: FutureTable, send: Callable[[m.Message], None]):
        self.futures = futures
        self._send = send
        #: keys of actor calls still running that a held graph may need
        self.pending: set[str] = set()
        #: each held task's key -> its graph
        self.unsent: dict[str, _Graph] = {}
        #: a key the scheduler does not know yet -> the graphs waiting on it (an ordered set)
        self._waiters: dict[str, dict[_Graph, None]] = {}
        #: keys dropped by their futures while held, sent: released once no held task needs them
        self._releasing: dict[str, None] = {}

    def __bool__(self) -> bool:
        return bool(self.pending or self.unsent or self._releasing)

    def expect(self, key: str) -> None:
        """``key`` is a running actor call's result that a task about to be submitted needs."""
        with self.futures.lock:
            self.pending.add(key)

    def hold(self, tasks: list[m.TaskSpec], wanted: list[str], priority: int, span: m.SpanPath | None = None) -> bool:
        """Hold the graph if one of its tasks needs a pending or held key; False if it may go.
        Call with the futures' lock held, and send the graph under it if it may go."""
        own = {t.key for t in tasks}
        waiting = {d for t in tasks for d in t.dependencies if (d in self.pending or d in self.unsent) and d not in own}
        if not waiting:
            return False
        graph = _Graph(list(tasks), list(wanted), priority, span, waiting)
        for key in own:
            self.unsent[key] = graph
        for key in waiting:
            self._waiters.setdefault(key, {})[graph] = None
        return True

    def arrived(self, key: str, failed: Future | None = None) -> None:
        """The pending ``key`` is known to the scheduler now (``failed``: the call failed, and
        so do the held tasks that need it)."""
        with self.futures.changing():
            self.pending.discard(key)
            if failed is not None:
                self._drop({key}, lambda fs: self.futures.fail_like(fs, failed))
            else:
                self._known([key])

    def release(self, key: str) -> bool:
        """The last future of ``key`` was dropped: True if it is held, or a held task needs it
        (an argument: a future, an actor's handle); it is released once its graph leaves, or
        once no held task needs it.  Call with the futures' lock held."""
        graph = self.unsent.get(key)
        if graph is not None:
            graph.released.append(key)
            return True
        if any(key in t.dependencies for graph in set(self.unsent.values()) for t in graph.tasks):
            self._releasing[key] = None
            return True
        return False

    def cancel(self, keys: Iterable[str]) -> None:
        """Cancel the held tasks among ``keys`` and every held task that needs one of ``keys``."""
        with self.futures.changing():
            error = TaskCancelledError("cancelled before it was sent: it was waiting for an actor call's result")
            self._drop(set(keys), lambda fs: self.futures.fail(fs, error, CANCELLED))

    def clear(self) -> None:
        with self.futures.lock:
            self.pending.clear()
            self.unsent.clear()
            self._waiters.clear()
            self._releasing.clear()

    # -- with the futures' lock held -------------------------------------------------------

    def _known(self, keys: list[str]) -> None:
        """``keys`` are known to the scheduler: graphs no longer waiting leave, their keys known in turn."""
        while keys:
            key = keys.pop()
            for graph in self._waiters.pop(key, {}):
                graph.waiting.discard(key)
                if not graph.waiting:
                    keys.extend(self._leave(graph))
        if self._releasing:
            needed = {d for graph in set(self.unsent.values()) for t in graph.tasks for d in t.dependencies}
            free = [k for k in self._releasing if k not in needed]
            if free:
                self._send(m.ReleaseKeys(tuple(free)))
                for key in free:
                    del self._releasing[key]

    def _leave(self, graph: _Graph) -> list[str]:
        self._send(m.UpdateGraph(tuple(graph.tasks), tuple(graph.wanted), graph.priority, graph.span))
        self._releasing.update(dict.fromkeys(graph.released))  # once the graphs that need them have left too
        keys = [t.key for t in graph.tasks]
        for key in keys:
            del self.unsent[key]
        return keys

    def _drop(self, roots: set[str], outcome: Callable) -> None:
        """Take out of their graphs the held tasks among ``roots`` and those needing one of
        them (at any depth); ``outcome(future_state)`` settles each one's future."""
        dropped = set(roots)
        graphs = {self.unsent[k]: None for k in roots if k in self.unsent}
        for key in roots:
            graphs.update(self._waiters.get(key, {}))
        changed = True
        while changed:
            changed = False
            for graph in list(graphs):
                keep = []
                for task in graph.tasks:
                    if task.key in dropped or any(d in dropped for d in task.dependencies):
                        if task.key not in dropped:
                            dropped.add(task.key)
                            graphs.update(self._waiters.get(task.key, {}))
                            changed = True
                    else:
                        keep.append(task)
                if len(keep) != len(graph.tasks):
                    graph.tasks = keep
        for key in dropped:
            if self.unsent.pop(key, None) is not None:
                fs = self.futures.states.get(key)
                if fs is not None and fs.status == PENDING:
                    outcome(fs)
        ready = []
        for graph in graphs:
            graph.wanted = [k for k in graph.wanted if k not in dropped]
            needed = {d for t in graph.tasks for d in t.dependencies}
            for key in [k for k in graph.waiting if k not in needed]:
                graph.waiting.discard(key)
                self._waiters.get(key, {}).pop(graph, None)
            if graph.tasks and not graph.waiting:
                ready.append(graph)
        for key in [k for k, w in self._waiters.items() if not w]:
            del self._waiters[key]
        known = []
        for graph in ready:
            known.extend(self._leave(graph))
        self._known(known)
