"""Actor method calls from this process: straight to the actor's worker, in the order made.

::

    user thread: handle.m.remote() ─── sendall ──────────────────────► the actor's worker
        (connected, no call before it in flight, arguments done)     (one thread per connection)
    user thread: get(ref) ◄── recv: the waiting thread reads the reply ◄──┘
                             itself (or the connection's reader thread,
                             when nobody waits for it)

    calls in flight before it: ─────────────────────────────────► the connection's sender thread
    otherwise: outbox ──► client loop: route per actor (FIFO) ──┘   (what gathered, one frame)
                            │ location from the scheduler, once

Each actor has one *route* in this process: a FIFO of calls not sent yet, and one blocking
connection to the actor's worker.  A sequential call costs one hop and one wake-up each way,
as a plain socket round trip: the calling thread writes the call itself, and a thread that
waits for its result (``get``, ``wait``, ``Future.result``) reads the reply itself, holding
the connection's read lock, so no event loop or second thread is woken on the way.  The
loop handles only what must wait (the actor's location, future arguments not done yet):
those calls leave through the connection's sender thread, and calls made after them follow
them, so calls reach the actor in the order they were made.  A burst of calls (pipelining)
goes from the calling thread straight to the sender thread, which writes all that gathered
while it wrote the last frame: one hand-off per frame, not a trip through the loop.

Replies nobody waits for are read by the connection's *reader thread*: at once for a future
with a done callback (``add_done_callback``, ``await``, a held graph), else when no one has
read for ``LAZY_READ`` seconds while calls are in flight.  Results never pass through the
scheduler: a small one lives only in this process (``FutureState.local``) until it is passed
to a task; a large one is in the store and registered with the scheduler like a ``put``.

If the worker's connection drops, the calls in flight are sent again to the restarted actor
while they have retries left (the actor option ``max_task_retries``), else they fail with
``ActorDiedError``; the route asks the scheduler where the actor lives now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runtime.client.future import FINISHED, PENDING, Future, check_open_deps
from runtime.comm import codec
from runtime.comm import messages as m
from runtime.comm.core import FrameReader, ThreadOutbox, close_blocking, open_local_first
from runtime.errors import ActorDiedError

if TYPE_CHECKING:
    from runtime.client.owner import FutureTable

logger = logging.getLogger("runtime.client.actors")

#: how long calls wait for an actor's worker to answer before they fail
REACH_TIMEOUT = 60.0
#: replies nobody reads for this long are read by the connection's reader thread
LAZY_READ = 0.02


class _Call:
    """A call made: queued until it can leave, then in flight until answered."""

    __slots__ = ("key", "actor_id", "method", "args", "deps", "returns", "retries", "keep")

    def __init__(
        self, key: str, actor_id: str, method: str, args: bytes, deps: dict[str, Future], returns: tuple[str, ...],
        retries: int = 0, keep: Future | None = None,
    ):  # fmt: skip
        self.key = key
        self.actor_id = actor_id
        self.method = method
        #: the pickled (args, kwargs)
        self.args = args
        #: the futures among the arguments: they ride along, keeping their values alive
        self.deps = deps
        #: with ``num_returns``: one key per item of the result (``ActorCall.returns``)
        self.returns = returns
        #: how many more times it is sent again if the actor's worker dies while it runs
        self.retries = retries
        #: the caller's future of the actor's handle key: the actor lives until this is answered
        self.keep = keep

    def result_keys(self) -> tuple[str, ...]:
        """The keys its results come back under."""
        return self.returns or (self.key,)


class _Relocate:
    """The actor moved: calls made after this ask the scheduler where it is."""

    __slots__ = ("actor_id",)

    def __init__(self, actor_id: str):
        self.actor_id = actor_id


class _Pump:
    """From a reader thread: futures changed or a connection dropped; the loop pumps routes."""

    __slots__ = ("actor_id",)

    def __init__(self, actor_id: str | None):
        self.actor_id = actor_id


class _Conn:
    """A blocking connection to one actor's worker, shared by the threads of this process."""

    def __init__(self, sock: socket.socket, address: str, actor_id: str):
        self.sock = sock
        self.actor_id = actor_id
        #: where the actor's worker serves its calls
        self.address = address
        self.peer = f"actor {actor_id} at {address}"
        self.reader = FrameReader(sock, self.peer, m.FROM_ACTOR_SERVER)
        self.send_lock = threading.Lock()
        #: held by the one thread reading replies (a waiter, or the reader thread)
        self.read_lock = threading.Lock()
        #: result key -> its call, for the calls sent and not answered (``ActorCalls._lock``)
        self.inflight: dict[str, _Call] = {}
        #: calls handed to the sender thread, not written yet: calls made later wait for them
        self.unsent = 0
        #: frames read and calls sent so far: the reader thread reads when neither moves
        self.frames = 0
        self.sent = 0
        #: closed (lost, or its actor moved and its last reply came)
        self.closed = False
        #: no longer the route's connection: closed once nothing is in flight
        self.retired = False
        #: wakes the reader thread: ``kicked`` to read at once, ``idle`` if it sleeps untimed
        self.cond = threading.Condition()
        self.kicked = False
        self.idle = False
        #: calls for the sender thread to write, in order (``send_cond``)
        self.outgoing: deque[_Call] = deque()
        self.send_cond = threading.Condition()

    def wake(self, kick: bool = False) -> None:
        """Make sure the reader thread will look (``kick``: read now)."""
        if kick or self.idle:
            with self.cond:
                self.kicked = self.kicked or kick
                self.cond.notify()


class _Route:
    __slots__ = ("actor_id", "queue", "conn", "error", "locating", "dropped", "relocating")

    def __init__(self, actor_id: str):
        self.actor_id = actor_id
        #: calls not sent yet, in the order they were made
        self.queue: deque[_Call] = deque()
        #: the connection to the actor's worker, once located
        self.conn: _Conn | None = None
        #: why the actor cannot be reached (it is dead)
        self.error: str | None = None
        self.locating = False
        #: the address whose connection just dropped: its worker may be dying, unknown yet to
        #: the scheduler, and still accept a connection while it does
        self.dropped = ""
        #: relocations asked for and not yet made by the loop: calls queue behind them
        self.relocating = 0


class ActorCalls:
    """The actor calls of one cluster client.

    ``futures`` is the client's table; ``new_key`` names a call; ``pickle_args`` pickles its
    arguments (``ClusterClient.pickle_args``: large ones by reference); ``ask`` (on the loop thread)
    asks the scheduler a question; ``to_scheduler`` (any thread) sends it a message.
    Routes and connections' in-flight calls are guarded by ``_lock``, taken after the
    futures' lock when both are held and never held over I/O.
    """

    def __init__(
        self,
        futures: FutureTable,
        loop: asyncio.AbstractEventLoop,
        new_key: Callable[[str], str],
        pickle_args: Callable[[str, tuple, dict], tuple[bytes, dict[str, Any]]],
        ask: Callable[..., Awaitable[Any]],
        to_scheduler: Callable[[m.Message], None],
    ):
        self.futures = futures
        self._new_key = new_key
        self._pickle_args = pickle_args
        self._ask = ask
        self._to_scheduler = to_scheduler
        self._outbox = ThreadOutbox(loop, self._dispatch)
        self._lock = threading.Lock()
        #: one route per actor called from this process
        self._routes: dict[str, _Route] = {}
        #: the connection each call in flight waits on, by result key
        self._key_conn: dict[str, _Conn] = {}
        #: routes whose head call waits for a future argument (loop thread)
        self._blocked: set[_Route] = set()
        #: node id -> its agent's address, for arguments stored on other nodes
        self._agents: dict[str, str] | None = None
        #: threads waiting for futures without reading replies themselves (``waiting``)
        self._waiters = 0
        self._closed = False
        futures.on_watch = self.watch

    # -- user threads ------------------------------------------------------------------

    def call(
        self, actor_id: str, method: str, args: tuple, kwargs: dict, num_returns: int = 1, retries: int = 0,
        keep: Future | None = None,
    ) -> list[Future]:  # fmt: skip
        """Call ``method``; its ``num_returns`` futures (the items of what it returns, when more
        than one).  ``retries``: times it is sent again if the actor's worker dies meanwhile;
        ``keep``: kept until the call is answered (the handle's key: runtime/client/handle_refs.py)."""
        args_bytes, deps = self._pickle_args(method, args, kwargs)
        check_open_deps(deps)
        key = self._new_key(method)
        keys = (key,) if num_returns == 1 else tuple(f"{key}-{i}" for i in range(num_returns))
        futures = [self.futures.future(k) for k in keys]
        for f in futures:
            f._state.local = True
        returns = keys if num_returns != 1 else ()
        call = _Call(key, actor_id, method, args_bytes, deps, returns, retries, keep)  # type: ignore[arg-type]
        if not self._send_now(call):
            self._outbox.put(call)  # type: ignore[arg-type]
        return futures

    def _send_now(self, call: _Call) -> bool:
        """Send ``call`` from this thread if nothing must happen first; False if it cannot."""
        if any(f._state.status != FINISHED for f in call.deps.values()):
            return False
        with self._lock:
            route = self._routes.get(call.actor_id)
            conn = route.conn if route is not None else None
            if conn is None or route.queue or route.error is not None or route.relocating:  # type: ignore[union-attr]
                return False
            self._track(conn, call)
            # A call with none before it in flight goes alone, from this thread; calls made in
            # a burst go to the connection's sender thread, which writes what has gathered
            # meanwhile in one frame: one hand-off, and a syscall for many calls.
            alone = len(conn.inflight) == len(call.result_keys()) and not conn.unsent
            if not alone:
                self._enqueue(conn, [call])
        if alone:
            self._write(conn, [call])
        return True

    def _enqueue(self, conn: _Conn, calls: list[_Call]) -> None:
        """Hand ``calls`` to ``conn``'s sender thread.  Call with ``_lock`` held (after ``_track``)."""
        conn.unsent += len(calls)
        with conn.send_cond:
            conn.outgoing.extend(calls)
            conn.send_cond.notify()

    def _sender_thread(self, conn: _Conn) -> None:
        """Write the calls handed over, in order, all that gathered in one frame each time."""
        while True:
            with conn.send_cond:
                while not conn.outgoing and not conn.closed:
                    conn.send_cond.wait()
                if not conn.outgoing:
                    return
                calls = list(conn.outgoing)
                conn.outgoing.clear()
            self._write(conn, calls, queued=True)
            del calls  # not held while waiting: what a call keeps (its handle's key) goes with its reply

    def relocate(self, actor_id: str) -> None:
        """The actor was killed or restarted: calls made from now on ask the scheduler where
        it is (or why it is dead) instead of going to its old worker.  Until the loop has
        moved the route, calls go through the loop too, behind the move: none made after this
        returns reaches the old worker (which may not have heard of the kill yet)."""
        with self._lock:
            route = self._routes.get(actor_id)
            if route is not None:
                route.relocating += 1
        self._outbox.put(_Relocate(actor_id))  # type: ignore[arg-type]

    def watch(self, key: str) -> None:
        """Something other than a waiting thread wants ``key``'s result (a done callback):
        the reader thread of its connection reads it as soon as it comes."""
        conn = self._key_conn.get(key)
        if conn is not None:
            conn.wake(kick=True)

    def read_replies(self, ready: Callable[[], bool], futures: Sequence[Future], deadline: float | None) -> bool:
        """For a thread about to wait for ``futures`` until ``ready()``: if they all wait on
        one actor connection that nobody reads, read its replies here until ``ready()`` (one
        wake-up, no hand-off).  True if ``ready()``; False to wait the usual way."""
        conn = None
        for f in futures:
            if f._state.status == PENDING:
                c = self._key_conn.get(f.key)
                if c is None or (conn is not None and c is not conn):
                    return False
                conn = c
        if conn is None or not conn.read_lock.acquire(blocking=False):
            return False
        try:

            def done() -> bool:
                with self.futures.lock:
                    return ready()

            return self._read(conn, done, deadline)
        finally:
            conn.read_lock.release()

    @contextlib.contextmanager
    def waiting(self, futures: Sequence[Future]) -> Iterator[None]:
        """A thread waits for ``futures`` without reading replies itself: the reader threads
        read the replies of these and of calls sent meanwhile at once, not LAZY_READ later."""
        with self._lock:
            self._waiters += 1
            conns = {id(c): c for f in futures if (c := self._key_conn.get(f.key)) is not None}
        for conn in conns.values():
            conn.wake(kick=True)
        try:
            yield
        finally:
            with self._lock:
                self._waiters -= 1

    # -- sending (any thread) -------------------------------------------------------------

    def _track(self, conn: _Conn, call: _Call) -> None:
        """``call`` is about to leave on ``conn``.  Call with ``_lock`` held."""
        for key in call.result_keys():
            conn.inflight[key] = call
            self._key_conn[key] = conn
        conn.sent += 1
        if self._waiters:  # a thread waits on the condition: read the reply as it comes
            conn.wake(kick=True)

    def _message(self, call: _Call) -> m.ActorCall:
        values = {k: f._state.value for k, f in call.deps.items()}
        sources = self._sources(values.values())
        return m.ActorCall(call.key, call.actor_id, call.method, call.args, values, sources, call.returns)

    def _write(self, conn: _Conn, calls: list[_Call], queued: bool = False) -> None:
        """Send ``calls`` (``queued``: by the sender thread, counted in ``unsent``)."""
        data = codec.encode_many([self._message(c) for c in calls])
        try:
            with conn.send_lock:
                conn.sock.sendall(data)
        except OSError:  # the connection is gone: its reader finds out and retries or fails them
            pass
        if queued:
            with self._lock:
                conn.unsent -= len(calls)
        conn.wake()

    def _sources(self, located: Any) -> dict[str, str]:
        nodes = {v.node for v in located if type(v) is m.StoreRef}
        if not nodes or self._agents is None:
            return {}
        return {n: self._agents[n] for n in nodes if n in self._agents}

    # -- reading (a waiting thread or the connection's reader thread) -------------------------

    def _read(self, conn: _Conn, done: Callable[[], bool], deadline: float | None = None) -> bool:
        """Read replies on ``conn`` until ``done()``; False if ``deadline`` passes first or the
        connection drops.  Call with ``conn.read_lock`` held."""
        try:
            while not done():
                if conn.closed:
                    return False
                if deadline is not None and not conn.reader.wait(deadline):
                    return done()
                msgs = conn.reader.read()
                conn.frames += 1
                self._settle(conn, msgs)
            return True
        except (ConnectionError, OSError) as e:
            self._lost(conn, e)
            return done()

    def _settle(self, conn: _Conn, msgs: list[m.ActorResult | m.ActorError]) -> None:
        with self.futures.changing():
            with self._lock:
                for msg in msgs:
                    conn.inflight.pop(msg.key, None)
                    self._key_conn.pop(msg.key, None)
                finished = conn.retired and not conn.inflight
            for msg in msgs:
                self._resolve(msg)
        if self._blocked:  # calls waiting for these results as arguments may go now
            self._outbox.put(_Pump(None))  # type: ignore[arg-type]
        if finished:
            self._close(conn)

    def _reader_thread(self, conn: _Conn) -> None:
        """Read the replies nobody waits for: at once when kicked, else once no one has read
        for LAZY_READ while calls are in flight."""
        seen = (-1, -1)
        while True:
            with conn.cond:
                if conn.closed:
                    return
                if not conn.kicked:
                    if not conn.inflight:
                        conn.idle = True
                        conn.cond.wait()  # until a call is sent or a callback wants a reply
                        conn.idle = False
                        seen = (-1, -1)
                        continue
                    conn.cond.wait(LAZY_READ)
                kicked, conn.kicked = conn.kicked, False
            now = (conn.frames, conn.sent)
            stale, seen = now == seen, now
            if conn.inflight and (kicked or stale) and conn.read_lock.acquire(blocking=False):
                try:
                    self._read(conn, lambda: not conn.inflight)
                finally:
                    conn.read_lock.release()

    def _lost(self, conn: _Conn, error: BaseException) -> None:
        """``conn`` dropped: its calls in flight go again while they have retries, else fail."""
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            lost, conn.inflight = conn.inflight, {}
            route = self._routes.get(conn.actor_id)
            current = route is not None and route.conn is conn
            retry: list[_Call] = []
            failed: list[str] = []
            for key, call in lost.items():
                self._key_conn.pop(key, None)
                if key != call.result_keys()[0]:
                    continue  # one decision per call
                if current and call.retries > 0:
                    call.retries -= 1
                    retry.append(call)
                else:
                    failed.extend(call.result_keys())
            if current:
                route.conn = None  # type: ignore[union-attr]
                route.dropped = conn.address  # type: ignore[union-attr]
                route.queue.extendleft(reversed(retry))  # type: ignore[union-attr]
        if not self._closed:
            logger.info("lost the connection to %s: %s", conn.peer, error)
        self._close(conn)
        for key in failed:
            self._fail(key, f"actor {conn.actor_id} died while running this call (its worker went away)")
        if retry:
            logger.info("sending %d call(s) to actor %s again", len(retry), conn.actor_id)
        self._outbox.put(_Pump(conn.actor_id))  # type: ignore[arg-type]

    def _close(self, conn: _Conn) -> None:
        conn.closed = True
        close_blocking(conn.sock)  # wakes a thread blocked reading it
        with conn.cond:
            conn.cond.notify_all()
        with conn.send_cond:  # the sender thread writes what it has (to no avail) and ends
            conn.send_cond.notify()

    def _resolve(self, msg: m.ActorResult | m.ActorError) -> None:
        """A call's result or error.  Call with the futures' lock held."""
        key = msg.key
        stored = type(msg) is m.ActorResult and type(msg.value) is m.StoreRef
        if stored:  # the scheduler owns stored values' lifetime, as for put()
            try:
                self._to_scheduler(m.UpdateData(key, msg.value, msg.nbytes))  # type: ignore[union-attr]
                if key not in self.futures.states:  # nobody holds the future any more: free it at once
                    self._to_scheduler(m.ReleaseKeys((key,)))
            except ConnectionError:  # the scheduler is gone: so is the store's bookkeeping
                pass
        fs = self.futures.settle(msg)
        if fs is not None:
            fs.local = not stored

    def _fail(self, key: str, text: str) -> None:
        """The call ``key`` fails with ActorDiedError.  Call without the futures' lock held."""
        with self.futures.changing():
            fs = self.futures.states.get(key)
            if fs is not None and fs.status == PENDING:
                self.futures.fail(fs, ActorDiedError(text))

    # -- the client's loop thread ------------------------------------------------------------

    def _dispatch(self, batch: list[_Call | _Relocate | _Pump]) -> None:
        for item in batch:
            if type(item) is _Pump:
                if item.actor_id is None:
                    self.futures_changed()
                elif (route := self._routes.get(item.actor_id)) is not None:
                    self._pump(route)
                continue
            if type(item) is _Relocate:  # in order with the calls: those made before still go
                with self._lock:
                    route = self._routes.get(item.actor_id)
                    conn = route.conn if route is not None else None
                    if route is not None and route.relocating:
                        route.relocating -= 1
                    if conn is not None:
                        route.conn = None  # type: ignore[union-attr]
                        conn.retired = True
                if conn is not None and not conn.inflight:
                    self._close(conn)
                continue
            assert type(item) is _Call
            with self._lock:
                route = self._routes.get(item.actor_id)
                if route is None:
                    route = self._routes[item.actor_id] = _Route(item.actor_id)
                route.queue.append(item)
            self._pump(route)

    def futures_changed(self) -> None:
        """Some futures finished: calls waiting on them as arguments may go now."""
        if self._blocked:
            blocked, self._blocked = self._blocked, set()
            for route in blocked:
                self._pump(route)

    def _pump(self, route: _Route) -> None:
        """Send what can go of ``route``'s calls, in order."""
        failed: list[tuple[_Call, Future | str]] = []
        sends: list[_Call] = []
        with self._lock:
            conn = route.conn
            if route.error is not None:
                failed = [(call, route.error) for call in route.queue]
                route.queue.clear()
            elif conn is None:
                if not route.locating and route.queue:
                    route.locating = True
                    asyncio.ensure_future(self._locate(route))
            else:
                while route.queue:
                    deps = route.queue[0].deps
                    pending = [f for f in deps.values() if f._state.status == PENDING]
                    if pending:
                        self._blocked.add(route)
                        for f in pending:  # an actor call's result: read it as soon as it comes
                            if (c := self._key_conn.get(f.key)) is not None:
                                c.wake(kick=True)
                        break
                    call = route.queue.popleft()
                    bad = next((f for f in deps.values() if f._state.status != FINISHED), None)
                    if bad is not None:  # an argument failed: so does the call, blaming it
                        failed.append((call, bad))
                        continue
                    self._track(conn, call)
                    sends.append(call)
                if sends:
                    self._enqueue(conn, sends)
        for call, why in failed:
            for key in call.result_keys():
                if isinstance(why, str):
                    self._fail(key, why)
                    continue
                with self.futures.changing():
                    fs = self.futures.states.get(key)
                    if fs is not None:
                        self.futures.fail_like(fs, why)

    async def _locate(self, route: _Route) -> None:
        """Ask the scheduler where the actor lives (it answers once the actor is up) and connect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REACH_TIMEOUT
        try:
            if self._agents is None:
                nodes = (await self._ask("identity"))["nodes"]
                self._agents = {n: info.get("address", "") for n, info in nodes.items()}
            while route.conn is None:
                where = await self._ask("actor-location", actor=route.actor_id, not_at=route.dropped)
                if "error" in where:
                    route.error = where["error"]
                    break
                try:
                    conn = await loop.run_in_executor(None, self._connect, where["address"], route.actor_id)
                except OSError as e:  # its worker just died: the scheduler will know soon
                    if loop.time() > deadline:
                        route.error = f"cannot reach actor {route.actor_id} at {where['address']}: {e}"
                        break
                    await asyncio.sleep(0.1)
                    continue
                with self._lock:
                    route.conn = conn
                    route.dropped = ""
        except (ConnectionError, OSError) as e:
            route.error = f"cannot reach actor {route.actor_id}: {e}"
        finally:
            route.locating = False
        self._pump(route)

    def _connect(self, address: str, actor_id: str) -> _Conn:
        conn = _Conn(open_local_first(address, 1.0), address, actor_id)
        for target, name in ((self._reader_thread, "runtime-actor"), (self._sender_thread, "runtime-actor-send")):
            threading.Thread(target=target, args=(conn,), name=f"{name}-{actor_id}", daemon=True).start()
        return conn

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns = [r.conn for r in self._routes.values() if r.conn is not None]
            conns += {id(c): c for c in self._key_conn.values()}.values()
        for conn in conns:
            self._close(conn)
