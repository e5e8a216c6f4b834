"""The cluster client (``ClusterClient``): the driver's side of the wire protocol.

::

    user thread                         client loop thread (uvloop)
    ───────────                         ───────────────────────────
    submit/put ──► outbox (deque) ──wake──► one frame per loop turn ──► scheduler
    get/wait  ◄── FutureTable (state + condition) ◄── key-in-memory / task-erred ◄──┘

Calls from user threads never touch the socket: they queue a message and wake the loop
only when the outbox was empty, so a burst of ``.remote()`` calls costs one wake-up and
leaves in a few frames.  Results for wanted keys are pushed by the scheduler (small ones
with their value inline), so ``get`` needs no request of its own.  It owns the futures it
makes (``runtime/client/owner.py``): their table, shared with the actor calls, lives here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from runtime import config
from runtime.client.actor_calls import ActorCalls
from runtime.client.channel import Channels
from runtime.client.future import CANCELLED, ERRED, FINISHED, PENDING, Future, FutureState, check_open_deps
from runtime.client.held import HeldGraphs
from runtime.client.owner import FutureTable, closed_error
from runtime.client.spans import current_span
from runtime.comm import messages as m
from runtime.comm import serialize
from runtime.comm.core import Comm, ThreadOutbox, connect, new_event_loop
from runtime.errors import GetTimeoutError, SchedulerError, TaskCancelledError
from runtime.objstore import store, values
from runtime.objstore.store import ObjectLostError, ObjectStoreUnavailableError
from runtime.objstore.transfer import fetch_sync, read_remote, write_remote
from runtime.worker.secession import waiting_in_task

logger = logging.getLogger("runtime.client")

#: puts of at least this many bytes log what they do
LARGE_PUT = 256 * 2**20
#: the dashboard's link before anyone asked the scheduler for it
_UNASKED: Any = object()


def merge_graphs(batch: list[m.Message]) -> list[m.Message]:
    """``batch`` with each run of update-graph messages of one priority and span sent as one:
    a burst of ``.remote()`` calls costs the scheduler one stimulus, not one per task.

    Each graph's tasks depend only on keys known before it, so the merged graph's order (a
    post-order walked from its outputs in the order sent) runs them in the order they were
    sent, as separate graphs would.  A key sent twice keeps its first description, as the
    scheduler keeps the task it already has.  A malformed graph (tests send them) goes alone,
    as it is, for the scheduler to refuse.
    """

    def mergeable(msg: m.Message) -> bool:
        return type(msg) is m.UpdateGraph and type(msg.tasks) is tuple and type(msg.wanted) is tuple

    if sum(map(mergeable, batch)) < 2:
        return batch
    out: list[m.Message] = []
    run: list[m.UpdateGraph] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            tasks: dict[str, m.TaskSpec] = {}
            for g in run:
                for t in g.tasks:
                    tasks.setdefault(t.key, t)
            wanted = tuple(k for g in run for k in g.wanted)
            out.append(m.UpdateGraph(tuple(tasks.values()), wanted, run[0].priority, run[0].span))
        run.clear()

    for msg in batch:
        if not mergeable(msg):
            close_run()
            out.append(msg)
        elif run and (msg.priority, msg.span) != (run[0].priority, run[0].span):  # type: ignore[attr-defined]
            close_run()
            run.append(msg)  # type: ignore[arg-type]
        else:
            run.append(msg)  # type: ignore[arg-type]
    close_run()
    return out


class ClusterClient:
    """The connection to a cluster's scheduler, and the owner of the futures made through it."""

    def __init__(self, address: str, *, node: str | None = None, prefix: str | None = None, timeout: float = 30.0):
        #: the scheduler's address
        self.address = address
        self.id = f"client-{os.urandom(4).hex()}"
        #: the node whose store this process reads and writes, and its object-name prefix
        #: (None: not known yet, found at first need; "": none, values go over the network)
        self.node = node
        self.prefix = prefix
        #: the cluster's nodes, from the scheduler, once a stored value needed them
        self._node_info: dict[str, dict] | None = None
        #: the futures made here; their callbacks run on a thread of their own, off the loop thread
        self.futures = FutureTable(self, callback_thread=True)
        #: a weak reference to the runtime.Client over this connection, if any (Future.client)
        self.user_client: Callable[[], Any] | None = None
        self._counter = itertools.count()
        self._tag = os.urandom(3).hex()
        self._requests: dict[int, asyncio.Future] = {}
        self._closed = False
        #: what closed this client, for the error of its futures' get/wait/cancel afterwards
        self._closed_as = "a client that was closed"
        self._lost: str | None = None
        #: the scheduler's dashboard URL, asked for on first use (dashboard_link)
        self._dashboard_link: str | None = _UNASKED
        self.comm: Comm | None = None
        self._pruner: asyncio.Future | None = None
        self._keepalive: asyncio.Future | None = None
        #: when the loop last heard from the scheduler (loop time)
        self._heard = 0.0
        self._loop = new_event_loop()
        #: messages from user threads on their way to the scheduler
        self._outbox = ThreadOutbox(self._loop, self._to_scheduler)
        #: messages queued on the connection so far, and how many of them a reply has followed:
        #: while they differ, a request goes behind them on the connection (``request_args``)
        self._queued = self._confirmed = 0
        self._queued_lock = threading.Lock()
        #: user threads' requests, each thread on a connection of its own (``channel.py``)
        self._channels = Channels(address, self.id, self._counter)
        #: the client side of extensions (event log, pub/sub), made on first use (``extension``);
        #: the messages the scheduler pushes for them go to their ``on_message`` (``_handler_table``)
        self.extensions: dict[str, Any] = {}
        #: graphs waiting for actor calls' results before they can leave (``held.py``)
        self._held = HeldGraphs(self.futures, self._send)
        #: actor method calls, sent straight to the actors' workers
        self.actor_calls = ActorCalls(self.futures, self._loop, self.new_key, self.pickle_args, self._ask, self._send)
        #: what to do with each message from the scheduler
        self._handlers = self._handler_table()
        self._thread = threading.Thread(target=self._loop.run_forever, name="runtime-client", daemon=True)
        self._thread.start()
        self._call(self._connect(timeout), timeout + 5)

    # -- the loop thread ---------------------------------------------------------------

    async def _connect(self, timeout: float) -> None:
        self.comm = await connect(self.address, m.TO_CLIENT, timeout=timeout)
        self.comm.send(m.RegisterClient(self.id))
        # Wait for "registered": a cluster that requires a secret we lack, or a peer that is no
        # scheduler, fails the connect with a clear error instead of the first get.
        try:
            first = await asyncio.wait_for(self.comm.read(), timeout)
        except TimeoutError:
            self.comm.close()
            raise ConnectionError(f"the scheduler at {self.address} did not answer within {timeout:g}s") from None
        except ConnectionError:
            self.comm.close()
            raise
        with self.futures.lock:
            for msg in first:
                self._handle(msg)
        self._heard = asyncio.get_running_loop().time()
        asyncio.ensure_future(self._read_loop())
        self._pruner = asyncio.ensure_future(store.prune_mappings_forever())
        self._keepalive = asyncio.ensure_future(self._watch_scheduler())

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _read_loop(self) -> None:
        assert self.comm is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                msgs = await self.comm.read()
                self._heard = loop.time()
                with self.futures.changing():
                    if self._closed:  # close() settled every future: late news changes none
                        return
                    for msg in msgs:
                        self._handle(msg)
                self.actor_calls.futures_changed()
        except (ConnectionError, OSError) as e:
            if not self._closed:
                self._connection_lost(f"lost the connection to the scheduler at {self.address}: {e}")

    def _handle(self, msg: m.Message) -> None:
        """One message from the scheduler.  Call with the futures' lock held."""
        self._handlers[type(msg)](msg)

    def _handler_table(self) -> dict[type, Callable[[Any], Any]]:
        """What to do with each message from the scheduler (every type of ``m.TO_CLIENT``)."""
        return {
            m.KeyInMemory: self.futures.settle,
            m.KeyErred: self.futures.settle,
            m.Reply: self._on_reply,
            m.CancelledKeys: lambda msg: self.futures.cancel_keys(msg.keys),
            m.LostKeys: self._on_lost_keys,
            m.SchedulerError: lambda msg: self.futures.fail_pending(SchedulerError(msg.text)),
            m.Registered: lambda msg: None,
            m.Pong: lambda msg: None,
            # pushed for the client side of an extension, once made (before, nothing listens)
            m.LoggedEvent: lambda msg: self._to_extension("event_log", msg),
            m.PubsubMsg: lambda msg: self._to_extension("pubsub", msg),
            m.PubsubTargets: lambda msg: self._to_extension("pubsub", msg),
        }

    def _to_extension(self, name: str, msg: m.Message) -> None:
        """On the loop thread, with the futures' lock held: so ``on_message`` only hands work on."""
        ext = self.extensions.get(name)
        if ext is not None:
            ext.on_message(msg)

    def _on_reply(self, msg: m.Reply) -> None:
        fut = self._requests.pop(msg.reqid, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.result)

    def _on_lost_keys(self, msg: m.LostKeys) -> None:
        """Their only copies were on a node that left: they are being recomputed."""
        for key in msg.keys:
            fs = self.futures.states.get(key)
            if fs is not None and fs.status == FINISHED:
                fs.status, fs.value = PENDING, None

    async def _watch_scheduler(self) -> None:
        """Ping the scheduler every heartbeat interval; a scheduler silent for the client
        timeout (frozen, or the network cut without a reset) fails what waits on it,
        instead of leaving it waiting forever."""
        loop = asyncio.get_running_loop()
        interval, timeout = config.get("heartbeat.interval"), config.get("heartbeat.client-timeout")
        interval = min(interval, timeout / 4)
        while self.comm is not None and not self.comm.closed and self._lost is None:
            await asyncio.sleep(interval)
            silent = loop.time() - self._heard
            if silent > timeout:
                self._connection_lost(
                    f"the scheduler at {self.address} has not answered for {silent:.0f}s "
                    f"(heartbeat.client-timeout {timeout:g}s): it is frozen, overloaded or unreachable"
                )
                self.comm.close()
                return
            self.comm.send(m.Ping())

    def _connection_lost(self, reason: str) -> None:
        self._lost = reason
        self._channels.close(reason)
        with self.futures.changing():
            self.futures.fail_pending(ConnectionError(reason))
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))

    def _to_scheduler(self, batch: list[m.Message]) -> None:
        if self.comm is not None:
            self.comm.send_many(merge_graphs(batch))

    # -- user threads ------------------------------------------------------------------

    def _send(self, msg: m.Message, lazy: bool = False) -> None:
        """To the scheduler, in order; ``lazy``: nothing waits on it, it may leave a moment later."""
        if self._lost:
            raise ConnectionError(self._lost)
        with self._queued_lock:
            self._queued += 1
            self._outbox.put(msg, lazy)

    def release(self, key: str, fs: FutureState) -> None:
        """A ``Future`` of ``key`` was collected: the last one lets go of the key."""
        with self.futures.lock:
            fs.refcount -= 1
            if fs.refcount > 0 or self.futures.states.get(key) is not fs:
                return
            del self.futures.states[key]
            if self._held and self._held.release(key):
                return  # released once its held graph leaves
        if type(fs.value) is m.StoreRef:  # this process need not keep its mapping either
            store.forget_mapping(fs.value.name)
        if not self._closed and not self._lost and not fs.local:
            self._send(m.ReleaseKeys((key,)), lazy=True)

    def check_open(self, futures: Iterable[Future]) -> None:
        """ClientClosedError if this client is closed: its futures' values and work are gone,
        and no other client or runtime knows them."""
        if self._closed:
            futures = list(futures)
            if futures:
                raise closed_error(self._described(), futures)

    def _described(self) -> str:
        return f"{self._closed_as} (client {self.id} of the cluster at {self.address})"

    def new_key(self, name: str) -> str:
        return f"{name}-{self._tag}{next(self._counter)}"

    def submit(
        self,
        func_bytes: bytes,
        prefix: str,
        args: tuple,
        kwargs: dict,
        *,
        retries: int = 0,
        priority: int = 0,
        restrictions: dict[str, Any] | None = None,
    ) -> Future:
        """Submit one task whose callable is already pickled; returns its future.

        ``restrictions`` may hold ``workers`` (addresses or hosts), ``resources`` and
        ``allow_other_workers``.
        """
        args_bytes, deps = self.pickle_args(prefix, args, kwargs)
        key = self.new_key(prefix)
        bad = self.failed_dependency(deps)
        if bad is not None:
            return self.failed_future(key, bad)
        task = task_spec(key, func_bytes, args_bytes, deps, retries, prefix, restrictions)
        return self.update_graph([task], [key], priority)[0]

    def pickle_args(
        self, prefix: str, args: tuple, kwargs: dict, pickled: tuple[bytes, dict[str, Any]] | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """``serialize.dumps_args`` for a call made here (``pickled``: what it gave already).

        An argument that pickles to ``inline-threshold`` or more is stored first, as ``put``
        would, and passed by reference, as Ray does: written once into the node's store and
        read zero-copy where the call runs, instead of travelling inside the call's message
        (through the scheduler, for a task), which could not carry one over the frame limit.
        """
        data, deps = pickled or serialize.dumps_args(prefix, args, kwargs)
        threshold = config.get("inline-threshold")
        if len(data) < threshold:
            return data, deps
        args = tuple(self.by_reference(a, threshold) for a in args)
        kwargs = {k: self.by_reference(v, threshold) for k, v in kwargs.items()}
        return serialize.dumps_args(prefix, args, kwargs)

    def by_reference(self, value: Any, threshold: int | None = None) -> Any:
        """``value``, or, if it pickles to ``threshold`` (``inline-threshold``) or more, the
        future of it stored as by ``put``."""
        if isinstance(value, Future):
            return value
        with serialize.collecting_refs():  # futures inside count as references, as in a put
            data, buffers = serialize.dumps_value(value)
        if len(data) + serialize.buffers_nbytes(buffers) < (threshold or config.get("inline-threshold")):
            return value
        return self.put(value)

    def update_graph(self, tasks: list[m.TaskSpec], wanted: list[str], priority: int = 0) -> list[Future]:
        """Send tasks (``task_spec``s, in any order) in one message; futures for ``wanted``.

        A task may depend on keys of the same message.  Keys the scheduler already has are
        not run again: the new futures share their value.
        """
        futures = [self.futures.future(key) for key in wanted]
        with self.futures.lock:
            for f in futures:
                if f._state.status == CANCELLED:  # submitted again: it runs again
                    f._state.status, f._state.exception = PENDING, None
            # runtime.span(): the scheduler tags these tasks with the span they were submitted in
            span = current_span()
            if self._held:  # it may need an actor call's result that is not there yet
                if not self._held.hold(tasks, wanted, priority, span):
                    self._send(m.UpdateGraph(tuple(tasks), tuple(wanted), priority, span))
                return futures
        self._send(m.UpdateGraph(tuple(tasks), tuple(wanted), priority, span))
        return futures

    def extension(self, name: str, make: Callable[[ClusterClient], Any]) -> Any:
        """This client's side of the extension ``name``, made by ``make(self)`` on first use."""
        with self.futures.lock:
            ext = self.extensions.get(name)
            if ext is None:
                ext = self.extensions[name] = make(self)
            return ext

    def failed_dependency(self, deps: dict[str, Any]) -> Future | None:
        """Make actor-call results among a task's ``deps`` known to the scheduler; the first
        that failed (the task then fails with its error), or None.  One still running is
        made known when it returns: the task's graph waits for it here (``held.py``)
        instead of the caller."""
        check_open_deps(deps)
        for dep in deps.values():
            fs = getattr(dep, "_state", None)
            if fs is None or not fs.local:
                continue
            if fs.status == PENDING:
                self._held.expect(dep.key)
                dep._owner.futures.add_done_callback(dep, self._local_result_arrived)
            elif not self._register_local_of(dep):
                return dep
        return None

    def _register_local_of(self, dep: Future) -> bool:
        """Register a done actor call's result (perhaps of another client of this process: that
        client does it); False if the call failed."""
        owner: ClusterClient = dep._owner  # type: ignore[assignment]  # only a ClusterClient makes those
        if not owner.register_local(dep):
            return False
        if owner is not self:  # its message goes on its own connection: wait until it has landed
            owner.request("who-has", keys=[dep.key])
        return True

    def _local_result_arrived(self, dep: Future) -> None:
        """A running actor call that a held graph needs returned (on a callback thread)."""
        try:
            ok = self._register_local_of(dep)
        except (ConnectionError, TimeoutError) as e:  # the graphs fail with the connection
            logger.warning("cannot register actor result %s for the tasks that need it: %s", dep.key, e)
            return
        self._held.arrived(dep.key, None if ok else dep)

    def hold_refs(self, holder: str, keys: list[str]) -> None:
        """The value stored as ``holder`` refers to futures of ``keys`` (ours): the scheduler
        keeps them while it lives.  A round trip: once the value is out (a task's result
        reaches its reader through another connection), the scheduler knows the keys."""
        self.request("hold-refs", holder=holder, keys=keys)

    def borrow(self, key: str) -> Future:
        """A future of ``key`` read from inside a value: ours from now on (the scheduler is
        told we want it; if it was forgotten meanwhile the future fails saying so)."""
        with self.futures.lock:
            known = key in self.futures.states
            future = self.futures.future(key)
        if not known:
            with self._queued_lock:  # a message on the connection: later requests go behind it
                self._queued += 1
                asyncio.run_coroutine_threadsafe(self._borrow(key), self._loop)
        return future

    async def _borrow(self, key: str) -> None:
        try:
            reply = await self._ask("borrow-refs", keys=[key])
        except (ConnectionError, OSError):
            return  # every pending future fails with the connection already
        if reply.get("missing"):
            with self.futures.changing():
                fs = self.futures.states.get(key)
                if fs is not None and fs.status == PENDING:
                    error = ObjectLostError(f"the value of future {key!r} was released before it was read")
                    self.futures.fail(fs, error)

    def failed_future(self, key: str, cause: Future) -> Future:
        """A future for ``key`` that fails with the error of ``cause``, an argument it needed."""
        future = self.futures.future(key)
        with self.futures.changing():
            self.futures.fail_like(future._state, cause)
        return future

    def register_local(self, future: Future) -> bool:
        """Tell the scheduler the value of an actor call's result, so tasks can use it: after
        waiting for it if need be.  False if the call failed."""
        fs = future._state
        if fs.status == PENDING:
            self.wait_for(future.done, [future], None)
        with self.futures.lock:
            if not fs.local:
                return True
            if fs.status != FINISHED:
                return False
            fs.local = False
        self._send(m.UpdateData(future.key, fs.value, fs.nbytes))
        return True

    def cancel(self, futures: Sequence[Future], force: bool = False, interrupt: bool = False) -> None:
        """Stop computing ``futures`` and what depends on them; their ``result`` raises TaskCancelledError.

        A key another client also wants keeps running unless ``force``.  A task already running
        runs to its end, its result dropped (Dask's rule), unless ``interrupt`` (Ray's): then an
        exception stops it between bytecodes; ``force`` also restarts a worker whose task does
        not stop within a few seconds.
        """
        self.check_open(futures)
        keys = tuple(f.key for f in futures)
        if self._held:  # held tasks are cancelled here: the scheduler never saw them
            self._held.cancel(keys)
        with self.futures.changing():  # cancelled from the caller's view at once (Dask's)
            self.futures.cancel_keys(keys)
        self._send(m.Cancel(keys, force, interrupt))

    def cancel_all(self, why: str) -> None:
        """Cancel every future of this client, done or not (their values are released)."""
        with self.futures.changing():
            keys = list(self.futures.states)
            error = TaskCancelledError(f"cancelled by {why}")
            for fs in self.futures.states.values():
                self.futures.fail(fs, error, CANCELLED)
        if keys:
            self._send(m.Cancel(tuple(keys), True))

    def put(self, value: Any, key: str | None = None) -> Future:
        """Store ``value`` in the cluster (in a node's store when large); returns its future."""
        key = key or self.new_key("put")
        attached = self._attach()
        size = getattr(value, "nbytes", 0)  # numpy, Arrow: a large put says what it is doing
        loud = isinstance(size, int) and size >= LARGE_PUT
        if loud:
            where = f"node {self.node}" if attached else "a node's object store, over the network"
            logger.info("storing %s (%.1f MB) in %s", key, size / 2**20, where)
            start = time.monotonic()
        upload = None if attached else self._upload
        located, nbytes = values.encode(value, key=key, prefix=self.prefix or "", node=self.node or "", upload=upload)
        if loud:
            logger.info("stored %s in %.2fs", key, time.monotonic() - start)
        future = self.futures.future(key)
        with self.futures.lock:
            fs = future._state
            fs.status, fs.value, fs.nbytes = FINISHED, located, nbytes
        self._send(m.UpdateData(key, located, nbytes), lazy=True)
        return future

    def _attach(self) -> bool:
        """Whether this process reads and writes a node's store directly: its own node's, or,
        for a client that joined by address, that of a node on its host (found the first time;
        the ``client.attach-store`` setting off: never)."""
        if self.node is None:
            node = prefix = ""
            if config.get("client.attach-store"):
                host = socket.gethostname()
                for info in self._nodes().values():  # the same host, and the same /dev/shm
                    if info["host"] == host and os.path.exists(store.capacity_path(info["prefix"])):
                        node, prefix = info["node"], info["prefix"]
                        store.follow_spill_dir(prefix, info["spill_dir"])
                        break
            self.node, self.prefix = node, prefix
        return bool(self.node)

    def _nodes(self, refresh: bool = False) -> dict[str, dict]:
        """The cluster's nodes (id, host, store prefix, agent address), as last asked."""
        if refresh or self._node_info is None:
            self._node_info = self.request("identity")["nodes"]
        return self._node_info

    def _agent(self, node: str, key: str) -> str:
        """The address of ``node``'s agent; ObjectLostError if that node has left."""
        info = self._nodes().get(node) or self._nodes(refresh=True).get(node)
        if info is None:
            raise ObjectLostError(f"object {key!r} is on node {node!r}, which is no longer in the cluster")
        return info["address"]

    def _upload(self, key: str, data: bytes, buffers: list) -> m.StoreRef:
        """Put a large value into the store of the node with the most room (no store here)."""
        nodes = self._nodes(refresh=True)
        if not nodes:
            raise ObjectStoreUnavailableError(f"value for {key!r} needs a node's store, and the cluster has no node")
        info = min(nodes.values(), key=lambda n: n["store"][0])
        return write_remote(info["address"], info["node"], key, data, buffers)

    def request(self, what: str, timeout: float | None = 30.0, **kwargs: Any) -> Any:
        """Ask the scheduler a question (``identity``, ``story``, ``task-states``, actor queries)."""
        return self.request_args(what, kwargs, timeout)

    def request_args(self, what: str, args: dict[str, Any], timeout: float | None = 30.0) -> Any:
        """``request`` with its arguments as a dict (they may be named ``timeout``); None: no limit.

        From a user thread it goes on that thread's own channel (one hop each way, no event
        loop in between), unless messages this client queued may not have reached the
        scheduler yet: then it goes on the client's connection behind them, and once it is
        answered the channels are safe again.
        """
        if self._lost:
            raise ConnectionError(self._lost)
        if self._closed:
            raise ConnectionError(f"{self._described()} can make no more requests")
        if self._confirmed == self._queued:
            return self._channels.request(what, args, timeout)
        with self._queued_lock:
            mark = self._queued
        result = self._call(self._ask(what, **args), timeout)
        self._confirmed = max(self._confirmed, mark)
        return result

    def tell(self, what: str, **kwargs: Any) -> None:
        """A request whose answer nobody waits for (a release): one message, no round trip.
        Requests this thread makes later come after it."""
        if self._lost:
            raise ConnectionError(self._lost)
        if self._confirmed == self._queued:
            self._channels.tell(what, kwargs)
        else:
            self._send(m.Request(next(self._counter), what, kwargs, answer=False))

    def request_checked(self, what: str, timeout: float = 30.0, **kwargs: Any) -> Any:
        """``request``, raising ValueError with the scheduler's words when it answers an error."""
        reply = self.request(what, timeout, **kwargs)
        if isinstance(reply, dict) and len(reply) == 1 and "error" in reply:
            raise ValueError(reply["error"])
        return reply

    async def _ask(self, what: str, **kwargs: Any) -> Any:
        """On the loop thread: a request to the scheduler and its reply."""
        if self._lost:
            raise ConnectionError(self._lost)
        reqid = next(self._counter)
        fut = self._requests[reqid] = self._loop.create_future()
        assert self.comm is not None
        self._outbox.drain()  # what the caller sent before goes first (lazy messages may still wait)
        self.comm.send(m.Request(reqid, what, kwargs))
        return await fut

    @property
    def dashboard_link(self) -> str | None:
        """The URL of the scheduler's dashboard (its status page), or None when it has none."""
        if self._dashboard_link is _UNASKED:
            self._dashboard_link = self.request("dashboard")
        return self._dashboard_link

    def on_dashboard_link(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback`` on the loop thread with the dashboard's link once the scheduler has
        it (the dashboard starts in the background: ``init()`` does not wait for it)."""

        def answered(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self._dashboard_link = fut.result()
                callback(self._dashboard_link)

        def ask() -> None:  # a request whose reply nobody awaits: closing the client drops it
            if self._lost or self.comm is None:
                return
            reqid = next(self._counter)
            fut = self._requests[reqid] = self._loop.create_future()
            fut.add_done_callback(answered)
            self.comm.send(m.Request(reqid, "dashboard", {}))

        self._loop.call_soon_threadsafe(ask)

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least ``n`` workers have joined; ``TimeoutError`` after ``timeout`` s.

        A wait of more than a second says what it waits for: a log line, and a bar of the
        workers joined on a terminal.
        """
        start = time.monotonic()
        bar = None
        try:
            while (have := len(self.request("identity")["workers"])) < n:
                waited = time.monotonic() - start
                if waited > timeout:
                    raise TimeoutError(f"{have} of {n} workers joined within {timeout:g}s")
                if bar is None and waited > 1:
                    from tqdm import tqdm  # only for a slow start: not on every program's import

                    logger.info("waiting for workers to start: %d of %d joined", have, n)
                    bar = tqdm(total=n, initial=have, desc="workers", unit="worker", leave=False, disable=None)
                elif bar is not None and have > bar.n:
                    bar.update(have - bar.n)
                time.sleep(0.02)
        finally:
            if bar is not None:
                bar.close()

    def retire_workers(
        self, workers: Sequence[str] = (), *, nodes: Sequence[str] = (), timeout: float = 60.0
    ) -> dict[str, Any]:
        """Retire ``workers`` (addresses) and whole ``nodes`` gracefully; returns what went.

        They get no new tasks, finish what they run, and the values only a leaving node's
        store holds are first copied to a node that stays: nothing stored is lost.  Raises
        ValueError for an unknown name and TimeoutError when that takes over ``timeout`` s
        (then nothing is stopped).
        """
        if isinstance(workers, str) or isinstance(nodes, str):
            raise TypeError("retire_workers() takes lists of worker addresses and node ids, not a string")
        result = self.request("retire-workers", timeout + 10, workers=list(workers), nodes=list(nodes), within=timeout)
        if "error" in result:
            raise (TimeoutError if "timed out" in result["error"] else ValueError)(result["error"])
        return result

    def get(self, futures: Sequence[Future], timeout: float | None = None, scheduler: str | None = None) -> list[Any]:
        """The values of ``futures``, in order; raises the first error met, or GetTimeoutError."""
        _check_scheduler(scheduler)
        self.check_open(futures)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for f in futures:
            fs = f._state
            while True:
                if fs.status == PENDING:
                    self.wait_for(f.done, [f], deadline)
                if fs.status in (ERRED, CANCELLED):
                    raise fs.error(f.key)
                located = fs.value
                assert located is not None
                try:
                    out.append(self._load(f.key, located))
                    break
                except (ObjectLostError, ObjectStoreUnavailableError):
                    if not self._heard_of_loss(f, located, deadline):
                        raise
        return out

    def _heard_of_loss(self, future: Future, located: m.Value, deadline: float | None) -> bool:
        """A stored value could not be read: its node may have just left.  Wait, at most the
        heartbeat timeout, for the scheduler to say so (the future then waits for a copy or a
        recomputation); False if it says nothing."""
        fs = future._state
        patience = time.monotonic() + config.get("heartbeat.timeout")
        try:
            self.wait_for(
                lambda: fs.value is not located, [future], patience if deadline is None else min(deadline, patience)
            )
        except GetTimeoutError:
            return False
        return True

    def _load(self, key: str, located: m.Value) -> Any:
        """A value from its wire form.  A stored one is read from this node's store, after its
        agent copied it here if it is on another node; with no store here, straight from the
        node that holds it."""
        with serialize.reading_refs(self):  # futures inside it become this client's
            return self._decode(key, located)

    def _decode(self, key: str, located: m.Value) -> Any:
        if type(located) is not m.StoreRef:
            return values.decode(located, key=key, node="")
        if not self._attach():
            return read_remote(self._agent(located.node, key), key, located)
        if located.node == self.node:
            return values.decode(located, key=key, node=self.node)
        source, agent = self._agent(located.node, key), self._agent(self.node, key)
        try:
            return values.decode(fetch_sync(agent, self.node, key, located, source), key=key, node=self.node)
        except ObjectLostError:
            # The scheduler does not know this process reads the copy: the active memory
            # manager may have dropped it as spare just before it was mapped.  Copy it again.
            return values.decode(fetch_sync(agent, self.node, key, located, source), key=key, node=self.node)

    def wait_for(
        self, ready: Callable[[], bool], futures: Sequence[Future], deadline: float | None,
        scheduler: str | None = None,
    ) -> None:  # fmt: skip
        """Block until ``ready()``: checked whenever the scheduler's news changes futures, or,
        with no ``futures``, whenever done callbacks have run.  GetTimeoutError past
        ``deadline``; ConnectionError, or ClientClosedError for ``futures``, when nothing will
        change any more.  Inside a task on a worker, the task secedes while it waits."""
        _check_scheduler(scheduler)
        cond = self.futures.cond if futures else self.futures.called_back
        with cond:
            if ready():
                return
        # A task waiting here gives its worker's thread back meanwhile (and takes one back
        # after, outside the lock): tasks that wait on tasks never deadlock a worker.
        with waiting_in_task():
            # Results of calls to one actor: this thread reads them off its connection itself.
            if futures and self.actor_calls.read_replies(ready, futures, deadline):
                return
            with self.actor_calls.waiting(futures):
                self._wait_on(cond, ready, futures, deadline)

    def _wait_on(
        self, cond: threading.Condition, ready: Callable[[], bool], futures: Sequence[Future], deadline: float | None
    ) -> None:
        with cond:
            while not ready():
                if self._lost:
                    raise ConnectionError(self._lost)
                self.check_open(futures)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    keys = [f.key for f in futures if f._state.status == PENDING]
                    raise GetTimeoutError(f"timed out waiting for {len(keys)} result(s), e.g. {keys[:3]}")
                cond.wait(remaining)

    def close(self, closed_as: str | None = None) -> None:
        """Disconnect.  Its pending futures are cancelled, and using any of its futures
        afterwards raises ClientClosedError saying it belongs to ``closed_as``."""
        if self._closed:
            return
        with self.futures.changing():
            self._closed = True
            self._closed_as = closed_as or self._closed_as
            self.futures.fail_pending(closed_error(self._described()), CANCELLED)
        self._channels.close(f"{self._described()} can make no more requests")

        async def shut() -> None:
            # every task of the loop: the pruner, the watch, and semaphores' lease refreshers
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.sleep(0)  # they end now, not when the loop is collected
            self.actor_calls.close()
            if self.comm is not None:
                self._outbox.drain()
                try:
                    await asyncio.wait_for(self.comm.drain(), 2)
                except (TimeoutError, ConnectionError, OSError):
                    pass
                self.comm.close()

        try:
            self._call(shut(), 5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        self.futures.close()
        for ext in self.extensions.values():  # their threads, if any
            if hasattr(ext, "close"):
                ext.close()


def task_spec(
    key: str, func_bytes: bytes, args_bytes: bytes, deps: Iterable[str], retries: int, prefix: str,
    restrictions: dict[str, Any] | None = None,
) -> m.TaskSpec:  # fmt: skip
    """The one way to describe a task for the scheduler: its callable and arguments pickled,
    the keys it needs, and ``restrictions`` (``workers``, ``resources``, ``allow_other_workers``)."""
    where = restrictions or {}
    return m.TaskSpec(
        key, (func_bytes, args_bytes), tuple(deps), retries, prefix, tuple(where.get("workers", ())),
        where.get("resources"), bool(where.get("allow_other_workers", False)),
    )  # fmt: skip


def _check_scheduler(scheduler: str | None) -> None:
    """A ``scheduler=`` argument of get/wait: only "distributed" (or none) runs the cluster's futures."""
    if scheduler not in (None, "distributed"):
        raise ValueError(
            f"scheduler={scheduler!r} got futures of the distributed cluster, which runs them already; "
            f"make them under runtime.config.set(scheduler={scheduler!r}) to run them locally"
        )
