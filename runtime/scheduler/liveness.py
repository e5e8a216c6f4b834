"""Which node agents have gone silent: heartbeats in, nodes to remove out.

Each node agent sends ``heartbeat`` every ``interval`` seconds (any message counts as a
sign of life).  The scheduler's shell calls ``seen(node, now)`` for each and, every
``interval``, ``silent(now)``, which names the nodes heard from longer than ``timeout``
ago; the shell turns each into a ``RemoveNode`` stimulus and closes that agent's
connections.  A frozen (SIGSTOP), wedged or cut-off agent thus leaves the cluster within
``timeout`` + ``interval`` seconds, and its work is rescheduled.  Like the state machine,
this class holds no clock: the shell passes the time in.
"""

from __future__ import annotations

from runtime import config


def heartbeat_settings() -> tuple[float, float]:
    """(interval, timeout) from the ``heartbeat.*`` settings; at least four heartbeats fit in
    the timeout, so a late one or two never remove a node."""
    timeout = config.get("heartbeat.timeout")
    return min(config.get("heartbeat.interval"), timeout / 4), timeout


class Liveness:
    """When each node was last heard from.

    The scheduler's own stalls are not held against the nodes: if ``silent`` is called
    later than ``interval`` after the previous call (the event loop was busy, say with a
    huge graph), the heartbeats waiting unread in the sockets could not be counted, so every
    node is credited with the excess.
    """

    def __init__(self, timeout: float, interval: float):
        #: seconds of silence after which a node counts as gone
        self.timeout = timeout
        #: how often ``silent`` is meant to be called
        self.interval = interval
        #: node id -> the time it was last heard from
        self.last_seen: dict[str, float] = {}
        #: when ``silent`` last ran
        self._last_check: float | None = None

    def seen(self, node: str, now: float) -> None:
        self.last_seen[node] = now

    def forget(self, node: str) -> None:
        self.last_seen.pop(node, None)

    def silent(self, now: float) -> list[tuple[str, float]]:
        """The nodes silent for longer than ``timeout``, with how long; they are forgotten."""
        if self._last_check is not None and now - self._last_check > 2 * self.interval:
            stall = now - self._last_check - self.interval
            for node in self.last_seen:
                self.last_seen[node] += stall
        self._last_check = now
        gone = [(node, now - t) for node, t in self.last_seen.items() if now - t > self.timeout]
        for node, _ in gone:
            del self.last_seen[node]
        return gone
