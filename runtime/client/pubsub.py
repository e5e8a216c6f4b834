"""``runtime.Pub`` / ``runtime.Sub``: publish and subscribe by topic (Dask's ``Pub``/``Sub``).

::

    Sub("t") ──pubsub-subscribe(topic, address) (request, answered before Sub() returns)
             address: in a worker process, its actor server, which takes messages directly
    Pub("t") in a worker process ──pubsub-publish──► its targets (addresses, relay), kept
             up to date by the scheduler's pubsub-targets
    Pub.put(msg) ──pickle──► pubsub-msg to each target address (one blocking connection each)
                             and, if relay or from a driver, to the scheduler, which relays it
    Sub.get(timeout) / for msg in sub: ◄── its buffer (waits on the client's condition)

Between tasks and actors (both in worker processes) messages go worker to worker, without
the scheduler (``runtime/scheduler/extensions/pubsub.py`` draws the whole flow); to or
from a driver they go through it.  In order per publisher and path.  A ``Sub`` receives
what is published after it was made (a publisher that has not heard of it yet may miss it);
when it is closed or garbage collected its client unsubscribes, and when the client's
connection ends the scheduler drops its subscriptions and tells the publishers.  Inside a
task or an actor both use the worker process's client.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.client.event_log import client_of
from runtime.comm import codec, serialize
from runtime.comm import messages as m
from runtime.comm.core import open_local_first
from runtime.errors import ClientClosedError

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient
    from runtime.worker.worker import Worker

#: seconds to connect to a subscriber's worker
CONNECT_TIMEOUT = 5.0


def _check_topic(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a pub/sub topic is a non-empty string, not {name!r:.80}")
    return name


def _worker_of(client: ClusterClient) -> Worker | None:
    """This process's worker if ``client`` is its client for tasks and actors (which publish and
    subscribe directly), else None (a driver, or a client a task made of its own)."""
    from runtime.api import context
    from runtime.worker.actors import current_worker

    worker = current_worker()
    if worker is None or not context.is_initialized() or context.current_runtime().client is not client:
        return None
    return worker


class _Targets:
    """Where a direct publisher's messages go: subscribers' worker processes, and the scheduler."""

    __slots__ = ("addresses", "relay", "version")

    def __init__(self, addresses: tuple[str, ...], relay: bool, version: int):
        self.addresses = addresses
        #: some subscribers are reached only through the scheduler
        self.relay = relay
        self.version = version


class _PubSub:
    """A client's side of pub/sub: its live ``Sub`` objects by topic (it fills their buffers),
    its direct publications' targets, and its connections to subscribers' workers."""

    def __init__(self, client: ClusterClient):
        self.client = client
        self.subs: dict[str, weakref.WeakSet[Sub]] = {}
        #: topic -> where its messages go, for a client publishing from a worker process
        self.targets: dict[str, _Targets] = {}
        #: subscriber address -> the connection to it, and the lock its writers take
        self._conns: dict[str, tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    # -- subscribing --------------------------------------------------------------------

    def address(self) -> str:
        """Where publishers on the cluster may send to this client directly ("": nowhere)."""
        worker = _worker_of(self.client)
        return worker.actor_host.pubsub_address(self._on_direct) if worker is not None else ""

    def on_message(self, msg: m.PubsubMsg | m.PubsubTargets) -> None:
        # On the loop thread, under the futures' lock: the read loop notifies their
        # condition afterwards, which is what Sub.get waits on.
        if type(msg) is m.PubsubTargets:
            self._retarget(msg.topic, msg.addresses, msg.relay, msg.version)
            return
        for sub in list(self.subs.get(msg.topic, ())):
            sub._buffer.append(msg.msg)

    def _on_direct(self, msg: m.PubsubMsg) -> None:
        """A message a publisher sent here directly (on the actor server's thread)."""
        with self.client.futures.changing():
            self.on_message(msg)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, topic: str) -> bool:
        """Register a ``Pub`` of ``topic``: True if it sends directly (in a worker process)."""
        if _worker_of(self.client) is None:
            return False
        t = self.client.request_checked("pubsub-publish", topic=topic)
        self._retarget(topic, tuple(t["addresses"]), t["relay"], t["version"])
        return True

    def _retarget(self, topic: str, addresses: tuple[str, ...], relay: bool, version: int) -> None:
        with self._lock:  # the reply and the updates come on different connections: keep the newest
            now = self.targets.get(topic)
            if now is None or version >= now.version:
                self.targets[topic] = _Targets(addresses, relay, version)

    def put(self, topic: str, data: bytes, direct: bool) -> None:
        msg = m.PubsubMsg(topic, data)
        targets = self.targets.get(topic) if direct else None
        if targets is None:
            self.client._send(msg)
            return
        if targets.addresses:
            frame = codec.encode([msg])
            for address in targets.addresses:
                self._send_direct(address, frame)
        if targets.relay:
            self.client._send(msg)

    def _send_direct(self, address: str, frame: bytes) -> None:
        """Write ``frame`` to a subscriber's worker; one that is gone is skipped (the scheduler
        will tell us it left)."""
        with self._lock:
            conn = self._conns.get(address)
        try:
            if conn is None:
                # bounded sends: a subscriber that stops reading does not block us forever
                sock = open_local_first(address, CONNECT_TIMEOUT, CONNECT_TIMEOUT)
                with self._lock:
                    conn = self._conns.setdefault(address, (sock, threading.Lock()))
                if conn[0] is not sock:
                    sock.close()
            with conn[1]:
                conn[0].sendall(frame)
        except OSError:
            with self._lock:
                if conn is not None and self._conns.get(address) is conn:
                    del self._conns[address]
            if conn is not None:
                conn[0].close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for sock, _ in conns:
            sock.close()


class Pub:
    """Publish messages (anything picklable) to every ``Sub`` of topic ``name`` in the cluster."""

    def __init__(self, name: str, client: Any = None):
        self.name = _check_topic(name)
        self.client = client = client_of(client)
        self._pubsub = client.extension("pubsub", _PubSub)
        #: in a worker process: it sends to subscribers on the cluster directly
        self._direct = self._pubsub.publish(name)
        if self._direct:
            weakref.finalize(self, _tell_later, client, "pubsub-unpublish", name)

    def put(self, msg: Any) -> None:
        """Send ``msg`` to every current subscriber; it does not wait (none: it is dropped)."""
        try:
            data = serialize.dumps(msg)
        except Exception as e:
            raise serialize.SerializationError(f"cannot pickle a message for topic {self.name!r}: {e}") from e
        if len(data) + len(self.name) + 64 > codec.MAX_FRAME_BYTES:  # 64: the message's own fields
            raise ValueError(
                f"a message of {len(data):,} bytes for topic {self.name!r} is over the {codec.MAX_FRAME_BYTES:,}-byte "
                "limit of one message; pass large data through a Queue or Variable (it waits in the store)"
            )
        self._pubsub.put(self.name, data, self._direct)

    @property
    def subscribers(self) -> tuple[str, ...]:
        """For a publisher in a worker: the subscribers' addresses it sends to directly."""
        targets = self._pubsub.targets.get(self.name) if self._direct else None
        return targets.addresses if targets is not None else ()

    def __repr__(self) -> str:
        return f"<Pub: {self.name}>"


class Sub:
    """Receive the messages published to topic ``name`` from now on: ``get(timeout)`` or iterate."""

    def __init__(self, name: str, client: Any = None):
        self.name = _check_topic(name)
        self.client = client = client_of(client)
        #: pickled messages received and not yet taken
        self._buffer: deque[bytes] = deque()
        pubsub = client.extension("pubsub", _PubSub)
        with client.futures.lock:
            pubsub.subs.setdefault(name, weakref.WeakSet()).add(self)
        client.request_checked("pubsub-subscribe", topic=name, address=pubsub.address())
        self._finalizer = weakref.finalize(self, _tell_later, client, "pubsub-unsubscribe", name)

    def get(self, timeout: Any = None) -> Any:
        """The next message; TimeoutError if none comes within ``timeout`` (seconds, "1s", a timedelta)."""
        seconds = config.parse_timeout(timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        client = self.client
        with client.futures.cond:
            while not self._buffer:
                if client._lost:
                    raise ConnectionError(client._lost)
                if client._closed or not self._finalizer.alive:
                    raise ClientClosedError(f"Sub({self.name!r}) is closed, or its client is")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message on topic {self.name!r} within {seconds:g}s")
                client.futures.cond.wait(remaining)
            data = self._buffer.popleft()
        return serialize.loads(data)

    next = __next__ = get

    def __iter__(self) -> Sub:
        return self

    def close(self) -> None:
        """Unsubscribe now (garbage collection does it too)."""
        pubsub = self.client.extensions.get("pubsub")
        with self.client.futures.lock:
            pubsub.subs.get(self.name, weakref.WeakSet()).discard(self)
        self._finalizer()

    def __repr__(self) -> str:
        return f"<Sub: {self.name}>"


def _tell_later(client: ClusterClient, what: str, topic: str) -> None:
    """A Sub or Pub went: tell the scheduler, without waiting (this may run in any thread,
    the loop's too, so not through a user thread's request channel)."""
    if client._closed or client._lost or client._loop.is_closed():
        return

    async def ask() -> None:
        try:
            await client._ask(what, topic=topic)
        except Exception:  # the connection went meanwhile: the scheduler forgets it anyway
            pass

    try:
        asyncio.run_coroutine_threadsafe(ask(), client._loop)
    except RuntimeError:  # the loop closed meanwhile
        pass
