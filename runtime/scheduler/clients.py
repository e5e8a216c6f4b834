"""Stimuli of clients: connecting, leaving, releasing the keys they held, cancelling.

Functions of the ``SchedulerState`` they change (``self``), split from ``state.py`` as
``membership.py`` is; the state's handler table calls them like its own ``stimulus_*``
methods.  What a client wants lives on both sides: ``ClientState.wants_what`` and
``TaskState.who_wants``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from runtime.comm.messages import CancelledKeys
from runtime.scheduler import stimuli as st
from runtime.scheduler.entities import ClientState, Recs, TaskState, TaskStateState

if TYPE_CHECKING:
    from runtime.scheduler.state import SchedulerState


def add_client(self: SchedulerState, s: st.AddClient) -> Recs:
    if s.client not in self.clients:
        self._new_client(s.client)
    return {}


def remove_client(self: SchedulerState, s: st.RemoveClient) -> Recs:
    cs = self.clients.get(s.client)
    if cs is None:
        return {}
    recs = client_releases(self, cs, [ts.key for ts in cs.wants_what])
    del self.clients[s.client]
    return recs


def client_releases_keys(self: SchedulerState, s: st.ClientReleasesKeys) -> Recs:
    """The client dropped its futures of ``s.keys``: each key is let go of and moved on,
    through all the transitions that follow, before the next, last key first.

    A client's keys come in the order it submitted them, dependencies before dependents,
    so last first a task's dependents are forgotten before it is let go of: it goes straight
    from memory to forgotten, and no table of recommendations grows as large as the release.
    """
    cs = self.clients.get(s.client)
    if cs is None:
        return {}
    tasks, stimulus_id = self.tasks, s.stimulus_id
    for key in reversed(s.keys):
        if (ts := tasks.get(key)) is not None and (finish := _let_go(self, cs, ts)) is not None:
            if more := self._transition_on(ts, finish, stimulus_id):
                self.transitions(more, stimulus_id)
    return {}


def client_releases(self: SchedulerState, cs: ClientState, keys: Iterable[str]) -> Recs:
    """``cs`` no longer wants ``keys``: release or forget each that nobody else wants."""
    recs: Recs = {}
    for key in keys:
        if (ts := self.tasks.get(key)) is not None and (finish := _let_go(self, cs, ts)) is not None:
            recs[key] = finish
    return recs


def _let_go(self: SchedulerState, cs: ClientState, ts: TaskState) -> TaskStateState | None:
    """``cs`` no longer wants ``ts``: the state ``ts`` should move to now, or None."""
    if ts not in cs.wants_what:
        return None
    del cs.wants_what[ts]
    del ts.who_wants[cs]
    if ts.who_wants:
        return None
    if not ts.dependents:
        return "forgotten"
    return "released" if self._is_unneeded(ts) else None


def cancel(self: SchedulerState, s: st.Cancel) -> Recs:
    """Stop computing ``keys`` and everything depending on them, for this client.

    With ``force``, for every client; else a key another client still wants goes on.
    """
    cs = self.clients.get(s.client)
    if cs is None:
        return {}
    recs: Recs = {}
    seen: set[TaskState] = set()
    stack = [ts for k in s.keys if (ts := self.tasks.get(k)) is not None]
    while stack:
        ts = stack.pop()
        if ts in seen or (not s.force and ts.who_wants.keys() - {cs}):
            continue
        seen.add(ts)
        stack.extend(ts.dependents)
        for client in list(ts.who_wants) if s.force else [cs]:
            if ts in client.wants_what:
                self._to_client(client.client_key, CancelledKeys((ts.key,)))
                recs.update(client_releases(self, client, [ts.key]))
    return recs


HANDLERS = {
    st.AddClient: add_client,
    st.RemoveClient: remove_client,
    st.ClientReleasesKeys: client_releases_keys,
    st.Cancel: cancel,
}
