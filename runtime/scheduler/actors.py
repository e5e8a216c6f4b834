"""Where every actor lives: the scheduler's actor registry (part of its I/O shell).

An actor starts as an ordinary task, its *creation task*, which the registry submits to the
state machine on the creator's behalf as the pseudo-client ``ACTORS_CLIENT``; so placement,
restrictions and resources apply as for any task.  The worker that runs it keeps the
instance and reports ``actor-started`` with the address its callers connect to.  Callers ask
the registry for that address (``actor-location``, answered once the actor is up) and then
call the worker directly; method calls never pass through the scheduler.

::

    pending ──actor-started──► alive ──worker died, restarts left──► restarting ──► alive
       │                         │
       └──constructor raised──►  dead ◄──kill / worker died / owner gone / last handle gone

The registry keeps each creation task's spec, so an actor whose worker dies is built again
(``max_restarts``) from the same constructor arguments.  A non-detached actor ends once no
handle to it is left (runtime/scheduler/actor_lifetime.py counts them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from runtime.comm.messages import ActorStarted, KeyErred, KillActor, Message, TaskSpec
from runtime.scheduler import stimuli as st

if TYPE_CHECKING:
    from runtime.scheduler.actor_lifetime import ActorLifetime

logger = logging.getLogger("runtime.scheduler.actors")

#: the pseudo-client that wants every creation task
ACTORS_CLIENT = "actors"
#: seconds a caller that lost its connection to an actor waits for news of it before it is
#: sent to the same address again (a worker's death reaches the scheduler well within this)
RELOCATE_PATIENCE = 3.0


@dataclass(slots=True)
class ActorInfo:
    #: unique id, chosen by the creating client
    actor_id: str
    #: the name it is registered under (``get_actor``), or ""
    name: str
    class_name: str
    #: its public method names, so handles obtained by name can check calls
    methods: list[str]
    #: the client that created it; its actors die with it unless detached
    owner: str
    detached: bool
    #: how many more times it is rebuilt when its worker dies (-1: always)
    restarts_left: int
    #: the creation task (each restart runs it again under a key of its own)
    task: TaskSpec
    #: pending, alive, restarting or dead
    state: str = "pending"
    #: a pickled ActorHandle of it, for ``get_actor`` (it knows the class: signatures, num_returns)
    handle: bytes = b""
    #: the key whose wanters hold its handles ("" if detached: it lives until killed)
    handle_key: str = ""
    #: the creation task in flight
    creation_key: str = ""
    worker: str = ""
    #: where callers connect (the worker's call server)
    address: str = ""
    #: why it died, once dead
    cause: str = ""
    generation: int = 0
    #: location requests waiting for it to start
    waiters: list[asyncio.Future] = field(default_factory=list)

    def location(self) -> dict:
        if self.state == "dead":
            return {"error": f"actor {self.actor_id} ({self.class_name}) is dead: {self.cause}"}
        return {"worker": self.worker, "address": self.address}


class ActorRegistry:
    def __init__(self, handle_stimulus: Callable[[st.Stimulus], None], send: Callable[[str, Message], None]):
        self._handle = handle_stimulus
        self._send = send
        #: every actor by id, dead ones included (so late callers learn why)
        self.actors: dict[str, ActorInfo] = {}
        #: live actors by name
        self.named: dict[str, str] = {}
        #: creation key -> actor id
        self._creating: dict[str, str] = {}
        #: ends non-detached actors when their last handle is gone (set by the scheduler)
        self.lifetime: ActorLifetime | None = None

    # -- requests from clients -------------------------------------------------------

    def register(self, msg: dict, client: str) -> dict:
        name = msg.get("name") or ""
        bad = self.lifetime.check(msg) if self.lifetime is not None else None
        if bad:
            return {"error": bad}
        if name and name in self.named:
            return {"error": f"an actor named {name!r} already exists; use runtime.get_actor({name!r}) to reach it"}
        info = ActorInfo(
            msg["actor"], name, msg["class_name"], list(msg["methods"]), client, bool(msg.get("detached")),
            int(msg.get("max_restarts", 0)), msgspec.convert(msg["task"], TaskSpec),
        )  # fmt: skip
        info.handle = msg.get("handle") or b""
        self.actors[info.actor_id] = info
        if name:
            self.named[name] = info.actor_id
        if msg.get("handle_key") and not info.detached and self.lifetime is not None:
            info.handle_key = msg["handle_key"]
            self.lifetime.register(info, client, info.handle_key, msg["handle_value"])
        self._create(info)
        if msg.get("hold"):  # the caller wants the creation task itself (Dask's actor future waits on it)
            hold = st.UpdateGraph(f"hold-{info.actor_id}", client, (), (info.creation_key,), 0)
            asyncio.get_running_loop().call_soon(self._handle, hold)
        return {"ok": True}

    def locate(self, actor_id: str, not_at: str = "") -> dict | asyncio.Future:
        """Where the actor is, once it is up.  ``not_at``: the address whose connection the
        caller just lost: while the actor is still known there, its worker may be dying and
        the scheduler not told yet, so the answer waits for news (a restart elsewhere, its
        death), or ``RELOCATE_PATIENCE`` seconds if none comes (the drop was the network's)."""
        info = self.actors.get(actor_id)
        if info is None:
            return {"error": f"no actor with id {actor_id!r} is known to this cluster"}
        if info.state == "dead" or (info.state == "alive" and (not not_at or info.address != not_at)):
            return info.location()
        fut = asyncio.get_running_loop().create_future()
        info.waiters.append(fut)
        if info.state == "alive":  # at ``not_at`` still
            asyncio.get_running_loop().call_later(RELOCATE_PATIENCE, self._answer, fut, info)
        return fut

    @staticmethod
    def _answer(fut: asyncio.Future, info: ActorInfo) -> None:
        if not fut.done():
            fut.set_result(info.location())

    def by_name(self, name: str, peer: str) -> dict:
        actor_id = self.named.get(name)
        if actor_id is None:
            known = ", ".join(sorted(self.named)) or "none"
            return {"error": f"no live actor is named {name!r} (named actors: {known})"}
        info = self.actors[actor_id]
        if info.handle_key and self.lifetime is not None:
            self.lifetime.hand_out(info.handle_key, peer)
        return {
            "actor": actor_id, "class_name": info.class_name, "methods": info.methods, "handle": info.handle,
            "handle_key": info.handle_key,
        }  # fmt: skip

    def kill(self, actor_id: str, no_restart: bool = True, why: str = "it was killed with runtime.kill()") -> dict:
        info = self.actors.get(actor_id)
        if info is None:
            return {"error": f"no actor with id {actor_id!r} is known to this cluster"}
        if info.state != "dead":
            worker = info.worker
            if not no_restart and info.restarts_left != 0 and worker:
                self._restart(info, "it was killed with no_restart=False")
            else:
                self._die(info, why)
            if worker:
                self._send(worker, KillActor(actor_id, why if info.state == "dead" else "it was killed"))
        return {"ok": True}

    def end(self, actor_id: str, why: str) -> None:
        """The actor's last handle is gone: it ends as ``kill(no_restart=True)`` ends it."""
        info = self.actors.get(actor_id)
        if info is not None and not info.detached:
            self.kill(actor_id, True, why)

    # -- events ------------------------------------------------------------------------

    def started(self, msg: ActorStarted) -> None:
        info = self.actors.get(msg.actor)
        if info is None:
            return
        if info.state == "dead":  # killed while it was starting
            self._send(msg.worker, KillActor(info.actor_id, info.cause))
            return
        info.state, info.worker, info.address = "alive", msg.worker, msg.address
        self._wake(info)

    def on_client_messages(self, batch: list[Message]) -> None:
        """What the state machine tells ``ACTORS_CLIENT`` about creation tasks."""
        for msg in batch:
            key = getattr(msg, "key", "")
            actor_id = self._creating.pop(key, None)
            if actor_id is None:
                continue
            info = self.actors[actor_id]
            if type(msg) is KeyErred and info.state != "dead":
                self._die(info, f"its constructor failed: {msg.text or 'see the exception'}")
            # Done with the creation task either way: the actor lives on in its worker.
            loop = asyncio.get_running_loop()
            loop.call_soon(self._handle, st.ClientReleasesKeys(f"actor-created-{key}", ACTORS_CLIENT, (key,)))

    def workers_gone(self, live: set[str] | dict, cause: str) -> None:
        """Actors on workers that are no longer in ``live``: rebuild them or declare them dead."""
        for info in list(self.actors.values()):
            if info.state == "alive" and info.worker not in live:
                why = f"its worker {info.worker} died ({cause})"
                if info.restarts_left != 0:
                    self._restart(info, why)
                else:
                    self._die(info, why)

    def client_gone(self, client: str) -> None:
        for info in list(self.actors.values()):
            if info.owner == client and not info.detached and info.state != "dead":
                worker = info.worker
                self._die(info, f"its owner {client} disconnected (use lifetime='detached' to outlive it)")
                if worker:
                    self._send(worker, KillActor(info.actor_id, info.cause))

    # -- internals -----------------------------------------------------------------------

    def _create(self, info: ActorInfo) -> None:
        key = info.creation_key = f"{info.task.key}-{info.generation}" if info.generation else info.task.key
        self._creating[key] = info.actor_id
        task = msgspec.structs.replace(info.task, key=key)
        graph = st.UpdateGraph(f"create-{key}", ACTORS_CLIENT, (task,), (key,), 0)
        asyncio.get_running_loop().call_soon(self._handle, graph)

    def _restart(self, info: ActorInfo, why: str) -> None:
        logger.warning("actor %s restarts: %s", info.actor_id, why)
        if info.restarts_left > 0:
            info.restarts_left -= 1
        info.state, info.worker, info.address = "restarting", "", ""
        info.generation += 1
        self._create(info)

    def _die(self, info: ActorInfo, why: str) -> None:
        logger.info("actor %s is dead: %s", info.actor_id, why)
        info.state, info.cause, info.worker, info.address = "dead", why, "", ""
        if self.named.get(info.name) == info.actor_id:
            del self.named[info.name]
        self._wake(info)

    def _wake(self, info: ActorInfo) -> None:
        waiters, info.waiters = info.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(info.location())
