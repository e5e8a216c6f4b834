"""Event logs on the client: ``log_event``, ``get_events``, ``subscribe_topic``, ``unsubscribe_topic``.

::

    log_event(topic, msg) ──log-event (request)──► scheduler's EventLog ──event──► subscribed clients
    subscribe_topic(topic, handler)                     ClientEvents: handler((time, msg)) on a
                                                        thread of its own, in order, off the loop

The scheduler side is ``runtime/scheduler/extensions/event_log.py``.  ``runtime.log_event``
works in the driver and inside tasks and actors (through the worker process's client).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from runtime.comm import messages as m

if TYPE_CHECKING:
    from runtime.client.client import ClusterClient

logger = logging.getLogger("runtime.client")

#: an event as handlers and get_events see it: (scheduler time, message)
Event = tuple[float, Any]


class ClientEvents:
    """A client's event handlers by topic, and the thread that runs them."""

    def __init__(self, client: ClusterClient):
        self.client = client
        #: the handler of each subscribed topic
        self.handlers: dict[str, Callable[[Event], Any]] = {}
        #: runs handlers one at a time, in the order events came (made on first event)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def on_message(self, msg: m.LoggedEvent) -> None:
        """On the client's loop thread: hand the event to the handlers' thread."""
        handler = self.handlers.get(msg.topic)
        if handler is None:  # unsubscribed while it was on its way
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runtime-events")
        self._pool.submit(_call_handler, handler, msg.topic, (msg.time, msg.msg))

    def close(self) -> None:
        """The client closed: stop the handlers' thread once it has run what it was given."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _call_handler(handler: Callable[[Event], Any], topic: str, event: Event) -> None:
    try:
        result = handler(event)
        if inspect.isawaitable(result):  # an async handler: run it to its end here
            asyncio.run(_awaited(result))
    except Exception:
        logger.exception("handler %r of event topic %r raised", handler, topic)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def client_of(client: Any) -> ClusterClient:
    """The cluster client to use: a ``runtime.Client``'s, a ``ClusterClient``, or this process's runtime's."""
    from runtime.client.client import ClusterClient

    if client is None:
        from runtime.api.context import current_runtime  # a task's or actor's: its worker process's client

        return current_runtime().client
    if isinstance(client, ClusterClient):
        return client
    core = getattr(client, "core", None)
    if isinstance(core, ClusterClient):
        return core
    raise TypeError(f"client must be a runtime.Client, not {type(client).__name__}")


def _check_topic(topic: Any, several: bool = False) -> None:
    topics = topic if several and isinstance(topic, (list, tuple)) else [topic]
    if not topics or not all(isinstance(t, str) and t for t in topics):
        what = "a non-empty string or a list of them" if several else "a non-empty string"
        raise TypeError(f"an event topic is {what}, not {topic!r:.80}")


def log_event(topic: str | list[str], msg: Any, client: Any = None) -> None:
    """Log ``msg`` under ``topic`` (or under each of a list of topics) on the scheduler.

    ``client``: a ``runtime.Client``; by default this process's runtime (inside a task or
    an actor: its worker process's client)."""
    client = client_of(client)
    _check_topic(topic, several=True)
    try:
        msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"an event's message must be msgpack serializable, not {type(msg).__name__}: {e}") from None
    client.request_checked("log-event", topic=list(topic) if isinstance(topic, (list, tuple)) else topic, msg=msg)


def get_events(topic: str | None = None, client: Any = None) -> tuple[Event, ...] | dict[str, tuple[Event, ...]]:
    """The events of ``topic``, oldest first; of every topic by name if None."""
    client = client_of(client)
    if topic is not None:
        _check_topic(topic)
    reply = client.request_checked("get-events", topic=topic)
    if topic is None:
        return {t: tuple(tuple(e) for e in events) for t, events in reply.items()}
    return tuple(tuple(e) for e in reply)


def subscribe_topic(topic: str, handler: Callable[[Event], Any], client: Any = None) -> None:
    """Call ``handler((time, msg))`` for every event logged under ``topic`` from now on.

    Handlers run on a thread of this client's, one at a time; a coroutine function's
    coroutine is run there to its end.  A second subscription to a topic replaces the first.
    """
    _check_topic(topic)
    if not callable(handler):
        raise TypeError(f"an event handler must be callable, not {type(handler).__name__}")
    client = client_of(client)
    events = client.extension("event_log", ClientEvents)
    if topic in events.handlers:
        logger.info("handler for event topic %r already set: replacing it", topic)
    events.handlers[topic] = handler
    client.request_checked("subscribe-topic", topic=topic)


def unsubscribe_topic(topic: str, client: Any = None) -> None:
    """Stop calling ``topic``'s handler; ValueError if it has none."""
    client = client_of(client)
    events = client.extension("event_log", ClientEvents)
    if events.handlers.pop(topic, None) is None:
        raise ValueError(f"no event handler known for topic {topic!r}")
    client.request_checked("unsubscribe-topic", topic=topic)
