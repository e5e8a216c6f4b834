"""Structured event logs by topic (Dask's ``log_event``/``get_events``/``subscribe_topic``).

::

    client or task ──log-event(topic, msg)──► EventLog.events[topic]  (the last N, with the time)
                                                   │
    subscribed clients ◄──── event (LoggedEvent: topic, time, msg) ─┘
    get-events(topic) ──► [[time, msg], ...]

A message is anything msgpack carries (the client checks); the scheduler keeps the last
``scheduler.events-log-length`` of each topic.  A client's subscriptions end with its
connection.  ``EventLog`` is pure (the time is given); ``EventLogExtension``, a scheduler
plugin, holds it and forgets a client that leaves.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.comm import messages as m
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: client id -> the messages to send it
Msgs = dict[str, list[m.Message]]


def check_topics(topic: Any) -> list[str]:
    """A topic, or a list of them, as a list; TypeError/ValueError naming what is wrong."""
    topics = [topic] if isinstance(topic, str) else topic
    if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics):
        raise TypeError(f"an event topic is a string or a list of strings, not {topic!r:.80}")
    if not topics or not all(topics):
        raise ValueError(f"an event topic must be a non-empty string, not {topic!r:.80}")
    return list(topics)


class EventLog:
    """The events of every topic, and which clients are subscribed to each."""

    def __init__(self, maxlen: int):
        #: the last ``maxlen`` events of each topic, (time, message), oldest first
        self.events: dict[str, deque[tuple[float, Any]]] = {}
        #: clients subscribed to each topic (an ordered set)
        self.subscribers: dict[str, dict[str, None]] = {}
        self.maxlen = maxlen

    def log(self, topic: Any, msg: Any, now: float) -> Msgs:
        """Log ``msg`` under ``topic`` (or each of a list); the messages for subscribers."""
        out: Msgs = {}
        for t in check_topics(topic):
            events = self.events.get(t)
            if events is None:
                events = self.events[t] = deque(maxlen=self.maxlen)
            events.append((now, msg))
            for client in self.subscribers.get(t, ()):
                out.setdefault(client, []).append(m.LoggedEvent(t, now, msg))
        return out

    def get(self, topic: str | None) -> list | dict[str, list]:
        """The events of ``topic`` as ``[time, msg]`` pairs; of every topic by name if None."""
        if topic is None:
            return {t: [list(e) for e in events] for t, events in self.events.items()}
        (topic,) = check_topics(topic)
        return [list(e) for e in self.events.get(topic, ())]

    def subscribe(self, topic: str, client: str) -> None:
        (topic,) = check_topics(topic)
        self.subscribers.setdefault(topic, {})[client] = None

    def unsubscribe(self, topic: str, client: str) -> None:
        (topic,) = check_topics(topic)
        clients = self.subscribers.get(topic, {})
        clients.pop(client, None)
        if not clients:
            self.subscribers.pop(topic, None)

    def client_gone(self, client: str) -> None:
        for topic in [t for t, clients in self.subscribers.items() if client in clients]:
            self.unsubscribe(topic, client)


class EventLogExtension(SchedulerPlugin):
    """The scheduler's event log; a client that leaves loses its subscriptions."""

    def __init__(self) -> None:
        self.log = EventLog(config.get("scheduler.events-log-length"))

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        self.log.client_gone(client)


def _events(s: Scheduler) -> EventLog:
    return s.extensions["event_log"].log


request("log-event")(lambda s, msg, peer: s.log_event(msg["topic"], msg["msg"]))


request("get-events")(lambda s, msg, peer: _events(s).get(msg.get("topic")))
request("subscribe-topic")(lambda s, msg, peer: _events(s).subscribe(msg["topic"], peer))
request("unsubscribe-topic")(lambda s, msg, peer: _events(s).unsubscribe(msg["topic"], peer))
request("event-subscribers")(lambda s, msg, peer: list(_events(s).subscribers.get(msg["topic"], ())))
