"""``runtime.Pub`` / ``runtime.Sub``: publish and subscribe by topic (Dask's ``Pub``/``Sub``).

::

    Pub("t").put(msg) ──pickle──► pubsub-msg ──► scheduler ──► each subscribed client ──► Sub buffers
    Sub("t") ──pubsub-subscribe (request, answered before Sub() returns)
    Sub.get(timeout) / for msg in sub: ◄── its buffer (waits on the client's condition)

Every message goes through the scheduler (``runtime/scheduler/extensions/pubsub.py``
says why), in order per publisher.  A ``Sub`` receives what is published after it was made;
when it is closed or garbage collected its client unsubscribes, and when the client's
connection ends the scheduler drops its subscriptions.  Inside a task or an actor both
use the worker process's client, so tasks, actors and drivers talk to one another alike.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.client.event_log import client_of
from runtime.comm import messages as m
from runtime.comm import serialize
from runtime.errors import ClientClosedError

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient


def _check_topic(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a pub/sub topic is a non-empty string, not {name!r:.80}")
    return name


class _Subscriptions:
    """A client's live ``Sub`` objects by topic; it fills their buffers."""

    def __init__(self, client: ClusterClient):
        self.subs: dict[str, weakref.WeakSet[Sub]] = {}

    def on_message(self, msg: m.PubsubMsg) -> None:
        # On the loop thread, under the futures' lock: the read loop notifies their
        # condition afterwards, which is what Sub.get waits on.
        for sub in list(self.subs.get(msg.topic, ())):
            sub._buffer.append(msg.msg)


class Pub:
    """Publish messages (anything picklable) to every ``Sub`` of topic ``name`` in the cluster."""

    def __init__(self, name: str, client: Any = None):
        self.name = _check_topic(name)
        self.client = client_of(client)

    def put(self, msg: Any) -> None:
        """Send ``msg`` to every current subscriber; it does not wait (none: it is dropped)."""
        try:
            data = serialize.dumps(msg)
        except Exception as e:
            raise serialize.SerializationError(f"cannot pickle a message for topic {self.name!r}: {e}") from e
        self.client._send(m.PubsubMsg(self.name, data))

    def __repr__(self) -> str:
        return f"<Pub: {self.name}>"


class Sub:
    """Receive the messages published to topic ``name`` from now on: ``get(timeout)`` or iterate."""

    def __init__(self, name: str, client: Any = None):
        self.name = _check_topic(name)
        self.client = client = client_of(client)
        #: pickled messages received and not yet taken
        self._buffer: deque[bytes] = deque()
        subs = client.extension("pubsub", _Subscriptions)
        with client.futures.lock:
            subs.subs.setdefault(name, weakref.WeakSet()).add(self)
        client.request_checked("pubsub-subscribe", topic=name)
        self._finalizer = weakref.finalize(self, _unsubscribe, client, name)

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
        subs = self.client.extensions.get("pubsub")
        with self.client.futures.lock:
            subs.subs.get(self.name, weakref.WeakSet()).discard(self)
        self._finalizer()

    def __repr__(self) -> str:
        return f"<Sub: {self.name}>"


def _unsubscribe(client: ClusterClient, topic: str) -> None:
    """A Sub went: tell the scheduler, without waiting (this may run in any thread, the loop's too)."""
    if client._closed or client._lost or client._loop.is_closed():
        return

    async def ask() -> None:
        try:
            await client._ask("pubsub-unsubscribe", topic=topic)
        except Exception:  # the connection went meanwhile: the scheduler forgets it anyway
            pass

    try:
        asyncio.run_coroutine_threadsafe(ask(), client._loop)
    except RuntimeError:  # the loop closed meanwhile
        pass
