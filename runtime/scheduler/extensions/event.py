"""Events: a flag by name that tasks and clients wait on (Dask's ``Event``).

``set`` wakes every waiter; ``clear`` lowers the flag; ``wait`` answers True at once when
the flag is up, else when it is next set, or False at its timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.scheduler.extensions.base import NamedWaiters, WaitingExtension, name_of, timeout_of
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


class EventState(NamedWaiters):
    """Which events are set, and who waits on the others; pure."""

    def __init__(self) -> None:
        super().__init__()
        #: names of the events that are set
        self.set_events: set[str] = set()

    def set(self, name: str) -> list[int]:
        """Set ``name``; returns the waiters to wake."""
        self.set_events.add(name)
        return self.take(name)

    def clear(self, name: str) -> None:
        self.set_events.discard(name)

    def is_set(self, name: str) -> bool:
        return name in self.set_events


class Events(WaitingExtension):
    """The event extension: requests ``event-set``, ``-clear``, ``-is-set``, ``-wait``."""

    def __init__(self) -> None:
        super().__init__()
        self.state = EventState()

    def _timed_out(self, wid: int) -> bool:
        self.state.drop_waiter(wid)
        return False

    def set(self, msg: dict) -> None:
        for wid in self.state.set(name_of(msg)):
            self.waits.wake(wid, True)

    def wait(self, msg: dict, client: str) -> Any:
        name, timeout = name_of(msg), timeout_of(msg)
        if self.state.is_set(name):
            return True
        if timeout == 0:
            return False
        wid, fut = self.waits.new(client, timeout)
        self.state.wait(name, wid)
        return fut


def _ext(s: Scheduler) -> Events:
    return s.extensions["event"]


request("event-set")(lambda s, msg, peer: _ext(s).set(msg))
request("event-clear")(lambda s, msg, peer: _ext(s).state.clear(name_of(msg)))
request("event-is-set")(lambda s, msg, peer: _ext(s).state.is_set(name_of(msg)))
request("event-wait")(lambda s, msg, peer: _ext(s).wait(msg, peer))
