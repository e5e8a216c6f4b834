"""Variables: one value by name, shared across the cluster (Dask's ``Variable``).

``set`` replaces the value (a future set stays alive until replaced or deleted: its key is
held, ``KeyRefs``); ``get`` answers at once when there is a value, else waits for the next
``set`` (or its timeout); ``delete`` forgets the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.scheduler.extensions.base import Item, KeyRefs, NamedWaiters, WaitingExtension, name_of, timeout_of
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


class VariableState(NamedWaiters):
    """Every variable's value and the gets waiting for one; pure."""

    def __init__(self) -> None:
        super().__init__()
        #: variable name -> its value
        self.values: dict[str, Item] = {}

    def set(self, name: str, item: Item) -> tuple[Item | None, list[int]]:
        """Set ``name``: (the value it replaces, the waiters to answer with the new one)."""
        old = self.values.get(name)
        self.values[name] = item
        return old, self.take(name)

    def delete(self, name: str) -> Item | None:
        return self.values.pop(name, None)


class Variables(WaitingExtension):
    """The variable extension: requests ``variable-set``, ``-get``, ``-delete``."""

    def __init__(self, refs: KeyRefs):
        super().__init__()
        self.state = VariableState()
        self.refs = refs

    def _timed_out(self, wid: int) -> dict:
        name = self.state.waiting_on.get(wid, "?")
        self.state.drop_waiter(wid)
        return {"timeout": f"variable {name!r} was not set in time"}

    def set(self, msg: dict) -> None:
        item = self.refs.check(msg["item"])
        self.refs.hold(item)
        old, woken = self.state.set(name_of(msg), item)
        for wid in woken:
            client = self.waits.clients.get(wid)
            if client is not None:
                self.refs.give(item, client)
            self.waits.wake(wid, item)
        if old is not None:
            self.refs.release(old)

    def get(self, msg: dict, client: str) -> Any:
        name, timeout = name_of(msg), timeout_of(msg)
        item = self.state.values.get(name)
        if item is not None:
            self.refs.give(item, client)
            return item
        if timeout == 0:
            return {"timeout": f"variable {name!r} is not set"}
        wid, fut = self.waits.new(client, timeout)
        self.state.wait(name, wid)
        return fut

    def delete(self, msg: dict) -> None:
        old = self.state.delete(name_of(msg))
        if old is not None:
            self.refs.release(old)


def _ext(s: Scheduler) -> Variables:
    return s.extensions["variables"]


request("variable-set")(lambda s, msg, peer: _ext(s).set(msg))
request("variable-get")(lambda s, msg, peer: _ext(s).get(msg, peer))
request("variable-delete")(lambda s, msg, peer: _ext(s).delete(msg))
