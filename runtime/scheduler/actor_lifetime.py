"""A non-detached actor ends when its last handle is gone, in every process (Ray's rule).

The handles are counted by the state machine itself: each such actor has a *handle key*
(``handles-<actor id>``, see runtime/client/handle_refs.py), a value in memory without a
task, like a ``put``.  Whoever may still use a handle wants that key: the clients holding
handles (their futures of it, released in batches when the last handle of a process is
collected), tasks whose arguments carry a handle (a dependency), values that contain one
(``refs-of-<key>`` holders, runtime/scheduler/borrowed.py)::

    register-actor ── UpdateData(creator) ──► key in memory, wanted by the creator
    get-actor ─────── UpdateGraph(asker) ───► wanted by the asker too
    nobody needs it ──► its value is dropped (memory -> released or forgotten) ──► the
                        actor ends (as kill(no_restart=True) ends it): its name is free

A caller keeps its handle's future while it has calls in flight, so an actor whose handles
are gone ends only after the calls made through them are answered.  A detached actor has no
handle key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.scheduler import stimuli as st

if TYPE_CHECKING:
    from runtime.scheduler.actors import ActorInfo, ActorRegistry
    from runtime.scheduler.server import Scheduler

#: why an actor ended this way (its callers' ActorDiedError says it)
LAST_HANDLE_GONE = "its last handle was dropped (non-detached actors end then; use lifetime='detached' to outlive it)"


class ActorLifetime:
    """Ends each counted actor when the state machine drops its handle key's value (the
    state lists the dropped keys it was asked to watch: ``SchedulerState.watched``)."""

    def __init__(self, scheduler: Scheduler, registry: ActorRegistry):
        self.scheduler = scheduler
        self.registry = registry
        #: handle key -> the actor whose handles it counts
        self.counted: dict[str, str] = {}

    def check(self, msg: dict) -> str | None:
        """What is wrong with a ``register-actor`` request's handle key and value, if anything."""
        key, value = msg.get("handle_key") or "", msg.get("handle_value", b"")
        if not isinstance(key, str) or not isinstance(value, bytes):
            return f"register-actor: handle_key must be a str and handle_value bytes, not {key!r} and {value!r}"
        if key and key in self.scheduler.state.tasks:
            return f"register-actor: handle_key {key!r} names a key the scheduler has already"
        return None

    def register(self, info: ActorInfo, client: str, key: str, value: bytes) -> None:
        """``client`` made the actor ``info`` and holds its first handle."""
        s = self.scheduler
        self.counted[key] = info.actor_id
        s.state.watched.add(key)
        s.handle_stimulus(st.UpdateData(f"actor-handles-{info.actor_id}", client, key, value, len(value)))

    def hand_out(self, key: str, peer: str) -> None:
        """``peer`` gets a handle (``get_actor``): it holds the key before it has the answer."""
        s = self.scheduler
        if key in self.counted and key in s.state.tasks:
            s.handle_stimulus(st.UpdateGraph(f"get-actor-{next(s._ids)}", peer, (), (key,)))

    def dropped(self, keys: list[str]) -> None:
        """No one holds these handle keys any more (the state dropped their values): their actors end."""
        for key in keys:
            actor_id = self.counted.pop(key, None)
            if actor_id is not None:
                self.registry.end(actor_id, LAST_HANDLE_GONE)
