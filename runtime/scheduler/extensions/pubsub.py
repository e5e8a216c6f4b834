"""Publish/subscribe by topic (``runtime.Pub``/``runtime.Sub``): the scheduler relays.

::

    Pub.put(msg) ──pubsub-msg (topic, pickled msg)──► scheduler ──pubsub-msg──► every client
                                                                 subscribed to the topic
    Sub(topic)   ──pubsub-subscribe (request)──────► PubSub.subscribers[topic][client]

Every publisher and subscriber is a client connection: the driver's, or, inside a task or
an actor, the one its worker process opens for tasks that use the API.  Messages go
through the scheduler, one hop more than Dask's worker-to-worker path: workers here have
no channel between them for small messages (the actor call server speaks only actor
calls).  Messages are pickled by the publisher and unpickled by the subscriber; the
scheduler only copies bytes.  A client's subscriptions end with its connection, and
nothing is kept for a topic nobody subscribes to: a message put then is dropped, as in Dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.comm import messages as m
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import MESSAGES, request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a pub/sub topic is a non-empty string, not {topic!r:.80}")
    return topic


class PubSub:
    """Which clients subscribe to each topic (pure)."""

    def __init__(self) -> None:
        #: clients subscribed to each topic, with how many Sub objects each holds
        self.subscribers: dict[str, dict[str, int]] = {}

    def subscribe(self, topic: str, client: str) -> None:
        clients = self.subscribers.setdefault(check_topic(topic), {})
        clients[client] = clients.get(client, 0) + 1

    def unsubscribe(self, topic: str, client: str) -> None:
        clients = self.subscribers.get(check_topic(topic), {})
        if clients.get(client, 0) > 1:
            clients[client] -= 1
        else:
            clients.pop(client, None)
        if not clients:
            self.subscribers.pop(topic, None)

    def client_gone(self, client: str) -> None:
        for topic in [t for t, clients in self.subscribers.items() if client in clients]:
            del self.subscribers[topic][client]
            if not self.subscribers[topic]:
                del self.subscribers[topic]

    def route(self, msg: m.PubsubMsg) -> dict[str, list[m.Message]]:
        """The messages that deliver ``msg`` (as it came from its publisher) to every subscriber of its topic."""
        return {client: [msg] for client in self.subscribers.get(msg.topic, ())}


class PubSubExtension(SchedulerPlugin):
    """The scheduler's pub/sub relay; a client that leaves loses its subscriptions."""

    def __init__(self) -> None:
        self.pubsub = PubSub()

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        self.pubsub.client_gone(client)


def _pubsub(s: Scheduler) -> PubSub:
    return s.extensions["pubsub"].pubsub


MESSAGES[m.PubsubMsg] = lambda s, msg, peer: s._send(_pubsub(s).route(msg))
request("pubsub-subscribe")(lambda s, msg, peer: _pubsub(s).subscribe(msg["topic"], peer))
request("pubsub-unsubscribe")(lambda s, msg, peer: _pubsub(s).unsubscribe(msg["topic"], peer))
request("pubsub-subscribers")(lambda s, msg, peer: dict(_pubsub(s).subscribers.get(check_topic(msg["topic"]), {})))
