"""Queues: first in, first out, by name, across the cluster (Dask's ``Queue``).

::

    put ──► a getter waits? ──yes──► handed to the first getter
                  │no
                  └──► room? ──yes──► items ──► get
                           │no
                           └──► putters wait (FIFO) until a get makes room

A ``get`` of ``batch=n`` waits for ``n`` items and takes them at once; ``batch=True``
takes whatever is there without waiting.  An item is a pickled value or a future's key; the
scheduler keeps a future's key alive while the item is in the queue (``KeyRefs``), and hands
that reference to the client that gets it.  A getter whose client left is dropped before
anything is handed to it, so a reader that dies loses no item.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.scheduler.extensions.base import Item, KeyRefs, WaitingExtension, name_of, timeout_of
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


@dataclass(slots=True)
class Q:
    #: most items it holds (0: no limit)
    maxsize: int = 0
    items: deque[Item] = field(default_factory=deque)
    #: waiting gets in order: waiter id -> how many items it takes (0: one, not in a list)
    getters: dict[int, int] = field(default_factory=dict)
    #: waiting puts in order: waiter id -> its item
    putters: dict[int, Item] = field(default_factory=dict)


class QueueState:
    """Every queue's items and waiters; pure.  Methods return what they hand out as
    ``(waiter id, reply)`` pairs; a reply holding items is ``[item, ...]`` or one item."""

    def __init__(self) -> None:
        self.queues: dict[str, Q] = {}
        #: waiter id -> the queue it waits on
        self.waiting_on: dict[int, str] = {}

    def create(self, name: str, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise TypeError(f"maxsize must be a whole number >= 0, not {maxsize!r}")
        q = self.queues.get(name)
        if q is None:
            self.queues[name] = Q(maxsize)
        elif q.maxsize != maxsize:
            raise ValueError(f"queue {name!r} has maxsize={q.maxsize}, not {maxsize}")

    def _get_q(self, name: str) -> Q:
        q = self.queues.get(name)
        if q is None:
            raise KeyError(f"no queue named {name!r}")
        return q

    def put(self, name: str, item: Item) -> tuple[bool, list[tuple[int, Any]]]:
        """Put ``item`` if there is room: (whether it went in, the getters it served)."""
        q = self._get_q(name)
        if q.maxsize and len(q.items) >= q.maxsize and not q.getters:
            return False, []
        q.items.append(item)
        return True, self._serve(q)

    def wait_put(self, name: str, wid: int, item: Item) -> None:
        self._get_q(name).putters[wid] = item
        self.waiting_on[wid] = name

    def get(self, name: str, batch: bool | int) -> list[Item] | Item | None:
        """Items now, or None if the get has to wait: one item, ``batch`` items, or all (True)."""
        q = self._get_q(name)
        if batch is True:
            out = list(q.items)
            q.items.clear()
        else:
            n = batch or 1
            if q.getters or len(q.items) < n:  # those waiting before it come first
                return None
            out = [q.items.popleft() for _ in range(n)]
        self._admit_putters(q)
        return out if batch else out[0]

    def wait_get(self, name: str, wid: int, batch: int) -> None:
        self._get_q(name).getters[wid] = batch
        self.waiting_on[wid] = name

    def drop_waiter(self, wid: int) -> list[tuple[int, Any]]:
        """Take a waiter out (timed out, or its client left); returns the getters served after
        it (a getter of a batch leaving can unblock those behind it)."""
        name = self.waiting_on.pop(wid, None)
        q = self.queues.get(name) if name is not None else None
        if q is None:
            return []
        q.putters.pop(wid, None)
        if q.getters.pop(wid, None) is not None:
            return self._serve(q)
        return []

    def qsize(self, name: str) -> int:
        q = self.queues.get(name)
        return len(q.items) if q is not None else 0

    def _serve(self, q: Q) -> list[tuple[int, Any]]:
        """Hand items to the waiting getters in order, and let waiting putters in as room frees."""
        served = []
        while q.getters:
            wid, n = next(iter(q.getters.items()))
            if len(q.items) < max(n, 1):
                break
            del q.getters[wid]
            self.waiting_on.pop(wid, None)
            out = [q.items.popleft() for _ in range(max(n, 1))]
            served.append((wid, out if n else out[0]))
            served += self._admit_putters(q)
        return served

    def _admit_putters(self, q: Q) -> list[tuple[int, Any]]:
        """Putters whose items now fit: each is answered True."""
        admitted = []
        while q.putters and (not q.maxsize or len(q.items) < q.maxsize):
            wid = next(iter(q.putters))
            q.items.append(q.putters.pop(wid))
            self.waiting_on.pop(wid, None)
            admitted.append((wid, True))
        return admitted


class Queues(WaitingExtension):
    """The queue extension: requests ``queue-create``, ``-put``, ``-get``, ``-qsize``."""

    def __init__(self, refs: KeyRefs):
        super().__init__()
        self.state = QueueState()
        self.refs = refs

    def drop_waiter(self, wid: int) -> bool:
        """Take a waiter out, with the reference of a put's item; whether it was a put."""
        q = self.state.queues.get(self.state.waiting_on.get(wid, ""))
        item = q.putters.get(wid) if q is not None else None
        if item is not None:
            self.refs.release(item)
        self._answer(self.state.drop_waiter(wid))
        return item is not None

    def _timed_out(self, wid: int) -> dict:
        name = self.state.waiting_on.get(wid, "?")
        what = "put into" if self.drop_waiter(wid) else "get from"
        return {"timeout": f"{what} queue {name!r} timed out"}

    def _answer(self, replies: list[tuple[int, Any]]) -> None:
        for wid, reply in replies:
            client = self.waits.clients.get(wid)
            if reply is not True:  # items: their references go to the getter
                for item in reply if isinstance(reply, list) else [reply]:
                    if client is not None:
                        self.refs.give(item, client)
                    self.refs.release(item)
            self.waits.wake(wid, reply)

    def put(self, msg: dict, client: str) -> Any:
        name, timeout = name_of(msg), timeout_of(msg)
        item = self.refs.check(msg["item"])
        self.refs.hold(item)
        done, served = self.state.put(name, item)
        self._answer(served)
        if done:
            return True
        if timeout == 0:
            self.refs.release(item)
            return {"timeout": f"queue {name!r} is full"}
        wid, fut = self.waits.new(client, timeout)
        self.state.wait_put(name, wid, item)
        return fut

    def get(self, msg: dict, client: str) -> Any:
        name, timeout, batch = name_of(msg), timeout_of(msg), msg.get("batch", False)
        if not isinstance(batch, bool) and (not isinstance(batch, int) or batch < 1):
            raise TypeError(f"batch must be True, False or a whole number >= 1, not {batch!r}")
        got = self.state.get(name, batch)
        if got is not None:
            for item in got if isinstance(got, list) else [got]:
                self.refs.give(item, client)
                self.refs.release(item)
            return got
        if timeout == 0:
            return {"timeout": f"queue {name!r} is empty"}
        wid, fut = self.waits.new(client, timeout)
        self.state.wait_get(name, wid, int(batch))
        return fut


def _ext(s: Scheduler) -> Queues:
    return s.extensions["queues"]


request("queue-create")(lambda s, msg, peer: _ext(s).state.create(name_of(msg), msg.get("maxsize", 0)))
request("queue-put")(lambda s, msg, peer: _ext(s).put(msg, peer))
request("queue-get")(lambda s, msg, peer: _ext(s).get(msg, peer))
request("queue-qsize")(lambda s, msg, peer: _ext(s).state.qsize(name_of(msg)))
