"""Actors on a worker: stateful objects that live in this process and run their methods in order.

::

    creation task (executor thread) ── create_actor ──► ActorHost.actors[actor_id]

    caller ──actor-call──► its connection's thread ──► runs the call (one at a time per actor)
    caller ◄──actor-result / actor-error──────────────┘   or hands it to the actor's threads / loop

An actor is made by an ordinary task (so placement, restrictions and resources apply)
whose function is ``create_actor``: it builds the instance here and tells the scheduler
where callers reach it.  Calls then go straight from caller to this worker, never through
the scheduler.  Each caller has one connection, served by a thread of its own with blocking
I/O: a plain actor's call runs right on that thread, under the actor's lock, so calls run in
exactly the order each caller made them and a call costs no hand-off between threads (the
round trip is what sequential callers wait on); replies to calls with more behind them in
the same frame gather for the connection's writer thread (``_Replies``).  With
``max_concurrency=N`` calls go to a FIFO served by N threads; an actor with ``async def``
methods runs them on an event loop of its own.  The instance never leaves this process, so
calls never serialise its state.

The same server takes the ``pubsub-msg``s that publishers on other workers send to this
process's subscribers directly (``runtime/client/pubsub.py``); it opens for the first
actor or the first such subscriber.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.comm import auth, codec, serialize
from runtime.comm import messages as m
from runtime.comm.core import FrameReader, listen_local
from runtime.errors import ActorDiedError
from runtime.objstore import values

if TYPE_CHECKING:
    from runtime.worker.worker import Worker

logger = logging.getLogger("runtime.worker.actors")

#: the worker of this process, set when it starts; creation tasks find their host through it
_worker: Worker | None = None

#: how many calls an async actor runs at once unless told otherwise (Ray's default)
ASYNC_DEFAULT_CONCURRENCY = 1000

_STOP = object()

#: the id of the actor whose constructor or method runs in this thread (or asyncio task)
current_actor_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_actor_id", default=None)
#: the method name a Dask actor proxy calls to read an attribute (``counter.n``)
GETATTR = "__runtime_getattr__"


def set_worker(worker: Worker) -> None:
    global _worker
    _worker = worker


def current_worker() -> Worker | None:
    """This process's worker, if it is one."""
    return _worker


def get_worker() -> Worker:
    """The worker of this process: call it inside a task, ``Client.run`` or a worker plugin."""
    if _worker is None:
        raise ValueError("get_worker() works only inside a task or Client.run on a worker")
    return _worker


def create_actor(cls: type, actor_id: str, max_concurrency: int | None, args: tuple, kwargs: dict) -> None:
    """The function of an actor's creation task: build the instance on this worker."""
    if _worker is None:
        raise RuntimeError("actors can only be created on a runtime worker")
    _worker.actor_host.create(cls, actor_id, max_concurrency, args, kwargs)


class Actor:
    """One actor instance and the thread(s) or event loop that run its method calls."""

    def __init__(self, host: ActorHost, actor_id: str, instance: Any, max_concurrency: int | None):
        self.host = host
        self.actor_id = actor_id
        self.instance = instance
        cls = type(instance)
        #: async actors run every call as a task on their own event loop
        self.is_async = any(inspect.iscoroutinefunction(m) for _, m in inspect.getmembers(cls, inspect.isfunction))
        #: why it is dead, once killed
        self.dead = ""
        #: one call at a time (a plain actor without max_concurrency)
        self._lock = threading.Lock()
        #: calls not started yet, in arrival order (max_concurrency > 1)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = 0
        if self.is_async:
            self._loop = asyncio.new_event_loop()
            self._slots = asyncio.Semaphore(max_concurrency or ASYNC_DEFAULT_CONCURRENCY)
            self._start_thread(self._run_loop, 0)
        elif max_concurrency and max_concurrency > 1:
            self._threads = max_concurrency
            for i in range(max_concurrency):
                self._start_thread(self._run_queue, i)

    def _start_thread(self, target: Callable[[], None], i: int) -> None:
        threading.Thread(target=target, name=f"actor-{self.actor_id}-{i}", daemon=True).start()

    def submit(self, msg: m.ActorCall, reply: Callable[[m.Message], None]) -> None:
        """Run one call; from the thread serving the caller's connection."""
        if self.is_async:
            self._loop.call_soon_threadsafe(self._start_async, msg, reply)
        elif self._threads:
            self._queue.put((msg, reply))
        else:
            with self._lock:
                self._run(msg, reply)

    def stop(self, reason: str) -> None:
        self.dead = reason
        self.instance = None  # freed now (its __del__ runs), not once its callers' connections close
        if self.is_async:
            self._loop.call_soon_threadsafe(self._loop.stop)
        for _ in range(self._threads):
            self._queue.put(_STOP)

    def _run_queue(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            self._run(*item)

    def _run(self, msg: m.ActorCall, reply: Callable[[m.Message], None]) -> None:
        if self.dead:
            for key in msg.result_keys():
                reply(self.host.died_message(key, self.actor_id, self.dead))
            return
        start = time.time()
        current_actor_id.set(self.actor_id)
        try:
            method, args, kwargs = self._prepare(msg)
            result = method(*args, **kwargs)
            del args, kwargs
            self._reply_results(msg, result, reply)
        except BaseException as e:  # noqa: BLE001 - the caller gets it; the actor lives on
            self._reply_error(msg, e, start, reply)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _start_async(self, msg: m.ActorCall, reply: Callable[[m.Message], None]) -> None:
        """On the actor's loop, in arrival order: start the call as a task."""
        self._loop.create_task(self._call_async(msg, reply))

    async def _call_async(self, msg: m.ActorCall, reply: Callable[[m.Message], None]) -> None:
        async with self._slots:
            start = time.time()
            current_actor_id.set(self.actor_id)  # this asyncio task's own context
            try:
                method, args, kwargs = self._prepare(msg)
                result = method(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                del args, kwargs
                self._reply_results(msg, result, reply)
            except BaseException as e:  # noqa: BLE001
                self._reply_error(msg, e, start, reply)

    def _prepare(self, msg: m.ActorCall) -> tuple[Callable, tuple, dict]:
        if self.dead:
            raise ActorDiedError(f"actor {self.actor_id} is dead: {self.dead}")
        name = msg.method
        method = getattr(self.instance, name, None) if name != GETATTR else functools.partial(getattr, self.instance)
        if method is None or (name.startswith("__") and name != GETATTR) or not callable(method):
            raise AttributeError(f"actor {type(self.instance).__name__} has no method {name!r}")
        deps = self.host.worker.load_deps(msg.key, msg.deps, msg.sources)
        args, kwargs = serialize.loads_args(msg.args, deps)
        return method, args, kwargs

    def _reply_results(self, msg: m.ActorCall, result: Any, reply: Callable[[m.Message], None]) -> None:
        """Send a call's result; with ``num_returns`` (its ``returns`` keys), one per item."""
        keys = msg.returns
        if not keys:
            reply(self._result(msg.key, result))
            return
        try:
            n = len(result)
        except TypeError:
            n = None
        if n != len(keys):
            got = f"a {type(result).__name__}" + (f" of {n}" if n is not None else "")
            raise ValueError(f"the method was declared with num_returns={len(keys)} but returned {got}")
        for key, item in zip(keys, result, strict=True):
            reply(self._result(key, item))

    def _reply_error(
        self, msg: m.ActorCall, e: BaseException, start: float, reply: Callable[[m.Message], None]
    ) -> None:
        for key in msg.result_keys():
            reply(self.host.erred_message(key, e, start))

    def _result(self, key: str, result: Any) -> m.ActorResult:
        worker = self.host.worker
        value, nbytes = values.encode(result, key=key, prefix=worker.prefix, node=worker.node)
        return m.ActorResult(key, value, nbytes)


class _Replies:
    """The replies on one caller's connection, written in the order they are made.

    A reply its caller may be waiting on alone (to the last call of a frame) is written at
    once by the thread that made it: no hand-off.  Replies to calls with more behind them in
    the frame (a pipelined burst) gather for the connection's writer thread, which writes all
    that gathered in one frame: a burst's replies cost a few writes instead of one each, and
    the calls behind them do not wait for those writes.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        #: held over a write, so frames leave whole and in order
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._gathered: list[m.Message] = []
        self._writer: threading.Thread | None = None
        self._closed = False

    def send(self, msg: m.Message) -> None:
        """Write ``msg`` now, after what gathered before it."""
        self._write([msg])

    def later(self, msg: m.Message) -> None:
        """Hand ``msg`` to the writer thread."""
        with self._cond:
            self._gathered.append(msg)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_gathered, name="actor-replies", daemon=True)
                self._writer.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _write(self, msgs: list[m.Message]) -> None:
        with self._write_lock:
            with self._cond:
                msgs, self._gathered = self._gathered + msgs, []
            if not msgs:
                return
            try:
                self._sock.sendall(codec.encode_many(msgs))
            except OSError:  # the caller went away; its calls die with its connection
                pass

    def _write_gathered(self) -> None:
        while True:
            with self._cond:
                while not self._gathered and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            self._write([])


class ActorHost:
    """The actors of one worker and the server their callers connect to."""

    def __init__(self, worker: Worker, host: str = "127.0.0.1"):
        self.worker = worker
        #: live actors by id
        self.actors: dict[str, Actor] = {}
        #: why actors that were here are gone, so late calls get a clear error
        self.gone: dict[str, str] = {}
        self._interface = host
        #: where callers connect; empty until the first actor starts here
        self.address = ""
        #: the call server's listening sockets (TCP, and a Unix socket for callers on this host)
        self._listeners: list[socket.socket] = []
        self._lock = threading.Lock()
        #: takes the pub/sub messages publishers send here directly (client/pubsub.py), once set
        self.on_pubsub: Callable[[m.PubsubMsg], None] | None = None

    def create(self, cls: type, actor_id: str, max_concurrency: int | None, args: tuple, kwargs: dict) -> None:
        """On an executor thread: build the instance, open the call server, tell the scheduler."""
        token = current_actor_id.set(actor_id)
        try:
            instance = cls(*args, **kwargs)
        finally:
            current_actor_id.reset(token)
        with self._lock:
            self._listen()
            self.actors[actor_id] = Actor(self, actor_id, instance, max_concurrency)
        self.worker.post(m.ActorStarted(actor_id, self.worker.address, self.address))

    def pubsub_address(self, on_pubsub: Callable[[m.PubsubMsg], None]) -> str:
        """Where publishers send this process's pub/sub messages directly (``on_pubsub`` takes them)."""
        with self._lock:
            self.on_pubsub = on_pubsub
            self._listen()
        return self.address

    def _listen(self) -> None:
        """Open the server, once.  Call with ``_lock`` held."""
        if not self.address:
            tcp = socket.create_server((self._interface, 0))
            self.address = f"tcp://{self._interface}:{tcp.getsockname()[1]}"
            # Callers on this host come in through a Unix socket instead (core.local_name).
            self._listeners = [tcp, *filter(None, [listen_local(self.address)])]
            for listener in self._listeners:
                threading.Thread(target=self._accept, args=(listener,), name="actor-server", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:  # closed: the worker is stopping
                return
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn, str(peer)), name="actor-caller", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        """One caller's connection, on a thread of its own: its calls run in arrival order."""
        secured = auth.accept_sync(conn, peer)  # the cluster's TLS and secret, as every server
        if secured is None:
            return
        conn = secured
        replies = _Replies(conn)
        frames = FrameReader(conn, peer, m.TO_ACTOR_SERVER)
        with conn:
            while True:
                try:
                    msgs = frames.read()
                except (ConnectionError, OSError) as e:
                    replies.close()
                    if not isinstance(e, ConnectionResetError):
                        logger.warning("actor server: dropping the connection from %s: %s", peer, e)
                    return
                last = msgs[-1]
                for msg in msgs:
                    # More calls already here: the caller waits for the last, not for this one.
                    reply = replies.later if msg is not last or frames.buffered() else replies.send
                    if type(msg) is m.PubsubMsg:  # from a publisher on another worker (client/pubsub.py)
                        if self.on_pubsub is not None:
                            self.on_pubsub(msg)
                        continue
                    actor = self.actors.get(msg.actor)
                    if actor is None:
                        why = self.gone.get(msg.actor, "it is not on this worker")
                        for key in msg.result_keys():
                            reply(self.died_message(key, msg.actor, why))
                    else:
                        actor.submit(msg, reply)

    def kill(self, actor_id: str, reason: str) -> None:
        actor = self.actors.pop(actor_id, None)
        self.gone[actor_id] = reason
        if actor is not None:
            actor.stop(reason)

    def close(self) -> None:
        for actor_id in list(self.actors):
            self.kill(actor_id, "its worker is shutting down")
        for listener in self._listeners:
            listener.close()

    def erred_message(self, key: str, e: BaseException, start: float) -> m.ActorError:
        return m.ActorError(key, *serialize.pickled_error(e), start, time.time())

    def died_message(self, key: str, actor_id: str, why: str) -> m.ActorError:
        return self.erred_message(key, ActorDiedError(f"actor {actor_id} is dead: {why}"), time.time())
