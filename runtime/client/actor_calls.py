"""Actor method calls from this process: straight to the actor's worker, in the order made.

::

    user thread: handle.m.remote() ──► outbox ──► client loop: route per actor (FIFO)
                                                    │ location from the scheduler, once
                                                    ▼
    FutureState ◄── actor-result / actor-error ◄── one connection per actor

Each actor has one *route* in this process: a FIFO of calls, the actor's address and the
connection to its worker.  A call leaves only when every call before it has left and its
own future arguments are done, so calls reach the actor in the order they were made.
Results come back on the same connection and never pass through the scheduler: a small
one lives only in this process (its ``FutureState.local`` is set) until it is passed to a
task, a large one is in the store and registered with the scheduler like a ``put``.  The
calls' futures belong to the cluster client and live in its ``FutureTable``, through which
their results are settled as the scheduler's are.
If the worker's connection drops, the calls in flight fail with ``ActorDiedError`` and the
route asks the scheduler where the actor lives now (it may have been restarted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from runtime.client.future import FINISHED, PENDING, Future, check_open_deps
from runtime.comm import messages as m
from runtime.comm import serialize
from runtime.comm.core import Comm, ThreadOutbox, connect
from runtime.errors import ActorDiedError

if TYPE_CHECKING:
    from runtime.client.owner import FutureTable

logger = logging.getLogger("runtime.client.actors")

#: how long calls wait for an actor's worker to answer before they fail
REACH_TIMEOUT = 60.0


class _Call:
    """A call made and not sent yet: it leaves once its future arguments are done."""

    __slots__ = ("key", "actor_id", "method", "args", "deps")

    def __init__(self, key: str, actor_id: str, method: str, args: bytes, deps: dict[str, Future]):
        self.key = key
        self.actor_id = actor_id
        self.method = method
        #: the pickled (args, kwargs)
        self.args = args
        #: the futures among the arguments: they ride along, keeping their values alive
        self.deps = deps


class _Relocate:
    """The actor moved: calls made after this ask the scheduler where it is."""

    __slots__ = ("actor_id",)

    def __init__(self, actor_id: str):
        self.actor_id = actor_id


class _Route:
    __slots__ = ("actor_id", "queue", "comm", "error", "locating")

    def __init__(self, actor_id: str):
        self.actor_id = actor_id
        #: calls not sent yet, in the order they were made
        self.queue: deque[_Call] = deque()
        #: the connection to the actor's worker, once located
        self.comm: Comm | None = None
        #: why the actor cannot be reached (it is dead)
        self.error: str | None = None
        self.locating = False


class ActorCalls:
    """The actor calls of one cluster client.

    ``futures`` is the client's table; ``new_key`` names a call; ``ask`` (on the loop thread)
    asks the scheduler a question; ``to_scheduler`` (on the loop thread) sends it messages.
    """

    def __init__(
        self,
        futures: FutureTable,
        loop: asyncio.AbstractEventLoop,
        new_key: Callable[[str], str],
        ask: Callable[..., Awaitable[Any]],
        to_scheduler: Callable[[list[m.Message]], None],
    ):
        self.futures = futures
        self._new_key = new_key
        self._ask = ask
        self._to_scheduler = to_scheduler
        self._outbox = ThreadOutbox(loop, self._dispatch)
        #: one route per actor called from this process
        self._routes: dict[str, _Route] = {}
        #: connections by (worker call address, actor), and the calls in flight on each (key ->
        #: actor).  One per actor, not per worker: the worker runs each connection's calls on one
        #: thread, so calls to two actors of one worker on one connection would wait for each
        #: other, and an actor calling another of its worker from this process would wait
        #: forever behind its own call
        self._comms: dict[tuple[str, str], Comm] = {}
        self._inflight: dict[Comm, dict[str, str]] = {}
        #: connections to actors that were killed or moved: closed once no call is in flight
        self._retired: set[Comm] = set()
        #: routes whose head call waits for a future argument
        self._blocked: set[_Route] = set()
        #: node id -> its agent's address, for arguments stored on other nodes
        self._agents: dict[str, str] | None = None

    # -- user threads ------------------------------------------------------------------

    def call(self, actor_id: str, method: str, args: tuple, kwargs: dict) -> Future:
        args_bytes, deps = serialize.dumps_args(method, args, kwargs)
        check_open_deps(deps)
        future = self.futures.future(self._new_key(method))
        future._state.local = True
        self._outbox.put(_Call(future.key, actor_id, method, args_bytes, deps))  # type: ignore[arg-type]
        return future

    def relocate(self, actor_id: str) -> None:
        """The actor was killed or restarted: calls made from now on ask the scheduler where
        it is (or why it is dead) instead of going to its old worker."""
        self._outbox.put(_Relocate(actor_id))  # type: ignore[arg-type]

    # -- the client's loop thread ------------------------------------------------------------

    def _dispatch(self, batch: list[_Call | _Relocate]) -> None:
        for call in batch:
            if type(call) is _Relocate:  # in order with the calls: those made before still go
                route = self._routes.get(call.actor_id)
                if route is not None and route.comm is not None:
                    self._retire(route.comm)
                    route.comm = None
                continue
            assert type(call) is _Call
            route = self._routes.get(call.actor_id)
            if route is None:
                route = self._routes[call.actor_id] = _Route(call.actor_id)
            route.queue.append(call)
            self._pump(route)

    def futures_changed(self) -> None:
        """Some futures finished: calls waiting on them as arguments may go now."""
        if self._blocked:
            blocked, self._blocked = self._blocked, set()
            for route in blocked:
                self._pump(route)

    def _pump(self, route: _Route) -> None:
        """Send what can go of ``route``'s calls, in order."""
        if route.error is not None:
            while route.queue:
                self._fail(route.queue.popleft().key, route.error)
            return
        if route.comm is None:
            if not route.locating and route.queue:
                route.locating = True
                asyncio.ensure_future(self._locate(route))
            return
        while route.queue:
            call = route.queue[0]
            deps = call.deps
            if any(f._state.status == PENDING for f in deps.values()):
                self._blocked.add(route)
                return
            route.queue.popleft()
            bad = next((f for f in deps.values() if f._state.status != FINISHED), None)
            if bad is not None:  # an argument failed: so does the call, blaming it
                with self.futures.changing():
                    fs = self.futures.states.get(call.key)
                    if fs is not None:
                        self.futures.fail_like(fs, bad)
                continue
            values = {k: f._state.value for k, f in deps.items()}
            msg = m.ActorCall(call.key, call.actor_id, call.method, call.args, values, self._sources(values.values()))
            self._inflight[route.comm][call.key] = route.actor_id
            route.comm.send(msg)

    def _sources(self, located: Any) -> dict[str, str]:
        nodes = {v.node for v in located if type(v) is m.StoreRef}
        if not nodes or self._agents is None:
            return {}
        return {n: self._agents[n] for n in nodes if n in self._agents}

    async def _locate(self, route: _Route) -> None:
        """Ask the scheduler where the actor lives (it answers once the actor is up) and connect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REACH_TIMEOUT
        try:
            if self._agents is None:
                nodes = (await self._ask("identity"))["nodes"]
                self._agents = {n: info.get("address", "") for n, info in nodes.items()}
            while route.comm is None:
                where = await self._ask("actor-location", actor=route.actor_id)
                if "error" in where:
                    route.error = where["error"]
                    break
                try:
                    route.comm = await self._connect(where["address"], route.actor_id)
                except OSError as e:  # its worker just died: the scheduler will know soon
                    if loop.time() > deadline:
                        route.error = f"cannot reach actor {route.actor_id} at {where['address']}: {e}"
                        break
                    await asyncio.sleep(0.1)
        except (ConnectionError, OSError) as e:
            route.error = f"cannot reach actor {route.actor_id}: {e}"
        finally:
            route.locating = False
        self._pump(route)

    async def _connect(self, address: str, actor_id: str) -> Comm:
        where = (address, actor_id)
        comm = self._comms.get(where)
        if comm is None or comm.closed:
            comm = self._comms[where] = await connect(address, m.FROM_ACTOR_SERVER, timeout=1.0)
            self._inflight[comm] = {}
            asyncio.ensure_future(self._read(comm, where))
        return comm

    async def _read(self, comm: Comm, where: tuple[str, str]) -> None:
        try:
            while True:
                msgs = await comm.read()
                inflight = self._inflight[comm]
                with self.futures.changing():
                    for msg in msgs:
                        inflight.pop(msg.key, None)
                        self._resolve(msg)
                self.futures_changed()
                if not inflight and comm in self._retired:
                    comm.close()
        except (ConnectionError, OSError) as e:
            logger.info("lost the connection to actor %s at %s: %s", where[1], where[0], e)
        finally:
            if self._comms.get(where) is comm:
                del self._comms[where]
            self._retired.discard(comm)
            lost = self._inflight.pop(comm, {})
            for key, actor_id in lost.items():
                self._fail(key, f"actor {actor_id} died while running this call (its worker went away)")
            for route in self._routes.values():
                if route.comm is comm:
                    route.comm = None
                    self._pump(route)

    def _retire(self, comm: Comm) -> None:
        """Close a connection to an actor that is no longer there, now or after its last call;
        calls made from now on open a new one."""
        for where, c in list(self._comms.items()):
            if c is comm:
                del self._comms[where]
        if self._inflight.get(comm):
            self._retired.add(comm)
        else:
            comm.close()

    def _resolve(self, msg: m.ActorResult | m.ActorError) -> None:
        """A call's result or error.  Call with the futures' lock held."""
        key = msg.key
        stored = type(msg) is m.ActorResult and type(msg.value) is m.StoreRef
        if stored:  # the scheduler owns stored values' lifetime, as for put()
            self._to_scheduler([m.UpdateData(key, msg.value, msg.nbytes)])  # type: ignore[union-attr]
            if key not in self.futures.states:  # nobody holds the future any more: free it at once
                self._to_scheduler([m.ReleaseKeys((key,))])
        fs = self.futures.settle(msg)
        if fs is not None:
            fs.local = not stored

    def _fail(self, key: str, text: str) -> None:
        """The call ``key`` fails with ActorDiedError.  Call without the futures' lock held."""
        with self.futures.changing():
            fs = self.futures.states.get(key)
            if fs is not None and fs.status == PENDING:
                self.futures.fail(fs, ActorDiedError(text))

    def close(self) -> None:
        for comm in [*self._comms.values(), *self._retired]:
            comm.close()
