"""Publish/subscribe by topic (``runtime.Pub``/``runtime.Sub``): direct between workers, else
relayed by the scheduler.

::

    Sub(topic)  ──pubsub-subscribe(topic, address)──► PubSub.subscribers[topic][client]
                  (address: its worker process's actor server; "" for a driver)
    Pub(topic) in a worker ──pubsub-publish──► PubSub.publishers[topic][client]
                  ◄── its targets now, and pubsub-targets(addresses, relay) whenever they change

    Pub.put in a worker ──pubsub-msg──► each subscriber's worker process, directly
                        └─ and, if ``relay`` ─► scheduler ──► the subscribers without an address
    Pub.put in a driver ──pubsub-msg──► scheduler ──► every subscriber of the topic

As Dask's pub/sub: when both ends are on the cluster (tasks, actors), messages go worker to
worker and the scheduler only keeps publishers told where the subscribers are; a subscriber
in a driver, or a publisher in one, has its messages relayed by the scheduler.  Every
publisher and subscriber is a client connection: the driver's, or, inside a task or an
actor, the one its worker process opens for tasks that use the API.  Messages are pickled by
the publisher and unpickled by the subscriber; the scheduler only copies bytes.  A client's
subscriptions and publications end with its connection (the publishers are told), and
nothing is kept for a topic nobody subscribes to: a message put then is dropped, as in Dask.
Between a subscriber joining and its publishers hearing of it, their messages may miss it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.comm import messages as m
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import MESSAGES, request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: client id -> the messages to send it
Msgs = dict[str, list[m.Message]]


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a pub/sub topic is a non-empty string, not {topic!r:.80}")
    return topic


def _count(counts: dict[str, int], client: str, by: int) -> None:
    counts[client] = counts.get(client, 0) + by
    if counts[client] <= 0:
        del counts[client]


class PubSub:
    """Subscribers and direct publishers of each topic (pure)."""

    def __init__(self) -> None:
        #: clients subscribed to each topic, with how many Sub objects each holds
        self.subscribers: dict[str, dict[str, int]] = {}
        #: clients in worker processes publishing to each topic directly, with how many Pub objects
        self.publishers: dict[str, dict[str, int]] = {}
        #: where each subscribed client in a worker process takes messages directly
        self.addresses: dict[str, str] = {}
        #: messages the scheduler relayed, per topic
        self.relayed: dict[str, int] = {}
        #: bumped on every change of a topic's targets, so publishers keep the newest
        self.version = 0

    def subscribe(self, topic: str, client: str, address: str = "") -> Msgs:
        if not isinstance(address, str):
            raise TypeError(f"a subscriber's address is a string, not {address!r:.80}")
        if address:
            self.addresses[client] = address
        _count(self.subscribers.setdefault(check_topic(topic), {}), client, 1)
        return self._tell_publishers(topic)

    def unsubscribe(self, topic: str, client: str) -> Msgs:
        clients = self.subscribers.get(check_topic(topic), {})
        if client not in clients:
            return {}
        _count(clients, client, -1)
        if not clients:
            del self.subscribers[topic]
        return self._tell_publishers(topic)

    def publish(self, topic: str, client: str) -> dict[str, Any]:
        """``client`` (in a worker process) publishes ``topic`` directly: its targets now."""
        _count(self.publishers.setdefault(check_topic(topic), {}), client, 1)
        return self._targets(topic)

    def unpublish(self, topic: str, client: str) -> None:
        clients = self.publishers.get(check_topic(topic), {})
        if client in clients:
            _count(clients, client, -1)
            if not clients:
                del self.publishers[topic]

    def client_gone(self, client: str) -> Msgs:
        out: Msgs = {}
        for topic in [t for t, clients in self.publishers.items() if client in clients]:
            self.publishers[topic].pop(client)
            if not self.publishers[topic]:
                del self.publishers[topic]
        for topic in [t for t, clients in self.subscribers.items() if client in clients]:
            del self.subscribers[topic][client]
            if not self.subscribers[topic]:
                del self.subscribers[topic]
            for to, msgs in self._tell_publishers(topic).items():
                out.setdefault(to, []).extend(msgs)
        self.addresses.pop(client, None)
        return out

    def route(self, msg: m.PubsubMsg, publisher: str) -> Msgs:
        """The messages that deliver ``msg`` from ``publisher`` to the subscribers it did not
        reach directly: all, for a driver's; those without an address, for a direct publisher's."""
        direct = publisher in self.publishers.get(msg.topic, ())
        out = {c: [msg] for c in self.subscribers.get(msg.topic, ()) if not (direct and c in self.addresses)}
        if out:
            self.relayed[msg.topic] = self.relayed.get(msg.topic, 0) + len(out)
        return out

    def state(self, topic: str) -> dict[str, Any]:
        """What the scheduler knows of ``topic`` (for tests and diagnostics)."""
        check_topic(topic)
        return {
            "subscribers": dict(self.subscribers.get(topic, {})),
            "publishers": dict(self.publishers.get(topic, {})),
            "addresses": {c: self.addresses[c] for c in self.subscribers.get(topic, ()) if c in self.addresses},
            "relayed": self.relayed.get(topic, 0),
        }

    def _targets(self, topic: str) -> dict[str, Any]:
        subscribers = self.subscribers.get(topic, {})
        addresses = sorted({self.addresses[c] for c in subscribers if c in self.addresses})
        relay = any(c not in self.addresses for c in subscribers)
        return {"addresses": addresses, "relay": relay, "version": self.version}

    def _tell_publishers(self, topic: str) -> Msgs:
        """A topic's subscribers changed: its direct publishers' new targets."""
        publishers = self.publishers.get(topic)
        if not publishers:
            return {}
        self.version += 1
        t = self._targets(topic)
        update = m.PubsubTargets(topic, tuple(t["addresses"]), t["relay"], t["version"])
        return {client: [update] for client in publishers}


class PubSubExtension(SchedulerPlugin):
    """The scheduler's pub/sub; a client that leaves loses its subscriptions and publications."""

    def __init__(self) -> None:
        self.pubsub = PubSub()

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        scheduler._send(self.pubsub.client_gone(client))


def _pubsub(s: Scheduler) -> PubSub:
    return s.extensions["pubsub"].pubsub


MESSAGES[m.PubsubMsg] = lambda s, msg, peer: s._send(_pubsub(s).route(msg, peer))
request("pubsub-subscribe")(
    lambda s, msg, peer: s._send(_pubsub(s).subscribe(msg["topic"], peer, msg.get("address", "")))
)
request("pubsub-unsubscribe")(lambda s, msg, peer: s._send(_pubsub(s).unsubscribe(msg["topic"], peer)))
request("pubsub-publish")(lambda s, msg, peer: _pubsub(s).publish(msg["topic"], peer))
request("pubsub-unpublish")(lambda s, msg, peer: _pubsub(s).unpublish(msg["topic"], peer))
request("pubsub-subscribers")(lambda s, msg, peer: dict(_pubsub(s).subscribers.get(check_topic(msg["topic"]), {})))
request("pubsub-state")(lambda s, msg, peer: _pubsub(s).state(msg["topic"]))
